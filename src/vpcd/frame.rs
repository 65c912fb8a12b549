//! vpcd's socket protocol, sans-IO: a 2-byte big-endian length, then the payload. A 1-byte
//! payload from vpcd is a control message; longer ones are commands for the card.
//! Only "get ATR" and commands are answered.

/// Longest command T=0 can carry (5 + 255 data) plus a case-4 Le.
pub const MAX_COMMAND: usize = 261;

pub mod control {
    pub const POWER_OFF: u8 = 0x00;
    pub const POWER_ON: u8 = 0x01;
    pub const RESET: u8 = 0x02;
    pub const GET_ATR: u8 = 0x04;
}

/// What vpcd asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PowerOff,
    PowerOn,
    Reset,
    GetAtr,
    /// An APDU/TPDU from the application, 2..=MAX_COMMAND bytes.
    Command(Vec<u8>),
    /// A 1-byte message vpcd does not define; it expects no answer.
    UnknownControl(u8),
    /// A frame that cannot be a command (length 0 or beyond T=0's maximum). Its payload was
    /// skipped without being buffered; vpcd waits for an answer, so it gets an error status.
    Invalid {
        len: usize,
    },
}

/// Splits vpcd's byte stream into events, whatever the segmenting. Memory stays bounded:
/// oversized payloads are counted off, not stored.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of an oversized payload still to discard.
    skipping: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes received from vpcd.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.skipping > 0 {
            let n = self.skipping.min(bytes.len());
            self.skipping -= n;
            bytes = &bytes[n..];
        }
        self.buf.extend_from_slice(bytes);
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn next_event(&mut self) -> Option<Event> {
        if self.skipping > 0 || self.buf.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len == 0 {
            self.buf.drain(..2);
            return Some(Event::Invalid { len: 0 });
        }
        if len > MAX_COMMAND {
            let have = (self.buf.len() - 2).min(len);
            self.buf.drain(..2 + have);
            self.skipping = len - have;
            // Whatever followed in the buffer belongs to later frames.
            return Some(Event::Invalid { len });
        }
        if self.buf.len() < 2 + len {
            return None;
        }
        let payload: Vec<u8> = self.buf.drain(..2 + len).skip(2).collect();
        Some(if len == 1 {
            match payload[0] {
                control::POWER_OFF => Event::PowerOff,
                control::POWER_ON => Event::PowerOn,
                control::RESET => Event::Reset,
                control::GET_ATR => Event::GetAtr,
                other => Event::UnknownControl(other),
            }
        } else {
            Event::Command(payload)
        })
    }
}

/// Frames an answer (ATR or response APDU) for vpcd.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + payload.len());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_commands_and_invalid_frames() {
        let mut d = Decoder::new();
        let mut stream = vec![0, 1, 1, 0, 1, 4];
        stream.extend(encode(&[0xA0, 0xA4, 0, 0, 2, 0x3F, 0]));
        stream.extend([0, 0]);
        stream.extend([0x02, 0x00]);
        stream.extend(vec![0x11; 512]);
        stream.extend([0, 1, 2, 0, 1, 9]);
        for piece in stream.chunks(3) {
            d.push(piece);
        }
        let got: Vec<Event> = std::iter::from_fn(|| d.next_event()).collect();
        assert_eq!(
            got,
            vec![
                Event::PowerOn,
                Event::GetAtr,
                Event::Command(vec![0xA0, 0xA4, 0, 0, 2, 0x3F, 0]),
                Event::Invalid { len: 0 },
                Event::Invalid { len: 512 },
                Event::Reset,
                Event::UnknownControl(9),
            ]
        );
        assert_eq!(d.buffered(), 0);
    }
}
