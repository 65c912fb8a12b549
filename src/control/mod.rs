//! The control API: HTTP/1.1 + JSON, served by the daemon (default `127.0.0.1:6680`).
//!
//! axum on hyper: a well-kept server stack on the same tokio runtime as the rest, with routing
//! and JSON that would otherwise be hand-written, and hyper's connection handling (keep-alive,
//! pipelining, header-read timeout) which a hand-made HTTP parser would have to get right
//! against slow and hostile clients. The connection loop is ours so that a connection limit,
//! the header timeout and the bearer token apply before any handler runs.
//!
//! Loopback only, unless a token file is given: then every request needs
//! `Authorization: Bearer <token>`.

pub mod api;
pub mod client;
pub mod panel;
pub mod records;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::daemon::Daemon;

/// Connections served at once; more are closed at once (the API is for a handful of tools).
pub const MAX_CONNECTIONS: usize = 256;
/// A client must send a request's headers within this time.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bad control address {0:?}: want HOST:PORT or off")]
    BadAddress(String),
    #[error(
        "refusing to serve the control API on {0} (not loopback) without --control-token FILE"
    )]
    NeedsToken(SocketAddr),
    #[error("control token file {0}: {1}")]
    Token(String, String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// A bound control socket, ready to serve.
pub struct Listener {
    listener: TcpListener,
    token: Option<Arc<str>>,
}

/// Binds the control socket; refuses a non-loopback address without a token.
pub async fn bind(addr: &str, token_file: Option<&Path>) -> Result<Listener, ControlError> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|_| ControlError::BadAddress(addr.into()))?
        .collect();
    let first = *resolved
        .first()
        .ok_or_else(|| ControlError::BadAddress(addr.into()))?;
    let token = match token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .map_err(|e| ControlError::Token(p.display().to_string(), e.to_string()))?;
            let t = t.trim();
            if t.is_empty() {
                return Err(ControlError::Token(p.display().to_string(), "empty".into()));
            }
            Some(Arc::from(t))
        }
        None => None,
    };
    if token.is_none() {
        if let Some(open) = resolved.iter().find(|a| !a.ip().is_loopback()) {
            return Err(ControlError::NeedsToken(*open));
        }
    }
    let listener = TcpListener::bind(first)
        .await
        .map_err(|e| ControlError::Listen(addr.into(), e))?;
    Ok(Listener { listener, token })
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Serves until the task is aborted.
    pub async fn serve(self, daemon: Arc<Daemon>) {
        let router = api::router(daemon, self.token.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("control API: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                log::warn!("control API: {peer}: over {MAX_CONNECTIONS} connections, closed");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req| {
                    req.extensions_mut().insert(api::Peer(peer));
                    let r = router.clone();
                    async move { tower::ServiceExt::oneshot(r, req).await }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    log::debug!("control API: {peer}: {e}");
                }
                drop(permit);
            });
        }
    }
}
