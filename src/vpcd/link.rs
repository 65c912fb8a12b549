//! One TCP connection to a vpcd reader. simpool connects to vpcd (vpcd listens); closing the
//! connection is how the reader learns the card was removed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::{encode, Decoder, Event};

/// How [`Connection::close_now`] ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// At pcscd's presence poll: pcscd reported the card removed then. The next card may
    /// connect at once; vpcd takes it at its next poll, after the removal.
    AtPoll,
    /// At another moment, or vpcd dropped it: pcscd has not seen a removal yet, and sees one
    /// only if nothing is waiting to be taken at its next poll.
    Unseen,
}

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
    /// answer, and without a flood of error answers; answers whether pcscd saw the removal.
    ///
    /// vpcd turns a connection that closes while it waits for a command's answer into
    /// "success, 0 bytes" (measured: a reset then too), so the connection is reset on pcscd's
    /// presence poll: an ATR request, left unanswered, so the poll fails and pcscd reports the
    /// card removed to every handle at that moment ([`Closed::AtPoll`]). Until then (at most
    /// one poll, ~400 ms) each command gets `answer` — but only after `pace`, so an
    /// application in a tight loop sees a handful of them, not thousands. An ATR request right
    /// after a power-up or reset is that power-up's, not a poll: the reset then fails it and
    /// vpcd drops the connection without pcscd having seen a removal ([`Closed::Unseen`]), as
    /// when `limit` passes or vpcd goes away first.
    pub async fn close_now(mut self, pace: Duration, answer: &[u8], limit: Duration) -> Closed {
        let end = tokio::time::Instant::now() + limit;
        let mut powering = false;
        let closed = loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break Closed::Unseen;
            }
            match tokio::time::timeout(left, self.next_event()).await {
                Ok(Ok(Some(Event::Command(_) | Event::Invalid { .. }))) => {
                    powering = false;
                    tokio::time::sleep(pace).await;
                    log::debug!(
                        "vpcd {}: command while the card goes away: answered {}",
                        self.peer,
                        hex::encode_upper(answer)
                    );
                    if self.reply(answer).await.is_err() {
                        break Closed::Unseen;
                    }
                }
                Ok(Ok(Some(Event::GetAtr))) if !powering => break Closed::AtPoll,
                Ok(Ok(Some(Event::GetAtr))) => break Closed::Unseen,
                Ok(Ok(Some(Event::PowerOn | Event::Reset))) => powering = true,
                Ok(Ok(Some(_))) => powering = false,
                Ok(Ok(None) | Err(_)) | Err(_) => break Closed::Unseen,
            }
        };
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        closed
    }

    /// Sends an ATR or a response.
    pub async fn reply(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(&encode(payload)).await
    }
}
