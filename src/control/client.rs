//! The command line's side of the control API: one request per connection (hyper's client on a
//! plain TCP stream; the daemon is local or on a lab network, never behind TLS here).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

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
    /// The daemon answered with an error status.
    #[error("{message}")]
    Refused {
        status: u16,
        message: String,
        body: Value,
    },
}

/// A daemon's control API address (and token, if it needs one).
#[derive(Debug, Clone)]
pub struct Control {
    pub addr: String,
    pub token: Option<String>,
}

impl Control {
    /// Sends one request; answers the JSON body of a 2xx answer, or the daemon's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ControlClientError> {
        let addr = self.addr.clone();
        let http = |cause: String| ControlClientError::Http {
            addr: addr.clone(),
            cause,
        };
        let stream =
            match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return Err(ControlClientError::NoDaemon {
                        addr,
                        cause: e.to_string(),
                    })
                }
                Err(_) => {
                    return Err(ControlClientError::NoDaemon {
                        addr,
                        cause: "connection timed out".into(),
                    })
                }
            };
        let _ = stream.set_nodelay(true);
        let work = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| http(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let payload = match body {
                Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
                None => Bytes::new(),
            };
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.as_str())
                .header(hyper::header::ACCEPT, "application/json");
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            if let Some(t) = &self.token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Full::new(payload))
                .map_err(|e| http(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| http(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| http(e.to_string()))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                http(format!(
                    "answer is not JSON ({e}): is this a simpool daemon?"
                ))
            })?;
            if status.is_success() {
                Ok(v)
            } else {
                Err(refused(status, v))
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ControlClientError::Timeout {
                addr: self.addr.clone(),
                secs: timeout.as_secs(),
            }),
        }
    }

    /// Whether a simpool daemon answers here (its `/healthz`, up or not).
    pub async fn probe(&self) -> bool {
        match self
            .call(Method::GET, "/healthz", None, Duration::from_secs(2))
            .await
        {
            Ok(_) => true,
            Err(ControlClientError::Refused { body, .. }) => body.get("link").is_some(),
            Err(_) => false,
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
