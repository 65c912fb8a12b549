//! The pool's framing, both directions, as pure codecs (no I/O).
//!
//! Host → pool: `AA 66 slot len8 data`; a length-1 frame is a control command.
//! Pool → host: `AA 55 slot len16 data` (card) or `AA 44 slot len16 data` (pool-wide).
//! Decoders accept bytes in arbitrary pieces, skip garbage up to the next plausible header and
//! report what they skipped, and never buffer more than one maximal frame.
//!
//! A well-formed reply frame of a kind we do not know (`AA 77 …`: newer firmware, an
//! announcement) is decoded as [`Reply::Unknown`] so that it can be skipped whole; since any
//! `AA` in junk could look like one, it is only taken when the next frame's `AA` (or silence,
//! see [`ReplyDecoder::idle`]) follows it. Junk right after a frame says that frame's length
//! was wrong: when it came in the same read, the frame is given up before it is passed on
//! ([`FrameError::Misframed`], or [`FrameError::Overlong`] when the frame took in the next
//! one's header, which is found again); junk that came later is reported as
//! [`FrameError::Trailing`], naming the frame that was passed on.

use std::fmt;

/// A slot byte: card number − 1 (cards are numbered 1–256 on the front panel).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u8);

impl Slot {
    /// The slot of front-panel card `number` (1–256).
    pub fn from_card(number: u16) -> Option<Slot> {
        (1..=256)
            .contains(&number)
            .then(|| Slot((number - 1) as u8))
    }
    /// Front-panel number, 1–256.
    pub fn card(self) -> u16 {
        u16::from(self.0) + 1
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "card {} (slot {:02X})", self.card(), self.0)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "card {}", self.card())
    }
}

pub const REQUEST_MAGIC: [u8; 2] = [0xAA, 0x66];
pub const CARD_MAGIC: [u8; 2] = [0xAA, 0x55];
pub const POOL_MAGIC: [u8; 2] = [0xAA, 0x44];

/// Largest data part of a request (1-byte length).
pub const MAX_REQUEST_DATA: usize = 255;
/// Largest data part of a reply we accept. A card answer is at most 256 data + procedure byte
/// + SW1 SW2, the slot table 256 bytes; anything far larger is a corrupt length, not a frame.
pub const MAX_REPLY_DATA: usize = 1024;

/// Control commands: requests with exactly one data byte.
pub mod control {
    pub const STOP: u8 = 0x00;
    pub const READ_ID: u8 = 0x01;
    pub const READ_VERSION: u8 = 0x02;
    pub const READ_STATES: u8 = 0x03;
    pub const ERROR_INDICATION: u8 = 0x04;
    pub const START: u8 = 0xFF;
}

/// Slot state bytes of the `03` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    Empty,
    Inserted,
    Working,
    Abnormal,
    Unknown(u8),
}

impl SlotState {
    pub fn from_byte(b: u8) -> SlotState {
        match b {
            0x00 => SlotState::Empty,
            0x55 => SlotState::Inserted,
            0xAA => SlotState::Working,
            0xFF => SlotState::Abnormal,
            other => SlotState::Unknown(other),
        }
    }
    pub fn to_byte(self) -> u8 {
        match self {
            SlotState::Empty => 0x00,
            SlotState::Inserted => 0x55,
            SlotState::Working => 0xAA,
            SlotState::Abnormal => 0xFF,
            SlotState::Unknown(b) => b,
        }
    }
    /// A card is in the slot (whatever its state).
    pub fn has_card(self) -> bool {
        !matches!(self, SlotState::Empty)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "a data frame to a card needs 2 to 255 bytes, got {0} (a 1-byte frame is a pool command)"
    )]
    DataLength(usize),
    #[error("skipped {0} byte(s) of garbage before the next frame header")]
    Garbage(usize),
    #[error("a frame header for {header} claims {len} data bytes, more than any reply can hold")]
    Oversized { header: Header, len: usize },
    /// Junk right after a frame: that frame's length field was wrong (too short, or too long
    /// and completed with the next frame's first bytes).
    #[error("{skipped} byte(s) of garbage right after a frame for {after}: its length was wrong")]
    Trailing { after: Header, skipped: usize },
    /// Bytes that start no frame came right behind a frame in one read: its length was wrong
    /// (too short, or too long and completed with bytes that were no frame's). The frame is
    /// not passed on; `skipped` bytes after it were skipped.
    #[error("a frame for {header} was followed by {skipped} byte(s) that start no frame: its length was wrong")]
    Misframed { header: Header, skipped: usize },
    /// A frame's length was `by` bytes too long: it took in the next frame's first bytes,
    /// which was found again behind it. The frame is not passed on.
    #[error("a frame for {header} claimed {by} byte(s) of the next frame: its length was wrong")]
    Overlong { header: Header, by: usize },
    /// A frame began, and nothing more came: its length claims more than the pool sent.
    #[error("a frame for {0} claims more bytes than came: skipped")]
    Stalled(Header),
    #[error("request frame with length 0")]
    EmptyRequest,
    #[error("unknown pool command {0:02X}")]
    UnknownCommand(u8),
}

