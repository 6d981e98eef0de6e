//! Logging to stderr and, when `[telemetry] otlp_endpoint` is set, OTLP
//! export of the session and command spans core emits.

use anyhow::Result;
use sluice_core::config::TelemetryConfig;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Flushes exported spans when dropped.
pub struct TelemetryGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
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

/// Logs and, if configured, OTLP traces (the gateway).
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let Some(endpoint) = &config.otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(TelemetryGuard {
            #[cfg(feature = "otlp")]
            provider: None,
        });
    };
    otlp(config, endpoint, fmt)
}

#[cfg(feature = "otlp")]
fn otlp<L>(config: &TelemetryConfig, endpoint: &str, fmt: L) -> Result<TelemetryGuard>
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    match config.otlp_protocol.as_deref() {
        None | Some("http/protobuf") => {}
        Some(other) => anyhow::bail!(
            "telemetry.otlp_protocol: {other:?} is not available in this build; use \"http/protobuf\""
        ),
    }
    let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()?;
    let ratio = config.sampling_ratio.unwrap_or(1.0).clamp(0.0, 1.0);
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio),
        )))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(
                    config
                        .service_name
                        .clone()
                        .unwrap_or_else(|| "sluice".into()),
                )
                .build(),
        )
        .build();
    let tracer = provider.tracer("sluice");
    // Spans at info and above are exported; SLUICE_LOG only shapes stderr.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

#[cfg(not(feature = "otlp"))]
fn otlp<L>(_: &TelemetryConfig, _: &str, _: L) -> Result<TelemetryGuard> {
    anyhow::bail!(
        "telemetry.otlp_endpoint is set but this build has no OTLP exporter (feature `otlp`)"
    )
}
