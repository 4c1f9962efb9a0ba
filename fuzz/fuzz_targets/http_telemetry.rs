//! `POST /api/telemetry`, the whole handler through its router: headers and body as a machine
//! (or anyone) sends them, with and without credentials. Never a panic, never a 5xx other than
//! the sink's 503; every refusal is an answer.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use vendflow_ingest::auth::{Credentials, Verifier};
use vendflow_ingest::http::{MachineRate, Sink, Telemetry, telemetry_router};
use vendflow_protocol::auth::{MachineKey, StoredKey};

struct Harness {
    runtime: tokio::runtime::Runtime,
    open: axum::Router,
    signed: axum::Router,
}

fn router(credentials: Option<Credentials>) -> axum::Router {
    let state = Telemetry {
        verifier: Arc::new(Mutex::new(Verifier::new(credentials, 300_000))),
        sink: Sink::Discard,
        requests: Default::default(),
        pending_commands: Default::default(),
        stats: Default::default(),
        // No rate limit: every input reaches the decoder.
        rate: MachineRate::new(u32::MAX, u32::MAX),
    };
    telemetry_router(Arc::new(state), 64 << 10)
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let mut credentials = Credentials::default();
        let key = MachineKey::from_secret("fuzz-secret");
        credentials.insert("m1", StoredKey::PublicKey(key.public()));
        credentials.insert("m2", StoredKey::Legacy(key.legacy()));
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            open: router(None),
            signed: router(Some(credentials)),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte: which router and which headers; the rest is the body.
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let h = harness();
    let app = if mode & 1 == 0 { &h.open } else { &h.signed };
    let mut request = Request::post("/api/telemetry").header("content-type", "application/json");
    if mode & 2 == 0 {
        request = request.header("x-machine-id", if mode & 4 == 0 { "m1" } else { "m2" });
    }
    if mode & 8 == 0 {
        request = request.header("x-machine-token", "fuzz-secret");
    }
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let response = h
        .runtime
        .block_on(app.clone().oneshot(request))
        .expect("the router answers");
    let status = response.status();
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{status} for {body:?}"
    );
});