/// What the host asks the pool.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    Start(Slot),
    Stop(Slot),
    ReadId,
    ReadVersion,
    ReadStates,
    ErrorIndication(Slot),
    /// Bytes passed to the card unchanged; 2 to 255 of them.
    Data(Slot, Vec<u8>),
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Data(s, d) => write!(f, "Data({s:?}, {})", hex::encode_upper(d)),
            Request::Start(s) => write!(f, "Start({s:?})"),
            Request::Stop(s) => write!(f, "Stop({s:?})"),
            Request::ErrorIndication(s) => write!(f, "ErrorIndication({s:?})"),
            Request::ReadId => f.write_str("ReadId"),
            Request::ReadVersion => f.write_str("ReadVersion"),
            Request::ReadStates => f.write_str("ReadStates"),
        }
    }
}

impl Request {
    /// Appends the wire form to `out`. Refuses a data frame that the pool would read as a
    /// command (length 1) or that does not fit the length byte.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let (slot, data): (u8, &[u8]) = match self {
            Request::Start(s) => (s.0, &[control::START]),
            Request::Stop(s) => (s.0, &[control::STOP]),
            Request::ReadId => (0, &[control::READ_ID]),
            Request::ReadVersion => (0, &[control::READ_VERSION]),
            Request::ReadStates => (0, &[control::READ_STATES]),
            Request::ErrorIndication(s) => (s.0, &[control::ERROR_INDICATION]),
            Request::Data(s, d) => {
                if d.len() < 2 || d.len() > MAX_REQUEST_DATA {
                    return Err(FrameError::DataLength(d.len()));
                }
                (s.0, d.as_slice())
            }
        };
        out.extend_from_slice(&REQUEST_MAGIC);
        out.push(slot);
        out.push(data.len() as u8);
        out.extend_from_slice(data);
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }

    /// Whether the pool answers this request at all (stop and error indication get no reply).
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Request::Stop(_) | Request::ErrorIndication(_))
    }
}

/// What the pool sends back.
#[derive(Clone, PartialEq, Eq)]
pub enum Reply {
    /// `AA 55`: bytes from a card (or its ATR after start).
    Card { slot: Slot, data: Vec<u8> },
    /// `AA 44`: answer to a pool-wide command (ID, version, states).
    Pool { slot: u8, data: Vec<u8> },
    /// `AA kind`, a well-formed frame of a kind this program does not know.
    Unknown { kind: u8, slot: u8, data: Vec<u8> },
}

/// Whose a reply frame is, by its header: for attributing a broken frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    Card(Slot),
    Pool,
    Unknown(u8),
}

impl Header {
    fn of(kind: u8, slot: u8) -> Header {
        match kind {
            0x55 => Header::Card(Slot(slot)),
            0x44 => Header::Pool,
            k => Header::Unknown(k),
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Header::Card(s) => write!(f, "{s}"),
            Header::Pool => f.write_str("the pool"),
            Header::Unknown(k) => write!(f, "an unknown kind (AA {k:02X})"),
        }
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Card { slot, data } => write!(f, "Card({slot:?}, {})", hex::encode_upper(data)),
            Reply::Pool { slot, data } => {
                write!(f, "Pool({slot:02X}, {})", hex::encode_upper(data))
            }
            Reply::Unknown { kind, slot, data } => {
                write!(
                    f,
                    "Unknown(AA {kind:02X}, {slot:02X}, {})",
                    hex::encode_upper(data)
                )
            }
        }
    }
}

