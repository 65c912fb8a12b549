//! One TCP connection to a vpcd reader. simpool connects to vpcd (vpcd listens); closing the
//! connection is how the reader learns the card was removed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{encode, Decoder, Event};

/// A connected vpcd reader.
pub struct Connection {
    stream: TcpStream,
    decoder: Decoder,
    buf: Box<[u8; 1024]>,
    quickack: bool,
    peer: String,
}

impl Connection {
    /// Connects once, bounded by `timeout`.
    pub async fn connect(
        addr: &str,
        quickack: bool,
        timeout: Duration,
    ) -> std::io::Result<Connection> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        // Answers are small and latency-bound: never wait for Nagle.
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            decoder: Decoder::new(),
            buf: Box::new([0u8; 1024]),
            quickack,
            peer: addr.to_string(),
        })
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The next event; `Ok(None)` when vpcd closed the connection. Cancel-safe: bytes read are
    /// kept in the decoder.
    pub async fn next_event(&mut self) -> std::io::Result<Option<Event>> {
        loop {
            if let Some(ev) = self.decoder.next_event() {
                return Ok(Some(ev));
            }
            if self.quickack {
                // Debian's vpcd sends length and payload in two writes; re-arming QUICKACK
                // before each read stops the delayed ACK (~40 ms) between them.
                let _ = socket2::SockRef::from(&self.stream).set_tcp_quickack(true);
            }
            let n = self.stream.read(&mut self.buf[..]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }

    /// Ends the session so that vpcd reports the card removed, without losing a command.
    ///
    /// vpcd turns a connection closed while it waits for an answer into "success, 0 bytes" for
    /// the application. So: answer whatever arrives until the line has been quiet for `quiet`
    /// (commands get `answer`, an error status), stop at once on an ATR poll (the card is gone),
    /// then reset the connection (RST, not FIN): a command vpcd sends in the last instant fails
    /// with an error on its side instead of succeeding empty.
    pub async fn close_draining(mut self, quiet: Duration, answer: &[u8]) {
        loop {
            match tokio::time::timeout(quiet, self.next_event()).await {
                Ok(Ok(Some(Event::Command(_) | Event::Invalid { .. }))) => {
                    log::warn!(
                        "vpcd {}: command while the card goes away: answered {}",
                        self.peer,
                        hex::encode_upper(answer)
                    );
                    if self.reply(answer).await.is_err() {
                        break;
                    }
                }
                Ok(Ok(Some(Event::GetAtr))) => break,
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) | Err(_) => break,
            }
        }
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }

    /// Sends an ATR or a response.
    pub async fn reply(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&encode(payload)).await
    }
}
