//! Logging to stderr and, when `[telemetry] otlp_endpoint` is set, OTLP
//! export (http/protobuf or grpc) of the three signals core produces: the
//! session → command → policy / approval wait / upstream / masking spans, the
//! `sluice.*` metrics (`sluice_core::metrics`), and every audit event as one
//! log record (the `sluice::audit` tracing events).

use anyhow::Result;
use sluice_core::config::TelemetryConfig;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Flushes and stops the exporters when dropped.
pub struct TelemetryGuard {
    #[cfg(feature = "otlp")]
    providers: Option<otlp::Providers>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.providers.take() {
            p.shutdown();
        }
    }
}

/// Stderr verbosity from `SLUICE_LOG`. By default audit events stay off
/// stderr (they are in the store, and exported as logs when OTLP is on);
/// `SLUICE_LOG=info,sluice::audit=info` prints them too.
///
/// By default stderr also leaves out the spans core opens for every command
/// (`command`, `policy`, `upstream`, `masking`): a log line keeps its
/// `session{…}` context, and the spans still go to OTLP when it is on. The
/// log layer formats a span's fields when it opens, seen or not: about 3 % of
/// the gateway's CPU per statement. With `SLUICE_LOG` set, they are kept.
fn filter<S>() -> impl tracing_subscriber::layer::Filter<S> {
    use tracing_subscriber::filter::FilterExt;
    const PER_COMMAND_SPANS: [&str; 4] = ["command", "policy", "upstream", "masking"];
    let (env, keep_command_spans) = match tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
    {
        Ok(env) => (env, true),
        Err(_) => (
            tracing_subscriber::EnvFilter::new(format!(
                "info,{}=off",
                sluice_core::metrics::AUDIT_LOG_TARGET
            )),
            false,
        ),
    };
    // The combined filter has a level hint only if both parts do. Without
    // one, every disabled `log` record of a dependency (russh logs each
    // packet at debug) was dispatched and filtered: about 3 % of the
    // gateway's CPU in an scp. With it, the `log` crate's max level is set
    // and those records cost one comparison.
    let hint = env.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let spans = tracing_subscriber::filter::filter_fn(move |m| {
        keep_command_spans || !(m.is_span() && PER_COMMAND_SPANS.contains(&m.name()))
    })
    .with_max_level_hint(hint);
    env.and(spans)
}

/// Logs only (CLI commands).
pub fn init_logs() {
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter()),
        )
        .try_init();
}