impl Reply {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (magic, slot, data) = match self {
            Reply::Card { slot, data } => (CARD_MAGIC, slot.0, data),
            Reply::Pool { slot, data } => (POOL_MAGIC, *slot, data),
            Reply::Unknown { kind, slot, data } => ([0xAA, *kind], *slot, data),
        };
        out.extend_from_slice(&magic);
        out.push(slot);
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Shared resynchronising scanner over a byte buffer.
#[derive(Default)]
struct Scanner {
    buf: Vec<u8>,
    pos: usize,
}

impl Scanner {
    fn push(&mut self, bytes: &[u8]) {
        // Compact lazily so pushing many small pieces stays linear.
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }
    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }
    /// Skips to the first byte that may start a frame (`AA` followed by one of `seconds` — any
    /// byte if empty —, or an `AA` at the very end). Returns how many bytes were skipped.
    fn skip_to_header(&mut self, seconds: &[u8]) -> usize {
        let a = self.avail();
        let mut i = 0;
        while i < a.len() {
            if a[i] == 0xAA
                && (i + 1 == a.len() || seconds.is_empty() || seconds.contains(&a[i + 1]))
            {
                break;
            }
            i += 1;
        }
        self.consume(i);
        i
    }
    fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Decodes the pool's reply stream.
#[derive(Default)]
pub struct ReplyDecoder {
    scan: Scanner,
    /// The frame that ended where the scan now stands: junk from here on is its fault.
    last: Option<Header>,
}

impl ReplyDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the bytes of one read. Junk at the start of a read, after a frame that ended the
    /// read before, is not blamed on that frame: the pool wrote it later (with the next frame).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.scan.buffered() == 0 {
            self.last = None;
        }
        self.scan.push(bytes);
    }

    /// Bytes held waiting for the rest of a frame (bounded by one maximal frame).
    pub fn buffered(&self) -> usize {
        self.scan.buffered()
    }

    /// The header of the frame waiting for its rest, once its 5 header bytes are in.
    pub fn pending(&self) -> Option<Header> {
        let a = self.scan.avail();
        if a.len() < 5 || a[0] != 0xAA {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([a[3], a[4]]));
        (a.len() < 5 + len).then(|| Header::of(a[1], a[2]))
    }

    /// The read is all in: an unknown-kind frame that ends it is taken (it swallowed nothing
    /// that came after it).
    pub fn end_of_read(&mut self) -> Option<Result<Reply, FrameError>> {
        let a = self.scan.avail();
        if a.len() < 5 || a[0] != 0xAA {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([a[3], a[4]]));
        if a.len() == 5 + len {
            return self.frame();
        }
        None
    }

    /// The next complete frame, or an error describing bytes that were skipped, or `None` when
    /// more input is needed. Errors are not fatal: call again to continue.
    pub fn next_reply(&mut self) -> Option<Result<Reply, FrameError>> {
        let mut skipped = 0;
        loop {
            skipped += self.scan.skip_to_header(&[]);
            let a = self.scan.avail();
            let decided = match a.len() {
                0 | 1 => None,
                _ if matches!(a[1], 0x55 | 0x44) => Some(true),
                // An unknown kind: a frame only if a header byte (or nothing yet) follows.
                _ if a.len() < 5 => None,
                _ => {
                    let len = usize::from(u16::from_be_bytes([a[3], a[4]]));
                    match a.get(5 + len) {
                        _ if len > MAX_REPLY_DATA => Some(false),
                        Some(0xAA) => Some(true),
                        Some(_) => Some(false),
                        None => None,
                    }
                }
            };
            if decided == Some(false) {
                self.scan.consume(1);
                skipped += 1;
                continue;
            }
            if skipped > 0 {
                return Some(Err(match self.last {
                    Some(after) => FrameError::Trailing { after, skipped },
                    None => FrameError::Garbage(skipped),
                }));
            }
            decided?;
            return self.frame();
        }
    }

    /// Nothing more came for a while: an unknown-kind frame held for what follows it is taken
    /// (as by [`Self::end_of_read`]), a frame whose header came but not its data is given up (its first byte skipped, so the
    /// bytes after it are scanned again).
    pub fn idle(&mut self) -> Option<Result<Reply, FrameError>> {
        let a = self.scan.avail();
        if a.len() < 5 || a[0] != 0xAA {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([a[3], a[4]]));
        if a.len() == 5 + len {
            return self.frame();
        }
        let h = Header::of(a[1], a[2]);
        self.scan.consume(1);
        self.last = None;
        Some(Err(FrameError::Stalled(h)))
    }

    /// The frame (or oversized header) at the scan position, if complete.
    fn frame(&mut self) -> Option<Result<Reply, FrameError>> {
        let a = self.scan.avail();
        if a.len() < 5 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([a[3], a[4]]));
        if len > MAX_REPLY_DATA {
            // A header that cannot be right: drop its first byte and look again.
            let header = Header::of(a[1], a[2]);
            self.scan.consume(1);
            self.last = None;
            return Some(Err(FrameError::Oversized { header, len }));
        }
        if a.len() < 5 + len {
            return None;
        }
        let (kind, slot) = (a[1], a[2]);
        if matches!(kind, 0x55 | 0x44) && a.get(5 + len).is_some_and(|&b| b != 0xAA) {
            // Bytes that start no frame right behind it, in the same read: its length was
            // wrong, so its data cannot be trusted. It is given up before anyone takes it.
            let header = Header::of(kind, slot);
            self.last = None;
            if let Some(p) = swallowed_header(a, len) {
                // Too long: it took in the next frame's first bytes. That frame is whole
                // behind it, and is found again.
                self.scan.consume(p);
                return Some(Err(FrameError::Overlong {
                    header,
                    by: 5 + len - p,
                }));
            }
            self.scan.consume(5 + len);
            let skipped = self.scan.skip_to_header(&[]);
            return Some(Err(FrameError::Misframed { header, skipped }));
        }
        let data = a[5..5 + len].to_vec();
        let reply = match kind {
            0x55 => Reply::Card {
                slot: Slot(slot),
                data,
            },
            0x44 => Reply::Pool { slot, data },
            kind => Reply::Unknown { kind, slot, data },
        };
        self.scan.consume(5 + len);
        self.last = Some(Header::of(kind, slot));
        Some(Ok(reply))
    }
}

