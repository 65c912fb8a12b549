//! The command line's side of the control API: one request per connection (hyper's client on a
//! plain TCP stream; the daemon is local or on a lab network, never behind TLS here). Answers
//! are read into the typed rows of [`crate::rows`].

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::rows::Health;

/// How long to wait for a daemon to accept a connection before concluding none runs.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    #[error("no simpool daemon answers on {addr}: {cause}")]
    NoDaemon { addr: String, cause: String },
    #[error("daemon on {addr}: {cause}")]
    Http { addr: String, cause: String },
    #[error("daemon on {addr} took longer than {secs} s")]
    Timeout { addr: String, secs: u64 },
    /// The daemon refused us for want of the right token (401): final, never a reason
    /// to go around it.
    #[error(
        "the daemon at {addr} {} (--control-token, SIMPOOL_CONTROL_TOKEN)",
        if *.given { "refused the token given" } else { "needs a token" }
    )]
    NeedsToken { addr: String, given: bool },
    /// The daemon answered with an error status.
    #[error("{message}")]
    Refused {
        status: u16,
        message: String,
        body: Value,
    },
}

/// What answers on a control address.
#[derive(Debug)]
pub enum Probe {
    /// A simpool daemon, its pool link up or not.
    Daemon(Health),
    /// A simpool daemon that wants a (different) token.
    NeedsToken(ControlClientError),
    /// Nothing (or nothing that is a simpool daemon), and why.
    Nothing(String),
}

/// A daemon's control API address (and token, if it needs one).
#[derive(Debug, Clone)]
pub struct Control {
    /// HOST:PORT; with a socket, `unix:PATH` (for messages).
    pub addr: String,
    pub token: Option<String>,
    /// The daemon's Unix control socket: used instead of `addr` when set.
    pub socket: Option<std::path::PathBuf>,
}

/// Where the packaged service's Unix control socket is.
pub const SERVICE_SOCKET: &str = "/run/simpool/control.sock";

/// A TCP or Unix stream to the daemon.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

impl Control {
    /// Sends one request; answers the 2xx answer's body read as `T`, or the daemon's error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<T, ControlClientError> {
        let v = self.call_value(method, path, body, timeout).await?;
        serde_json::from_value(v).map_err(|e| {
            self.http(format!(
                "answer to {path} has an unexpected shape ({e}): a different simpool version?"
            ))
        })
    }

    /// As [`Control::call`], the answer as JSON.
    pub async fn call_value(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<Value, ControlClientError> {
        let payload = match body {
            Some(b) => Some(Bytes::from(
                serde_json::to_vec(b).map_err(|e| self.http(e.to_string()))?,
            )),
            None => None,
        };
        let mut sender = self.connect().await?;
        let work = async {
            let (status, bytes) = self.send(&mut sender, method, path, payload).await?;
            self.decode(status, &bytes)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ControlClientError::Timeout {
                addr: self.addr.clone(),
                secs: timeout.as_secs(),
            }),
        }
    }

    fn http(&self, cause: String) -> ControlClientError {
        ControlClientError::Http {
            addr: self.addr.clone(),
            cause,
        }
    }

    /// A connection to the daemon, ready for one request.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ControlClientError> {
        let no_daemon = |cause: String| ControlClientError::NoDaemon {
            addr: self.addr.clone(),
            cause,
        };
        let stream: Box<dyn Stream> = match &self.socket {
            Some(p) => {
                match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(p)).await
                {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => return Err(no_daemon(e.to_string())),
                    Err(_) => return Err(no_daemon("connection timed out".into())),
                }
            }
            None => match tokio::time::timeout(
                PROBE_TIMEOUT,
                tokio::net::TcpStream::connect(&self.addr),
            )
            .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                Ok(Err(e)) => return Err(no_daemon(e.to_string())),
                Err(_) => return Err(no_daemon("connection timed out".into())),
            },
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends the request; answers the status and the body.
    async fn send(
        &self,
        sender: &mut SendRequest<Full<Bytes>>,
        method: Method,
        path: &str,
        payload: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ControlClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(
                hyper::header::HOST,
                if self.socket.is_some() {
                    "localhost"
                } else {
                    self.addr.as_str()
                },
            )
            .header(hyper::header::ACCEPT, "application/json");
        if payload.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(payload.unwrap_or_default()))
            .map_err(|e| self.http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.http(e.to_string()))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// The answer's JSON, or the daemon's refusal.
    fn decode(&self, status: StatusCode, bytes: &[u8]) -> Result<Value, ControlClientError> {
        if status == StatusCode::UNAUTHORIZED {
            return Err(ControlClientError::NeedsToken {
                addr: self.addr.clone(),
                given: self.token.is_some(),
            });
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            self.http(format!(
                "answer is not JSON ({e}): is this a simpool daemon?"
            ))
        })?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(refused(status, v))
        }
    }

    /// What answers here: a simpool daemon (its `/healthz`, up or not), one that wants a
    /// token, or nothing.
    pub async fn probe(&self) -> Probe {
        let healthz = self
            .call_value(Method::GET, "/healthz", None::<&()>, Duration::from_secs(2))
            .await;
        let health = match healthz {
            Ok(v) => v,
            Err(e @ ControlClientError::NeedsToken { .. }) => return Probe::NeedsToken(e),
            // 503: the daemon is there, its pool link is not.
            Err(ControlClientError::Refused { body, .. }) => body,
            Err(e) => return Probe::Nothing(e.to_string()),
        };
        match serde_json::from_value::<Health>(health) {
            Ok(h) => Probe::Daemon(h),
            Err(_) => Probe::Nothing(format!(
                "something answers on {}, but it is not a simpool daemon",
                self.addr
            )),
        }
    }
}

fn refused(status: StatusCode, body: Value) -> ControlClientError {
    let message = body
        .get("error")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| format!("daemon answered {status}"));
    ControlClientError::Refused {
        status: status.as_u16(),
        message,
        body,
    }
}
