//! IPA framing as osmo-remsim uses it (libosmocore gsm/ipa.h), sans-IO.
//!
//! `len(2, BE) proto(1) payload(len)`: RSPRO travels as proto `EE` (OSMO) with the extension
//! byte `07` first in the payload; keep-alive is CCM (proto `FE`): `00` PING, `01` PONG,
//! `06` ID_ACK. The length is untrusted: anything above [`MAX_PAYLOAD`] is refused before a
//! byte of it is buffered, so a peer cannot make simpool hold more than one bounded frame.

/// IPA protocol bytes.
pub mod proto {
    /// CCM: keep-alive and identity (IPAC_PROTO_IPACCESS).
    pub const CCM: u8 = 0xFE;
    /// Osmocom extensions (IPAC_PROTO_OSMO); the first payload byte says which.
    pub const OSMO: u8 = 0xEE;
    /// The OSMO extension carrying RSPRO (IPAC_PROTO_EXT_RSPRO).
    pub const EXT_RSPRO: u8 = 0x07;
}

/// The largest IPA payload accepted. The biggest RSPRO PDU a bank meets is a tpduModemToCard
/// with 260 bytes of data (< 320 bytes encoded); this leaves room for long identities and
/// extensions without letting a peer announce 64 KiB.
pub const MAX_PAYLOAD: usize = 1024;

/// CCM message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ccm {
    Ping,
    Pong,
    IdAck,
    /// ID_GET, ID_RESP and anything else: not needed by RSPRO peers, ignored.
    Other(u8),
}

impl Ccm {
    pub fn code(self) -> u8 {
        match self {
            Ccm::Ping => 0x00,
            Ccm::Pong => 0x01,
            Ccm::IdAck => 0x06,
            Ccm::Other(b) => b,
        }
    }

    fn from_code(b: u8) -> Ccm {
        match b {
            0x00 => Ccm::Ping,
            0x01 => Ccm::Pong,
            0x06 => Ccm::IdAck,
            b => Ccm::Other(b),
        }
    }
}

/// One IPA frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An RSPRO PDU (BER), still to be decoded by [`super::rspro`].
    Rspro(Vec<u8>),
    Ccm(Ccm),
    /// A protocol or OSMO extension RSPRO peers do not use; skipped.
    Other {
        proto: u8,
        ext: Option<u8>,
    },
}

/// A framing error: the stream cannot be trusted any more and the link is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpaError {
    #[error("IPA frame announces {0} bytes, more than the {MAX_PAYLOAD} accepted")]
    Oversized(usize),
    #[error("empty IPA {what} frame")]
    Empty { what: &'static str },
}

/// Splits a byte stream into IPA frames, whatever its segmenting.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: Option<IpaError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds received bytes. After an error the decoder stays failed and buffers nothing more.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes held back (at most one frame header and [`MAX_PAYLOAD`], plus the last push).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame; `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Option<Result<Frame, IpaError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        if self.buf.len() < 3 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        let proto = self.buf[2];
        if len > MAX_PAYLOAD {
            return Some(Err(self.fail(IpaError::Oversized(len))));
        }
        if self.buf.len() < 3 + len {
            return None;
        }
        let payload = &self.buf[3..3 + len];
        let frame = match proto {
            proto::CCM => match payload.first() {
                // Trailing bytes (ID_RESP's identity elements) are of no use to RSPRO peers.
                Some(&b) => Ok(Frame::Ccm(Ccm::from_code(b))),
                None => Err(IpaError::Empty { what: "CCM" }),
            },
            proto::OSMO => match payload.first() {
                Some(&proto::EXT_RSPRO) => Ok(Frame::Rspro(payload[1..].to_vec())),
                Some(&ext) => Ok(Frame::Other {
                    proto,
                    ext: Some(ext),
                }),
                None => Err(IpaError::Empty { what: "OSMO" }),
            },
            _ => Ok(Frame::Other { proto, ext: None }),
        };
        match frame {
            Ok(f) => {
                self.buf.drain(..3 + len);
                Some(Ok(f))
            }
            Err(e) => Some(Err(self.fail(e))),
        }
    }

    fn fail(&mut self, e: IpaError) -> IpaError {
        self.buf = Vec::new();
        self.failed = Some(e.clone());
        e
    }
}

/// Frames an encoded RSPRO PDU. `pdu` longer than [`MAX_PAYLOAD`] - 1 is refused.
pub fn encode_rspro(pdu: &[u8]) -> Result<Vec<u8>, IpaError> {
    let len = pdu.len() + 1;
    if len > MAX_PAYLOAD {
        return Err(IpaError::Oversized(len));
    }
    let mut out = Vec::with_capacity(4 + pdu.len());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.push(proto::OSMO);
    out.push(proto::EXT_RSPRO);
    out.extend_from_slice(pdu);
    Ok(out)
}

/// A CCM message (PING, PONG, ID_ACK), 4 bytes.
pub fn encode_ccm(msg: Ccm) -> [u8; 4] {
    [0x00, 0x01, proto::CCM, msg.code()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_pong_and_rspro_in_pieces() {
        let mut stream = encode_ccm(Ccm::Ping).to_vec();
        stream.extend(encode_rspro(&[0x30, 0x00]).unwrap());
        stream.extend(encode_ccm(Ccm::IdAck));
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &stream {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame() {
                got.push(f.unwrap());
            }
        }
        assert_eq!(
            got,
            vec![
                Frame::Ccm(Ccm::Ping),
                Frame::Rspro(vec![0x30, 0x00]),
                Frame::Ccm(Ccm::IdAck)
            ]
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversized_length_fails_before_buffering_and_stays_failed() {
        let mut d = Decoder::new();
        d.push(&[0x04, 0x01, 0xEE]);
        assert_eq!(d.next_frame(), Some(Err(IpaError::Oversized(1025))));
        d.push(&[0u8; 100]);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.next_frame(), Some(Err(IpaError::Oversized(1025))));
    }

    #[test]
    fn empty_and_foreign_frames() {
        let mut d = Decoder::new();
        d.push(&[0x00, 0x02, 0xEE, 0x05, 0x00, 0x00, 0x01, 0x12, 0xAA]);
        assert_eq!(
            d.next_frame(),
            Some(Ok(Frame::Other {
                proto: 0xEE,
                ext: Some(5)
            }))
        );
        assert_eq!(
            d.next_frame(),
            Some(Ok(Frame::Other {
                proto: 0x12,
                ext: None
            }))
        );
        d.push(&[0x00, 0x00, 0xFE]);
        assert_eq!(d.next_frame(), Some(Err(IpaError::Empty { what: "CCM" })));
    }

    #[test]
    fn encode_refuses_oversized() {
        assert!(encode_rspro(&[0u8; MAX_PAYLOAD - 1]).is_ok());
        assert_eq!(
            encode_rspro(&[0u8; MAX_PAYLOAD]),
            Err(IpaError::Oversized(MAX_PAYLOAD + 1))
        );
    }
}