/// Where, within the last bytes of a frame whose length claims `len` (too long), the next
/// frame's header begins: an `AA 55`/`AA 44` whose frame is complete in `a` and is followed
/// by another header or by the end of what came. A frame is taken in at most a header and a
/// half too far; further in, a header is more likely the frame's own data.
fn swallowed_header(a: &[u8], len: usize) -> Option<usize> {
    (1..=len.min(8)).find_map(|k| {
        let p = 5 + len - k;
        let h = a.get(p..p + 5)?;
        if h[0] != 0xAA || !matches!(h[1], 0x55 | 0x44) {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        let end = p + 5 + len;
        let whole = end == a.len() || a.get(end) == Some(&0xAA);
        (len <= MAX_REPLY_DATA && whole).then_some(p)
    })
}

/// Decodes the host's request stream (the simulator's side).
#[derive(Default)]
pub struct RequestDecoder {
    scan: Scanner,
}

impl RequestDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.scan.push(bytes);
    }

    pub fn buffered(&self) -> usize {
        self.scan.buffered()
    }

    pub fn next_request(&mut self) -> Option<Result<Request, FrameError>> {
        let skipped = self.scan.skip_to_header(&[0x66]);
        if skipped > 0 {
            return Some(Err(FrameError::Garbage(skipped)));
        }
        let a = self.scan.avail();
        if a.len() < 4 {
            return None;
        }
        let (slot, len) = (Slot(a[2]), usize::from(a[3]));
        if len == 0 {
            self.scan.consume(4);
            return Some(Err(FrameError::EmptyRequest));
        }
        if a.len() < 4 + len {
            return None;
        }
        let req = if len == 1 {
            match a[4] {
                control::START => Ok(Request::Start(slot)),
                control::STOP => Ok(Request::Stop(slot)),
                control::READ_ID => Ok(Request::ReadId),
                control::READ_VERSION => Ok(Request::ReadVersion),
                control::READ_STATES => Ok(Request::ReadStates),
                control::ERROR_INDICATION => Ok(Request::ErrorIndication(slot)),
                other => Err(FrameError::UnknownCommand(other)),
            }
        } else {
            Ok(Request::Data(slot, a[4..4 + len].to_vec()))
        };
        self.scan.consume(4 + len);
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_data_is_refused() {
        assert_eq!(
            Request::Data(Slot(1), vec![0xFF]).to_bytes(),
            Err(FrameError::DataLength(1))
        );
        assert_eq!(
            Request::Data(Slot(1), vec![0; 256]).to_bytes(),
            Err(FrameError::DataLength(256))
        );
    }

    #[test]
    fn resync_after_garbage_and_false_header() {
        let mut d = ReplyDecoder::new();
        // garbage, a lone AA, an oversized header, then a good frame
        d.push(&[0x01, 0x02, 0xAA, 0x00, 0xAA, 0x55, 0x00, 0xFF, 0xFF]);
        d.push(
            &Reply::Card {
                slot: Slot(3),
                data: vec![0x90, 0x00],
            }
            .to_bytes(),
        );
        let mut got = Vec::new();
        while let Some(r) = d.next_reply() {
            got.push(r);
        }
        assert_eq!(
            got.last(),
            Some(&Ok(Reply::Card {
                slot: Slot(3),
                data: vec![0x90, 0x00]
            }))
        );
        assert!(got
            .iter()
            .any(|r| matches!(r, Err(FrameError::Oversized { len: 0xFFFF, .. }))));
        assert_eq!(d.buffered(), 0);
    }

    fn drain(d: &mut ReplyDecoder) -> Vec<Result<Reply, FrameError>> {
        std::iter::from_fn(|| d.next_reply()).collect()
    }

    fn card(slot: u8, data: &[u8]) -> Vec<u8> {
        Reply::Card {
            slot: Slot(slot),
            data: data.to_vec(),
        }
        .to_bytes()
    }

    #[test]
    fn unknown_kinds_are_frames_when_a_frame_follows_or_the_pool_is_idle() {
        let mut d = ReplyDecoder::new();
        let unknown = [0xAA, 0x77, 0x03, 0x00, 0x02, 0x12, 0x34];
        d.push(&unknown);
        d.push(&card(3, &[0x90, 0x00]));
        d.push(&unknown);
        let got = drain(&mut d);
        let want_unknown = Reply::Unknown {
            kind: 0x77,
            slot: 3,
            data: vec![0x12, 0x34],
        };
        assert_eq!(
            got,
            vec![
                Ok(want_unknown.clone()),
                Ok(Reply::Card {
                    slot: Slot(3),
                    data: vec![0x90, 0x00]
                })
            ]
        );
        assert_eq!(d.pending(), None, "complete, not waiting for bytes");
        assert_eq!(d.end_of_read(), Some(Ok(want_unknown)));
        assert_eq!(d.buffered(), 0);
        // An AA in junk that does not end where a frame begins is junk (in a read of its own,
        // blamed on no frame).
        d.push(&[0xAA, 0x12, 0x00, 0x00, 0x01, 0x01, 0x02]);
        d.push(&card(4, &[0x90, 0x00]));
        let got = drain(&mut d);
        assert_eq!(got[0], Err(FrameError::Garbage(7)));
        assert!(matches!(got[1], Ok(Reply::Card { .. })));
    }

    #[test]
    fn junk_after_a_frame_blames_that_frame_and_a_stalled_frame_is_given_up() {
        // Length one short, and the byte it left behind looks like a header's: the frame is
        // passed on, the junk found behind it blames it.
        let mut d = ReplyDecoder::new();
        let mut b = card(5, &[0x9F, 0xAA]);
        b[4] = 1;
        d.push(&b);
        d.push(&[0x12, 0x00, 0x00, 0x01, 0x01, 0x02]);
        d.push(&card(8, &[0x90, 0x00]));
        let got = drain(&mut d);
        assert!(matches!(got[0], Ok(Reply::Card { .. })));
        assert_eq!(
            got[1],
            Err(FrameError::Trailing {
                after: Header::Card(Slot(5)),
                skipped: 7
            })
        );
        assert!(matches!(got[2], Ok(Reply::Card { slot: Slot(8), .. })));
        // Length three too long, completed by the next frame's header: the next frame is
        // found again behind the broken one only if it is given up; here it completes it.
        let mut d = ReplyDecoder::new();
        let mut b = card(6, &[0x9F, 0x0F]);
        b[4] = 5;
        d.push(&b);
        assert_eq!(drain(&mut d), vec![]);
        assert_eq!(d.pending(), Some(Header::Card(Slot(6))));
        assert_eq!(
            d.idle(),
            Some(Err(FrameError::Stalled(Header::Card(Slot(6)))))
        );
        d.push(&card(7, &[0x90, 0x00]));
        let got = drain(&mut d);
        assert_eq!(got[0], Err(FrameError::Garbage(6)));
        assert_eq!(
            got[1],
            Ok(Reply::Card {
                slot: Slot(7),
                data: vec![0x90, 0x00]
            })
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn a_wrong_length_seen_in_the_same_read_is_never_passed_on() {
        let good = card(9, &[0x90, 0x00]);
        // Too short by one, and zero: the rest follows in the same read.
        for claimed in [1u16, 0] {
            let mut d = ReplyDecoder::new();
            let mut b = card(5, &[0x9F, 0x0F]);
            b[3..5].copy_from_slice(&claimed.to_be_bytes());
            d.push(&b);
            d.push(&good);
            let got = drain(&mut d);
            assert_eq!(
                got,
                vec![
                    Err(FrameError::Misframed {
                        header: Header::Card(Slot(5)),
                        skipped: 2 - usize::from(claimed)
                    }),
                    Ok(Reply::Card {
                        slot: Slot(9),
                        data: vec![0x90, 0x00]
                    })
                ],
                "claimed {claimed}"
            );
        }
        // Too long by one to four: it took in the next frame's first bytes; that frame is
        // found again, whole, whether it ends the read or another frame follows.
        for by in 1..=4u16 {
            for then in [&[][..], &good[..]] {
                let mut d = ReplyDecoder::new();
                let mut b = card(5, &[0x9F, 0x0F]);
                b[3..5].copy_from_slice(&(2 + by).to_be_bytes());
                d.push(&b);
                d.push(&card(6, &[0x61, 0x10]));
                d.push(then);
                let got = drain(&mut d);
                let mut want = vec![
                    Err(FrameError::Overlong {
                        header: Header::Card(Slot(5)),
                        by: usize::from(by),
                    }),
                    Ok(Reply::Card {
                        slot: Slot(6),
                        data: vec![0x61, 0x10],
                    }),
                ];
                if !then.is_empty() {
                    want.push(Ok(Reply::Card {
                        slot: Slot(9),
                        data: vec![0x90, 0x00],
                    }));
                }
                assert_eq!(got, want, "{by} too long");
                assert_eq!(d.buffered(), 0);
            }
        }
        // A header inside the data that is not followed by a whole frame is the data's own:
        // the frame is given up, nothing is found in it.
        let mut d = ReplyDecoder::new();
        let mut b = card(5, &[0xAA, 0x55, 0x07, 0x00, 0x09, 0x90, 0x00]);
        b[3..5].copy_from_slice(&6u16.to_be_bytes());
        d.push(&b);
        let got = drain(&mut d);
        assert_eq!(
            got,
            vec![Err(FrameError::Misframed {
                header: Header::Card(Slot(5)),
                skipped: 1
            })]
        );
        assert_eq!(d.buffered(), 0);
    }
}
