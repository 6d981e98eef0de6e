//! Entry points for the cargo-fuzz targets (`fuzz/`), behind the `fuzzing`
//! feature. Each takes arbitrary bytes and must return without panicking,
//! hanging or allocating without bound; properties that must hold are
//! asserted here, so a violation is a crash the fuzzer keeps.

use crate::client::{self, Accepted};
use crate::frame::{
    data_row_values, encode_data_row_refs, split_message, Reader, MAX_BACKEND_MESSAGE,
    MAX_FRONTEND_MESSAGE,
};
use crate::relay::{bind_result_formats, parse_row_description, row_description_oids};
use crate::{CancelRegistry, Shared};
use bytes::BytesMut;
use sluice_core::Session;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Client → gateway messages after startup: framing, then each message body
/// read the way the relay's request half reads it (the same `Reader` calls
/// in the same order).
pub fn frontend(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = split_message(&mut buf, MAX_FRONTEND_MESSAGE) {
        assert_eq!(msg.bytes.len(), 5 + msg.body().len());
        let mut r = Reader::new(msg.body());
        let _ = match msg.tag {
            b'Q' => r.cstr().map(drop),
            b'P' => r.cstr().and_then(|_| r.cstr()).map(drop),
            b'B' => r
                .cstr()
                .and_then(|_| r.cstr())
                .and_then(|_| bind_result_formats(&mut r))
                .map(drop),
            b'D' | b'C' => r.bytes(1).and_then(|_| r.cstr()).map(drop),
            b'E' => r.cstr().map(drop),
            b'F' => r.i32().map(drop),
            _ => None,
        };
    }
}

/// Upstream → gateway messages: framing, RowDescription, DataRow (decoded
/// and re-encoded byte for byte, as masking rewrites rows) and the fields of
/// ErrorResponse/NoticeResponse.
pub fn backend(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = split_message(&mut buf, MAX_BACKEND_MESSAGE) {
        match msg.tag {
            b'T' => {
                let _ = parse_row_description(msg.body(), &HashMap::new());
                let _ = row_description_oids(msg.body());
            }
            b'D' => {
                if let Some(values) = data_row_values(msg.body()) {
                    let mut out = BytesMut::new();
                    encode_data_row_refs(&values, &mut out);
                    // A row the masker leaves alone must leave as it came.
                    assert_eq!(&out[5..], msg.body(), "DataRow re-encoding changed the row");
                }
            }
            b'E' | b'N' => {
                let mut r = Reader::new(msg.body());
                while let Some(kind) = r.bytes(1) {
                    if kind[0] == 0 || r.cstr().is_none() {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("fuzz runtime: {e}"))
    })
}

/// The startup phase as a client on loopback drives it: the real `accept`
/// (SSLRequest/GSSENCRequest/CancelRequest/StartupMessage, protocol version
/// negotiation, startup parameters) and then the password message, fed from
/// memory. The listener has no TLS here, so TLS requests are answered `N`.
pub fn startup(data: &[u8]) {
    let shared = Arc::new(Shared {
        tls: None,
        allow_plaintext: false,
        cancels: CancelRegistry::default(),
        catalogs: Mutex::new(HashMap::new()),
    });
    let data = data.to_vec();
    runtime().block_on(async move {
        // Room for everything the client sends and everything the gateway answers.
        let (mut client, server) = tokio::io::duplex(data.len() + (1 << 16));
        let _ = client.write_all(&data).await;
        drop(client);
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
        let run = async {
            if let Ok(Accepted::Session(mut s)) =
                client::accept_stream(Box::new(server), peer, shared).await
            {
                let _ = s.credentials().await;
            }
        };
        // Input is finite and the peer closed: anything slower is a hang.
        if tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .is_err()
        {
            panic!("the startup phase did not finish on a closed, finite input");
        }
    });
}
