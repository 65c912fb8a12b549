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

    /// Ends the session at once so that vpcd reports the card removed, without losing or
    /// emptying an answer.
    ///
    /// Every command vpcd sent has been answered by then. vpcd turns a connection that closes
    /// (FIN) while it waits for an answer into "success, 0 bytes", so the connection is reset
    /// (RST) instead: a command vpcd sends from now on fails on its side with an error, and
    /// pcscd reports the card removed at its next poll, so commands queued behind are not each
    /// answered `6F 00`. The reset waits until vpcd has read the last answer (its next frame
    /// shows it) or `grace` has passed, so the answer is not cut off in flight.
    pub async fn close_now(self, grace: Duration) {
        if self.decoder.buffered() == 0 {
            let _ = tokio::time::timeout(grace, self.stream.readable()).await;
        }
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }

    /// Sends an ATR or a response.
    pub async fn reply(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&encode(payload)).await
    }
}
