//! The operations dashboard: the page built from `queries/web/` (`npm run build` there writes
//! `dist/`, committed), embedded in the binary and served at `/`. The page itself is public (it
//! holds no data); everything it shows comes from the API with the caller's token.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, ApiState};

/// Every file of `web/dist/`, by the path it is served under.
pub const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/dist/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/dist/assets/app.js"),
    ),
    (
        "/assets/index.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/dist/assets/index.css"),
    ),
];

fn serve(path: &str) -> Response {
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                // Names carry no content hash: revalidate, so a new binary's page is seen.
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            *bytes,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no dashboard file {path}"),
        )
        .into_response(),
    }
}

/// `/` and `/assets/{file}`.
pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { serve("/") }))
        .route(
            "/assets/{file}",
            get(|Path(file): Path<String>| async move { serve(&format!("/assets/{file}")) }),
        )
}

/// The Content-Security-Policy of every response: the page loads only its own script, styles
/// and API (no inline script, no other origin), images only from itself or inline data (the
/// map's icons), and cannot be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Adds the usual security headers to every response (the API's too: a JSON answer opened in a
/// browser gets the same protection).
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("permissions-policy"),
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}
