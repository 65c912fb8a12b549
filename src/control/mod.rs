//! The control API: HTTP/1.1 + JSON, served by the daemon (default `127.0.0.1:6680`).
//!
//! axum on hyper: a well-kept server stack on the same tokio runtime as the rest, with routing
//! and JSON that would otherwise be hand-written, and hyper's connection handling (keep-alive,
//! pipelining, header-read timeout) which a hand-made HTTP parser would have to get right
//! against slow and hostile clients. The connection loop is ours so that a connection limit,
//! the header timeout and the bearer token apply before any handler runs.
//!
//! Loopback only, unless a token is given: then every request needs
//! `Authorization: Bearer <token>` (the single `--control-token`, or a named user's of
//! `--control-tokens`). Also on a Unix socket (`--control-socket`), where the kernel names
//! the caller ([`auth`]).

pub mod api;
pub mod auth;
pub mod client;
pub mod panel;
pub mod records;
mod reservations;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, UnixListener};

use auth::{Auth, Local};

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
    #[error(transparent)]
    Tokens(#[from] crate::users::TokensError),
    #[error("control socket {0}: {1}")]
    Socket(String, String),
}

/// A bound control socket, ready to serve.
pub struct Listener {
    listener: TcpListener,
    auth: Arc<Auth>,
}

/// Reads the single `--control-token` file.
pub fn read_token(p: &Path) -> Result<String, ControlError> {
    let t = std::fs::read_to_string(p)
        .map_err(|e| ControlError::Token(p.display().to_string(), e.to_string()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(ControlError::Token(p.display().to_string(), "empty".into()));
    }
    Ok(t.to_string())
}

/// Binds the control socket; refuses a non-loopback address without a token.
pub async fn bind(addr: &str, token_file: Option<&Path>) -> Result<Listener, ControlError> {
    let token = token_file.map(read_token).transpose()?;
    let auth = Auth::new(token.as_deref(), None, None)?;
    bind_with(addr, Arc::new(auth)).await
}

/// [`bind`] with the daemon's tokens and users.
pub async fn bind_with(addr: &str, auth: Arc<Auth>) -> Result<Listener, ControlError> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|_| ControlError::BadAddress(addr.into()))?
        .collect();
    let first = *resolved
        .first()
        .ok_or_else(|| ControlError::BadAddress(addr.into()))?;
    if !auth.needs_token() {
        if let Some(open) = resolved.iter().find(|a| !a.ip().is_loopback()) {
            return Err(ControlError::NeedsToken(*open));
        }
    }
    let listener = TcpListener::bind(first)
        .await
        .map_err(|e| ControlError::Listen(addr.into(), e))?;
    Ok(Listener { listener, auth })
}

/// Serves one connection (TCP or Unix) with the router; `peer` names it in logs and holders.
async fn serve_connection<S>(
    stream: S,
    router: axum::Router,
    peer: String,
    local: Option<Local>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let log_peer = peer.clone();
    let svc = hyper::service::service_fn(move |mut req| {
        req.extensions_mut().insert(api::Peer(peer.clone()));
        if let Some(l) = local {
            req.extensions_mut().insert(l);
        }
        let r = router.clone();
        async move { tower::ServiceExt::oneshot(r, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        log::debug!("control API: {log_peer}: {e}");
    }
    drop(permit);
}

/// The control API on a Unix socket: who calls is what the kernel says (SO_PEERCRED).
pub struct UnixControl {
    listener: UnixListener,
    path: std::path::PathBuf,
    auth: Arc<Auth>,
}

/// Binds the Unix control socket at `path` (a stale socket file is replaced), with file
/// `mode` and `group`.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
    auth: Arc<Auth>,
) -> Result<UnixControl, ControlError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let name = path.display().to_string();
    let err = |e: String| ControlError::Socket(name.clone(), e);
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(err("exists and is no socket: not replaced".into()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another daemon answers on it".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(format!("mode {mode:o}: {e}")))?;
    if let Some(g) = group {
        use std::os::unix::fs::MetadataExt;
        let gid = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| err(format!("no group {g:?}")))?
            .gid
            .as_raw();
        // The service runs in that group already (and may not chown: its system call
        // filter forbids it): only a different group needs the call.
        let has = std::fs::metadata(path).map(|m| m.gid()).unwrap_or(u32::MAX);
        if has != gid {
            std::os::unix::fs::chown(path, None, Some(gid))
                .map_err(|e| err(format!("group {g}: {e}")))?;
        }
    }
    Ok(UnixControl {
        listener,
        path: path.to_path_buf(),
        auth,
    })
}

impl UnixControl {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until the task is aborted.
    pub async fn serve(self, daemon: Arc<Daemon>) {
        let router = api::router_with(daemon, self.auth.clone());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(cred) = stream.peer_cred() else {
                log::warn!("control socket: a caller without peer credentials, closed");
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                log::warn!("control socket: over {MAX_CONNECTIONS} connections, closed");
                continue;
            };
            let local = Local {
                uid: cred.uid(),
                gid: cred.gid(),
            };
            let peer = match cred.pid() {
                Some(pid) => format!("uid {} pid {pid}", cred.uid()),
                None => format!("uid {}", cred.uid()),
            };
            tokio::spawn(serve_connection(
                stream,
                router.clone(),
                peer,
                Some(local),
                permit,
            ));
        }
    }
}

impl Drop for UnixControl {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Serves until the task is aborted.
    pub async fn serve(self, daemon: Arc<Daemon>) {
        let router = api::router_with(daemon, self.auth.clone());
        serve_http(self.listener, router, "control API").await
    }
}

/// Serves `router` on `listener` until the task is aborted: at most [`MAX_CONNECTIONS`] at
/// once, headers within [`HEADER_TIMEOUT`], each request told its peer ([`api::Peer`]). The
/// control API and the sim-rest API share it.
pub async fn serve_http(listener: TcpListener, router: axum::Router, what: &'static str) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log::warn!("{what}: {peer}: over {MAX_CONNECTIONS} connections, closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            peer.to_string(),
            None,
            permit,
        ));
    }
}
