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

    /// Ends the session so that vpcd reports the card removed, without losing or emptying an
    /// answer, and without a flood of error answers.
    ///
    /// vpcd turns a connection that closes while it waits for a command's answer into
    /// "success, 0 bytes" (measured: a reset then too), so the connection is reset only when
    /// vpcd is not waiting for a command's answer: after `quiet` without a frame, or on pcscd's
    /// presence poll (an ATR request, left unanswered: the poll fails and pcscd reports the card
    /// removed to every handle). Until then each command gets `answer` — but only after
    /// `pace`, so an application in a tight loop sees a handful of them, not thousands, before
    /// pcscd's next poll (every ~400 ms) ends it. `limit` bounds the whole wait.
    pub async fn close_now(
        mut self,
        quiet: Duration,
        pace: Duration,
        answer: &[u8],
        limit: Duration,
    ) {
        let end = tokio::time::Instant::now() + limit;
        loop {
            let wait = quiet.min(end.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, self.next_event()).await {
                Ok(Ok(Some(Event::Command(_) | Event::Invalid { .. }))) => {
                    tokio::time::sleep(pace).await;
                    log::debug!(
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
            if tokio::time::Instant::now() >= end {
                break;
            }
        }
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }

    /// Sends an ATR or a response.
    pub async fn reply(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&encode(payload)).await
    }
}