/// Logs and, if configured, OTLP export (the gateway). Call inside the
/// runtime: the gRPC exporter needs its context.
/// `node` is this gateway node's id (`service.instance.id` on every span,
/// metric and log exported).
pub fn init(config: &TelemetryConfig, node: &str) -> Result<TelemetryGuard> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let Some(endpoint) = &config.otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(TelemetryGuard {
            #[cfg(feature = "otlp")]
            providers: None,
        });
    };
    #[cfg(feature = "otlp")]
    {
        let providers = otlp::init(config, endpoint, node, fmt)?;
        Ok(TelemetryGuard {
            providers: Some(providers),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (endpoint, fmt);
        anyhow::bail!(
            "telemetry.otlp_endpoint is set but this build has no OTLP exporter (feature `otlp`)"
        )
    }
}

#[cfg(feature = "otlp")]
mod otlp {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::logs::SdkLoggerProvider;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use sluice_core::metrics::AUDIT_LOG_TARGET;
    use std::time::Duration;

    /// Default metric export interval (the OTel SDK's own default).
    const EXPORT_INTERVAL: Duration = Duration::from_secs(60);

    pub(super) struct Providers {
        tracer: SdkTracerProvider,
        meter: SdkMeterProvider,
        logger: SdkLoggerProvider,
    }

    impl Providers {
        /// Final export of what is buffered (the last metric collection included).
        pub(super) fn shutdown(self) {
            let _ = self.tracer.shutdown();
            let _ = self.meter.shutdown();
            let _ = self.logger.shutdown();
        }
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Transport {
        HttpProtobuf,
        Grpc,
    }

    fn transport(config: &TelemetryConfig, endpoint: &str) -> Result<Transport> {
        let t = match config.otlp_protocol.as_deref() {
            None | Some("http/protobuf") => Transport::HttpProtobuf,
            Some("grpc") => Transport::Grpc,
            Some(other) => anyhow::bail!(
                "telemetry.otlp_protocol: {other:?} is not supported; use \"http/protobuf\" or \"grpc\""
            ),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            anyhow::bail!(
                "telemetry.otlp_endpoint: {endpoint:?} must start with http:// or https://"
            );
        }
        if t == Transport::Grpc && endpoint.starts_with("https://") {
            // The tonic transport is built without TLS here: refuse rather
            // than send telemetry somewhere it cannot arrive.
            anyhow::bail!(
                "telemetry.otlp_endpoint: OTLP/gRPC over TLS is not available in this build; use an http:// endpoint (e.g. a local collector) or otlp_protocol = \"http/protobuf\""
            );
        }
        Ok(t)
    }

    /// The OTLP/HTTP URL of one signal (`traces`, `metrics`, `logs`): the
    /// endpoint is the collector's base URL (`http://collector:4318`); one
    /// already ending in a signal path is accepted for compatibility.
    pub(super) fn signal_url(endpoint: &str, signal: &str) -> String {
        let mut base = endpoint.trim_end_matches('/');
        for s in ["/v1/traces", "/v1/metrics", "/v1/logs"] {
            if let Some(b) = base.strip_suffix(s) {
                base = b;
            }
        }
        format!("{base}/v1/{signal}")
    }

    pub(super) fn init<L>(
        config: &TelemetryConfig,
        endpoint: &str,
        node: &str,
        fmt: L,
    ) -> Result<Providers>
    where
        L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        let transport = transport(config, endpoint)?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(
                config
                    .service_name
                    .clone()
                    .unwrap_or_else(|| "sluice".into()),
            )
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_attribute(opentelemetry::KeyValue::new(
                "service.instance.id",
                node.to_string(),
            ))
            .build();

        let spans = match transport {
            Transport::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(signal_url(endpoint, "traces"))
                .build()?,
            Transport::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?,
        };
        let metrics = match transport {
            Transport::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(signal_url(endpoint, "metrics"))
                .build()?,
            Transport::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?,
        };
        let logs = match transport {
            Transport::HttpProtobuf => opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_endpoint(signal_url(endpoint, "logs"))
                .build()?,
            Transport::Grpc => opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?,
        };

        let ratio = config.sampling_ratio.unwrap_or(1.0).clamp(0.0, 1.0);
        let tracer = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            // Sampling is decided per session (the root); commands follow it.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(resource.clone())
            .build();
        let interval = config
            .export_interval
            .map(|d| d.0)
            .unwrap_or(EXPORT_INTERVAL);
        let meter = SdkMeterProvider::builder()
            .with_reader(
                PeriodicReader::builder(metrics)
                    .with_interval(interval)
                    .build(),
            )
            .with_resource(resource.clone())
            .build();
        // Core creates its instruments on first use, after this.
        opentelemetry::global::set_meter_provider(meter.clone());
        let logger = SdkLoggerProvider::builder()
            .with_batch_exporter(logs)
            .with_resource(resource)
            .build();

        // Spans at info and above are exported; SLUICE_LOG only shapes stderr.
        // Audit events go to the log signal only.
        let otel_traces = tracing_opentelemetry::layer()
            .with_tracer(tracer.tracer("sluice"))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                *m.level() <= tracing::Level::INFO && m.target() != AUDIT_LOG_TARGET
            }));
        let otel_logs =
            opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&logger)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.target() == AUDIT_LOG_TARGET
                }));
        let _ = tracing_subscriber::registry()
            .with(fmt)
            .with(otel_traces)
            .with(otel_logs)
            .try_init();
        Ok(Providers {
            tracer,
            meter,
            logger,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn signal_urls() {
            assert_eq!(
                signal_url("http://c:4318", "metrics"),
                "http://c:4318/v1/metrics"
            );
            assert_eq!(
                signal_url("http://c:4318/v1/traces", "logs"),
                "http://c:4318/v1/logs"
            );
            assert_eq!(
                signal_url("http://c/otlp/", "traces"),
                "http://c/otlp/v1/traces"
            );
        }

        #[test]
        fn transports() {
            let mut c = TelemetryConfig::default();
            assert!(transport(&c, "http://c:4318").is_ok());
            c.otlp_protocol = Some("grpc".into());
            assert!(transport(&c, "http://c:4317").is_ok());
            assert!(transport(&c, "https://c:4317").is_err());
            assert!(transport(&c, "c:4317").is_err());
            c.otlp_protocol = Some("http/json".into());
            assert!(transport(&c, "http://c:4318").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn stderr_keeps_the_session_span_and_leaves_out_the_per_command_ones() {
        // This process's own environment (nextest runs each test alone).
        std::env::remove_var("SLUICE_LOG");
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .with_filter(filter()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let _session = tracing::info_span!("session", id = "s-1").entered();
            let _command = tracing::info_span!("command", command_id = 7).entered();
            tracing::warn!("inside a command");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("inside a command"), "{text}");
        assert!(text.contains("session{id=\"s-1\"}"), "{text}");
        assert!(!text.contains("command{"), "{text}");
    }
}
