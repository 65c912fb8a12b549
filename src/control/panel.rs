//! The live front-panel page: one HTML page, a style sheet and a script, embedded in the binary
//! (no build step, no CDN). It is a client of the control API like any other: it polls
//! `/healthz`, `/api/v1/cards` and `/api/v1/readers`, and binds readers with
//! `PUT`/`DELETE /api/v1/readers/{i}`. The files hold no data, so they are served without the
//! bearer token; the page asks for the token (kept in the browser's localStorage) and sends it.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("panel/index.html");
const CSS: &str = include_str!("panel/panel.css");
const JS: &str = include_str!("panel/panel.js");
const ICON: &str = include_str!("panel/icon.svg");

/// Only the page's own files and API calls to this origin; no inline code, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files: always revalidate, so an upgraded daemon serves its own page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/panel.css",
            get(|| async { file("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/ui/panel.js",
            get(|| async { file("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/ui/icon.svg",
            get(|| async { file("image/svg+xml", ICON) }),
        )
}
