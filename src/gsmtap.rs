//! GSMTAP tracing of card traffic (version 2, type SIM), as Wireshark, tshark and pySim-trace
//! decode it (see docs/gsmtap.md).
//!
//! Sans-IO codec plus a fire-and-forget sender:
//! - [`encode_exchange`] / [`encode_atr`] build one datagram into a caller's buffer: the 16-byte
//!   header (`02 04 04 00 …`, `hdr_len` 4 words) then, for sub-type 0, the TPDU the card got
//!   (5-byte header and, for case 3/4, the P3 command data; never Le, never procedure bytes)
//!   followed by the response data and SW1 SW2; for sub-type 1 the ATR.
//! - [`decode`] reads such a datagram back (used by `simpool trace` and the tests).
//! - [`Tracer`] is an exchange-path observer: it encodes into a bounded queue and a task of
//!   its own sends from an unbound, unconnected, non-blocking UDP socket; a full queue, a full
//!   socket buffer or a send error drops the datagram and counts it, card I/O never waits.
//!
//! **Card number**: osmocom's senders leave the 32-bit `frame_number` field (header bytes 8–11)
//! zero for SIM traffic, and neither Wireshark nor pySim-trace reads it for type SIM. simpool puts
//! the card number there (1–256, big-endian), so `simpool trace` can tell cards apart; 0 means
//! "not said" (datagrams from other senders).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::cards::{Front, Observer};

/// IANA port "gsmtap"; senders send to it, listeners (pySim-trace, `simpool trace`) bind it.
pub const PORT: u16 = 4729;
pub const HEADER_LEN: usize = 16;
const VERSION: u8 = 2;
/// `hdr_len` counts 32-bit words.
const HEADER_WORDS: u8 = (HEADER_LEN / 4) as u8;
pub const TYPE_SIM: u8 = 4;
/// GSMTAP_SIM_APDU: one complete command and its response.
pub const SUB_APDU: u8 = 0;
/// GSMTAP_SIM_ATR.
pub const SUB_ATR: u8 = 1;
/// Longest datagram: header, TPDU header, 256 data bytes, SW.
pub const MAX_DATAGRAM: usize = HEADER_LEN + 5 + 256 + 2;

/// Why an exchange cannot be encoded (the observer never sees these from a working pool).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("command of {0} bytes is no T=0 command")]
    BadCommand(usize),
    #[error("response of {0} bytes has no status word or is too long")]
    BadResponse(usize),
    #[error("ATR of {0} bytes")]
    BadAtr(usize),
}

/// Why a datagram is not a GSMTAP SIM datagram simpool can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes: shorter than a GSMTAP header")]
    Short(usize),
    #[error("GSMTAP version {0} (want 2)")]
    Version(u8),
    #[error("header length {words} words does not fit a {len}-byte datagram")]
    HeaderLength { words: u8, len: usize },
    #[error("GSMTAP type {0} is not SIM (4)")]
    NotSim(u8),
    #[error("APDU body of {0} bytes: needs at least a 5-byte header and SW1 SW2")]
    ShortApdu(usize),
}

fn header(out: &mut [u8], card: u16, sub_type: u8) {
    out[..HEADER_LEN].fill(0);
    out[0] = VERSION;
    out[1] = HEADER_WORDS;
    out[2] = TYPE_SIM;
    out[8..12].copy_from_slice(&u32::from(card).to_be_bytes());
    out[12] = sub_type;
}

/// The TPDU the card got for a command as the application sent it (same rules as
/// [`crate::t0::Tpdu::parse`], without allocating): 5-byte header (P3 = 00 added for a 4-byte
/// case 1 command) and the command data, with a case-4 Le left out.
pub fn card_tpdu(cmd: &[u8]) -> Option<([u8; 5], &[u8])> {
    let mut h = [0u8; 5];
    match cmd.len() {
        0..=3 => None,
        4 => {
            h[..4].copy_from_slice(cmd);
            Some((h, &[]))
        }
        l => {
            h.copy_from_slice(&cmd[..5]);
            let lc = usize::from(cmd[4]);
            if l == 5 {
                Some((h, &[]))
            } else if lc > 0 && (l == 5 + lc || l == 6 + lc) {
                Some((h, &cmd[5..5 + lc]))
            } else {
                None
            }
        }
    }
}

/// Writes the sub-type 0 datagram of one exchange into `out`; answers its length.
/// `cmd` is the command as the application sent it, `resp` the card's data ‖ SW1 SW2.
pub fn encode_exchange(
    card: u16,
    cmd: &[u8],
    resp: &[u8],
    out: &mut [u8; MAX_DATAGRAM],
) -> Result<usize, EncodeError> {
    let (h, data) = card_tpdu(cmd).ok_or(EncodeError::BadCommand(cmd.len()))?;
    let end = HEADER_LEN + 5 + data.len() + resp.len();
    if resp.len() < 2 || end > MAX_DATAGRAM {
        return Err(EncodeError::BadResponse(resp.len()));
    }
    header(out, card, SUB_APDU);
    out[HEADER_LEN..HEADER_LEN + 5].copy_from_slice(&h);
    let mut at = HEADER_LEN + 5;
    out[at..at + data.len()].copy_from_slice(data);
    at += data.len();
    out[at..end].copy_from_slice(resp);
    Ok(end)
}

/// Writes the sub-type 1 (ATR) datagram into `out`; answers its length.
pub fn encode_atr(
    card: u16,
    atr: &[u8],
    out: &mut [u8; MAX_DATAGRAM],
) -> Result<usize, EncodeError> {
    // ISO/IEC 7816-3: at most 33 bytes; anything longer is no ATR.
    if atr.is_empty() || atr.len() > 33 {
        return Err(EncodeError::BadAtr(atr.len()));
    }
    header(out, card, SUB_ATR);
    out[HEADER_LEN..HEADER_LEN + atr.len()].copy_from_slice(atr);
    Ok(HEADER_LEN + atr.len())
}

/// One exchange as carried in a sub-type 0 datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Apdu<'a> {
    /// CLA INS P1 P2 P3.
    pub header: [u8; 5],
    /// What lies between header and SW: command data (case 3/4) or response data (case 2).
    /// T=0 moves data one way per TPDU; which one follows from INS (see [`Apdu::data_in`]).
    pub data: &'a [u8],
    pub sw: [u8; 2],
}

impl Apdu<'_> {
    pub fn cla(&self) -> u8 {
        self.header[0]
    }

    pub fn ins(&self) -> u8 {
        self.header[1]
    }

    /// Whether the data went to the card (`Some(true)`), came from it (`Some(false)`), or the
    /// INS is unknown (`None`). Known INS only, like pySim's and Wireshark's tables.
    pub fn data_in(&self) -> Option<bool> {
        match self.ins() {
            // SELECT, UPDATE BINARY/RECORD, SEARCH/SEEK, INCREASE, VERIFY, CHANGE, DISABLE,
            // ENABLE, UNBLOCK, RUN GSM ALGORITHM / AUTHENTICATE, TERMINAL PROFILE, ENVELOPE,
            // TERMINAL RESPONSE, STORE DATA, EXTERNAL AUTHENTICATE, SET DATA, INVALIDATE /
            // REHABILITATE (case 1, data only for a path), MANAGE SECURE CHANNEL, TRANSACT DATA.
            0xA4 | 0xD6 | 0xDC | 0xA2 | 0x32 | 0x20 | 0x24 | 0x26 | 0x28 | 0x2C | 0x88 | 0x89
            | 0x10 | 0xC2 | 0x14 | 0xE2 | 0x82 | 0xDB | 0x04 | 0x44 | 0x73 | 0x75 => Some(true),
            // READ BINARY/RECORD, GET RESPONSE, STATUS, FETCH, GET CHALLENGE, GET DATA,
            // MANAGE CHANNEL, GET IDENTITY, RETRIEVE DATA, SLEEP.
            0xB0 | 0xB2 | 0xC0 | 0xF2 | 0x12 | 0x84 | 0xCA | 0xCB | 0x70 | 0x78 | 0xFA => {
                Some(false)
            }
            _ => None,
        }
    }
}

/// What a SIM datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    Atr(&'a [u8]),
    Apdu(Apdu<'a>),
    /// PPS or the TPDU_* sub-types osmocom defines but does not send.
    Other {
        sub_type: u8,
        bytes: &'a [u8],
    },
}

/// A decoded GSMTAP SIM datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The card number from `frame_number`; `None` if the sender left it 0.
    pub card: Option<u32>,
    pub body: Body<'a>,
}

/// Reads a GSMTAP datagram; honours `hdr_len` like Wireshark does.
pub fn decode(d: &[u8]) -> Result<Datagram<'_>, DecodeError> {
    if d.len() < HEADER_LEN {
        return Err(DecodeError::Short(d.len()));
    }
    if d[0] != VERSION {
        return Err(DecodeError::Version(d[0]));
    }
    let hl = usize::from(d[1]) * 4;
    if hl < HEADER_LEN || hl > d.len() {
        return Err(DecodeError::HeaderLength {
            words: d[1],
            len: d.len(),
        });
    }
    if d[2] != TYPE_SIM {
        return Err(DecodeError::NotSim(d[2]));
    }
    let card = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    let card = (card != 0).then_some(card);
    let b = &d[hl..];
    let body = match d[12] {
        SUB_ATR => Body::Atr(b),
        SUB_APDU => {
            if b.len() < 7 {
                return Err(DecodeError::ShortApdu(b.len()));
            }
            let mut header = [0u8; 5];
            header.copy_from_slice(&b[..5]);
            let n = b.len();
            Body::Apdu(Apdu {
                header,
                data: &b[5..n - 2],
                sw: [b[n - 2], b[n - 1]],
            })
        }
        sub_type => Body::Other { sub_type, bytes: b },
    };
    Ok(Datagram { card, body })
}

/// Which cards are traced: a set of card numbers 1–256.
#[derive(Clone, PartialEq, Eq)]
pub struct CardFilter([u64; 4]);

impl CardFilter {
    pub fn all() -> CardFilter {
        CardFilter([u64::MAX; 4])
    }

    /// Parses `18,256` or `1-16,18` (card numbers 1–256).
    pub fn parse(s: &str) -> Result<CardFilter, String> {
        let mut set = [0u64; 4];
        let card = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(n @ 1..=256) => Ok(n),
                _ => Err(format!("`{}` is no card number 1-256", t.trim())),
            }
        };
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (card(a)?, card(b)?),
                None => (card(part)?, card(part)?),
            };
            if lo > hi {
                return Err(format!("empty range `{}`", part.trim()));
            }
            for n in lo..=hi {
                let i = usize::from(n - 1);
                set[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(CardFilter(set))
    }

    pub fn contains(&self, card: u16) -> bool {
        match card.checked_sub(1).map(usize::from) {
            Some(i) if i < 256 => self.0[i / 64] & (1 << (i % 64)) != 0,
            _ => false,
        }
    }
}

/// As `--gsmtap-cards` takes it: `1-256`, `3-5,18,256`.
impl std::fmt::Display for CardFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        let mut n = 1u16;
        while n <= 256 {
            if !self.contains(n) {
                n += 1;
                continue;
            }
            let lo = n;
            while n < 256 && self.contains(n + 1) {
                n += 1;
            }
            let sep = if first { "" } else { "," };
            first = false;
            if lo == n {
                write!(f, "{sep}{lo}")?;
            } else {
                write!(f, "{sep}{lo}-{n}")?;
            }
            n += 1;
        }
        Ok(())
    }
}

impl std::fmt::Debug for CardFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardFilter({self})")
    }
}

/// Where to send: `HOST[:PORT]` (port 4729 if left out; IPv6 as `[ADDR]:PORT` or a bare address),
/// resolved once.
pub fn destination(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, PORT));
    }
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{PORT}")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("GSMTAP destination `{s}`: {e}"))?
        .next()
        .ok_or_else(|| format!("GSMTAP destination `{s}`: no address"))
}

/// Tracing as configured (`serve --gsmtap`, `--gsmtap-cards`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub dest: SocketAddr,
    pub cards: CardFilter,
}

/// Datagrams sent and dropped (send error or full socket buffer), for logs and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Datagrams waiting for the sending task; beyond that they are dropped (and counted).
pub const QUEUE: usize = 1024;

/// One encoded datagram on its way to the sending task (no allocation per datagram).
struct Outgoing {
    len: usize,
    bytes: [u8; MAX_DATAGRAM],
}

/// Sends every traced exchange and ATR as one GSMTAP datagram. The exchange path only encodes
/// into a bounded queue (`try_send`: a full queue drops and counts); a task of its own on the
/// same runtime does the `sendto` once the exchange's task yields, so the syscall and loopback
/// delivery are not part of an exchange's latency, and no thread has to be woken (on a loaded
/// machine a cross-thread wake-up costs more than the send).
pub struct Tracer {
    queue: tokio::sync::mpsc::Sender<Outgoing>,
    cards: CardFilter,
    counters: Arc<Counters>,
}

impl Tracer {
    /// A tracer sending to `dest` from an unbound, unconnected, non-blocking socket: the kernel
    /// picks an ephemeral source port on the first send (never 4729, which belongs to
    /// listeners), and without `connect` an ICMP port-unreachable from an idle listener never
    /// fails a send. Must be called within a tokio runtime, which runs the sending task; the
    /// task ends when the tracer is dropped.
    pub fn new(dest: SocketAddr, cards: CardFilter) -> std::io::Result<Tracer> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("GSMTAP tracer: {e}")))?;
        let socket = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        let counters = Arc::<Counters>::default();
        let (queue, rx) = tokio::sync::mpsc::channel(QUEUE);
        runtime.spawn(send_loop(socket, dest.into(), rx, counters.clone()));
        Ok(Tracer {
            queue,
            cards,
            counters,
        })
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn enqueue(&self, d: Outgoing) {
        if self.queue.try_send(d).is_err() {
            drop_counted(&self.counters, &"queue full");
        }
    }

    fn drop_unencodable(&self, card: u16, e: EncodeError) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        log::debug!("GSMTAP: card {card}: not traced: {e}");
    }
}

fn drop_counted(counters: &Counters, why: &dyn std::fmt::Display) {
    let n = counters.dropped.fetch_add(1, Ordering::Relaxed);
    // One warning; a log line per exchange would cost more than the trace.
    if n == 0 {
        log::warn!("GSMTAP: datagram dropped ({why}); further drops are only counted");
    } else {
        log::debug!("GSMTAP: datagram dropped ({why})");
    }
}

/// While exchanges flow, datagrams are sent in batches this far apart, so no exchange wakes
/// the sender (a wake-up and a `sendto` between two exchanges of a busy reader cost more than
/// the exchange path itself on a small machine). Capture times are late by at most this much;
/// the order is kept.
const FLUSH: std::time::Duration = std::time::Duration::from_millis(5);

async fn send_loop(
    socket: Socket,
    dest: SockAddr,
    mut rx: tokio::sync::mpsc::Receiver<Outgoing>,
    counters: Arc<Counters>,
) {
    let send = |d: Outgoing| match socket.send_to(&d.bytes[..d.len], &dest) {
        Ok(_) => {
            counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        // Full socket buffer (WouldBlock) or any error: this datagram is lost, the next one
        // is tried anyway.
        Err(e) => drop_counted(&counters, &e),
    };
    // Idle: wait for the first datagram (one wake-up).
    while let Some(first) = rx.recv().await {
        send(first);
        // Busy: poll the queue on a timer instead of parking on it, so exchanges never wake
        // this task; back to idle after a quiet tick.
        loop {
            tokio::time::sleep(FLUSH).await;
            let mut sent = 0;
            while let Ok(d) = rx.try_recv() {
                send(d);
                sent += 1;
            }
            if sent == 0 {
                break;
            }
        }
    }
}

impl Observer for Tracer {
    fn atr(&self, card: u16, atr: &[u8]) {
        if !self.cards.contains(card) {
            return;
        }
        let mut d = Outgoing {
            len: 0,
            bytes: [0u8; MAX_DATAGRAM],
        };
        match encode_atr(card, atr, &mut d.bytes) {
            Ok(n) => {
                d.len = n;
                self.enqueue(d)
            }
            Err(e) => self.drop_unencodable(card, e),
        }
    }

    fn exchange(&self, card: u16, _front: Front, cmd: &[u8], resp: &[u8]) {
        if !self.cards.contains(card) {
            return;
        }
        let mut d = Outgoing {
            len: 0,
            bytes: [0u8; MAX_DATAGRAM],
        };
        match encode_exchange(card, cmd, resp, &mut d.bytes) {
            Ok(n) => {
                d.len = n;
                self.enqueue(d)
            }
            Err(e) => self.drop_unencodable(card, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn exchange(card: u16, cmd: &str, resp: &str) -> Vec<u8> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode_exchange(card, &h(cmd), &h(resp), &mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn exact_bytes_of_a_gsm_session() {
        // Header: version 2, hdr_len 4 words, type SIM, card 18 in frame_number, sub-type 0.
        let hdr = "02 04 04 00 0000 00 00 00000012 00 00 00 00";
        for (cmd, resp, body) in [
            // SELECT DF.GSM: case 3, answered 9F17.
            ("A0A40000027F20", "9F17", "A0A40000027F20 9F17"),
            // GET RESPONSE: case 2, data from the card then SW.
            (
                "A0C0000017",
                "000000007F20020000000000091300080400838A808A9000",
                "A0C0000017 000000007F20020000000000091300080400838A808A 9000",
            ),
            // READ BINARY EF.IMSI.
            (
                "A0B0000009",
                "0849061089491063519000",
                "A0B0000009 084906108949106351 9000",
            ),
            // UICC SELECT MF, case 4 with Le: the card got no Le.
            ("00A40004023F0000", "6112", "00A40004023F00 6112"),
            // Case 1 as a 4-byte APDU: T=0 sends P3 = 00.
            ("A0040000", "9000", "A004000000 9000"),
            // Case 3 answered 6E00 right after the header: the full command data is traced.
            (
                "00200001083132333435363738",
                "6E00",
                "0020000108 3132333435363738 6E00",
            ),
        ] {
            assert_eq!(
                hex::encode_upper(exchange(18, cmd, resp)),
                hex::encode_upper(h(&format!("{hdr}{body}"))),
                "{cmd} {resp}"
            );
        }
    }

    #[test]
    fn atr_datagram_and_card_number_256() {
        let atr = h("3B9F96801F878031E073FE211B674A4C753034054BA9");
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = encode_atr(256, &atr, &mut buf).unwrap();
        assert_eq!(
            hex::encode_upper(&buf[..n]),
            format!(
                "020404000000000000000100010000 00{}",
                hex::encode_upper(&atr)
            )
            .replace(' ', "")
        );
        let d = decode(&buf[..n]).unwrap();
        assert_eq!(d.card, Some(256));
        assert_eq!(d.body, Body::Atr(&atr));
        assert!(encode_atr(1, &[0x3B; 34], &mut buf).is_err());
        assert!(encode_atr(1, &[], &mut buf).is_err());
    }

    #[test]
    fn decode_round_trip_and_direction() {
        let d = exchange(7, "A0B0000009", "0849061089491063519000");
        let got = decode(&d).unwrap();
        assert_eq!(got.card, Some(7));
        let Body::Apdu(a) = got.body else {
            panic!("not an APDU: {got:?}")
        };
        assert_eq!(a.header, [0xA0, 0xB0, 0, 0, 9]);
        assert_eq!(a.data, &h("084906108949106351")[..]);
        assert_eq!(a.sw, [0x90, 0x00]);
        assert_eq!(a.data_in(), Some(false));
        let d = exchange(7, "A0A40000026F07", "9F0F");
        let Body::Apdu(sel) = decode(&d).unwrap().body else {
            panic!()
        };
        assert_eq!(
            (sel.data, sel.sw, sel.data_in()),
            (&[0x6F, 0x07][..], [0x9F, 0x0F], Some(true))
        );
    }

    #[test]
    fn decoder_rejects_what_is_no_sim_datagram() {
        let good = exchange(1, "A0F2000016", "9000");
        assert_eq!(decode(&good[..15]), Err(DecodeError::Short(15)));
        let mut v1 = good.clone();
        v1[0] = 1;
        assert_eq!(decode(&v1), Err(DecodeError::Version(1)));
        // hdr_len in bytes instead of words (pySim accepts it, Wireshark calls it malformed).
        let mut bytes = good.clone();
        bytes[1] = 16;
        assert!(matches!(
            decode(&bytes),
            Err(DecodeError::HeaderLength { .. })
        ));
        let mut um = good.clone();
        um[2] = 1;
        assert_eq!(decode(&um), Err(DecodeError::NotSim(1)));
        assert_eq!(decode(&good[..20]), Err(DecodeError::ShortApdu(4)));
        // Card number left zero (simtrace2, osmo-remsim).
        let mut anon = good.clone();
        anon[8..12].fill(0);
        assert_eq!(decode(&anon).unwrap().card, None);
        // A longer header is skipped, like Wireshark does.
        let mut long = good[..HEADER_LEN].to_vec();
        long[1] = 5;
        long.extend_from_slice(&[0xEE; 4]);
        long.extend_from_slice(&good[HEADER_LEN..]);
        assert_eq!(decode(&long).unwrap().body, decode(&good).unwrap().body);
        let mut pps = good.clone();
        pps[12] = 2;
        assert!(matches!(
            decode(&pps).unwrap().body,
            Body::Other { sub_type: 2, .. }
        ));
    }

    #[test]
    fn encoder_refuses_what_no_card_answered() {
        let mut buf = [0u8; MAX_DATAGRAM];
        for (cmd, resp) in [
            ("A0A4", "9000"),
            ("A0A4000002", "9F"),
            ("A0A40000023F00AABB", "9000"),
            ("A0D6000000AA", "9000"),
        ] {
            assert!(
                encode_exchange(1, &h(cmd), &h(resp), &mut buf).is_err(),
                "{cmd} {resp}"
            );
        }
        // Longest: 256 bytes out.
        let mut resp = vec![0x55; 256];
        resp.extend_from_slice(&[0x90, 0x00]);
        assert_eq!(
            encode_exchange(1, &h("A0B0000000"), &resp, &mut buf),
            Ok(MAX_DATAGRAM)
        );
        resp.insert(0, 0);
        assert!(encode_exchange(1, &h("A0B0000000"), &resp, &mut buf).is_err());
    }

    #[test]
    fn card_filter() {
        let f = CardFilter::parse("18,256, 3-5").unwrap();
        let on: Vec<u16> = (0..=300).filter(|&n| f.contains(n)).collect();
        assert_eq!(on, [3, 4, 5, 18, 256]);
        assert_eq!(f.to_string(), "3-5,18,256");
        assert_eq!(CardFilter::all().to_string(), "1-256");
        assert_eq!(CardFilter::parse("256,1").unwrap().to_string(), "1,256");
        assert!(!CardFilter::all().contains(0));
        assert!(CardFilter::all().contains(256));
        for bad in ["0", "257", "x", "5-3", "", "1,,2"] {
            assert!(CardFilter::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destinations() {
        assert_eq!(
            destination("127.0.0.1").unwrap(),
            "127.0.0.1:4729".parse().unwrap()
        );
        assert_eq!(
            destination("127.0.0.2:5000").unwrap(),
            "127.0.0.2:5000".parse().unwrap()
        );
        assert_eq!(destination("::1").unwrap(), "[::1]:4729".parse().unwrap());
        assert_eq!(destination("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert_eq!(destination("localhost:7").unwrap().port(), 7);
        assert!(destination("127.0.0.1:x").is_err());
    }

    /// A tracer whose sending task runs on a background runtime thread.
    fn tracer(dest: SocketAddr, cards: CardFilter) -> Tracer {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let rt = RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        });
        let _in = rt.enter();
        Tracer::new(dest, cards).unwrap()
    }

    #[test]
    fn a_tracer_needs_a_runtime_for_its_sending_task() {
        let e = Tracer::new(SocketAddr::from(([127, 0, 0, 1], PORT)), CardFilter::all());
        assert!(e.is_err());
    }

    /// Reads what arrived at `rx` within a short bounded wait.
    fn received(rx: &std::net::UdpSocket, count: usize) -> Vec<Vec<u8>> {
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while out.len() < count {
            let (n, _) = rx.recv_from(&mut buf).expect("datagram");
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// Waits (bounded) until the sender thread has dealt with `n` datagrams; answers
    /// (sent, dropped).
    fn settled(c: &Counters, n: u64) -> (u64, u64) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while c.sent() + c.dropped() < n && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        (c.sent(), c.dropped())
    }

    #[test]
    fn tracer_sends_filtered_cards_from_an_ephemeral_port() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = tracer(
            rx.local_addr().unwrap(),
            CardFilter::parse("18,256").unwrap(),
        );
        t.atr(17, &h("3B00"));
        t.exchange(17, Front::Vpcd, &h("A0F2000016"), &h("9000"));
        t.atr(18, &h("3B9F96801F878031E073FE211B674A4C753034054BA9"));
        t.exchange(256, Front::Api, &h("A0A40000023F00"), &h("9F17"));
        let got = received(&rx, 2);
        assert_eq!(decode(&got[0]).unwrap().card, Some(18));
        assert!(matches!(decode(&got[0]).unwrap().body, Body::Atr(_)));
        assert_eq!(got[1], exchange(256, "A0A40000023F00", "9F17"));
        assert_eq!(settled(&t.counters(), 2), (2, 0));
        // Nothing of card 17 follows; the source port is an ephemeral one.
        t.exchange(18, Front::Scan, &h("A0F2000016"), &h("9000"));
        let mut b = [0u8; 512];
        let (n, from) = rx.recv_from(&mut b).unwrap();
        assert_eq!(b[..n], exchange(18, "A0F2000016", "9000"));
        assert_ne!(from.port(), PORT);
    }

    #[test]
    fn sending_to_a_closed_port_neither_fails_nor_waits() {
        // A port with no listener: loopback answers ICMP port unreachable, which a connected
        // socket would report on the next send; the tracer's socket must not.
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let t = tracer(SocketAddr::from(([127, 0, 0, 1], port)), CardFilter::all());
        for _ in 0..200 {
            t.exchange(1, Front::Vpcd, &h("A0A40000023F00"), &h("9F17"));
            // Paced, so that the queue never fills: every drop would be a send error.
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        assert_eq!(
            settled(&t.counters(), 200),
            (200, 0),
            "ICMP errors leaked into sends"
        );
    }

    #[test]
    fn a_send_error_is_counted_as_a_drop_not_returned() {
        // Port 0 makes every send fail at once (EINVAL) without any traffic.
        let t = tracer(SocketAddr::from(([127, 0, 0, 1], 0)), CardFilter::all());
        t.atr(1, &h("3B00"));
        t.exchange(1, Front::Vpcd, &h("A0F2000016"), &h("9000"));
        assert_eq!(settled(&t.counters(), 2), (0, 2));
        // An exchange that cannot be encoded is counted as dropped too, at once.
        t.exchange(1, Front::Vpcd, &h("A0"), &h("9000"));
        assert_eq!(t.counters().dropped(), 3);
    }

    #[test]
    fn a_burst_beyond_the_queue_is_dropped_and_counted_without_waiting() {
        // A listener that never reads, and a burst far faster than any sendto: the queue fills,
        // and the exchange path drops instead of waiting.
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let t = tracer(rx.local_addr().unwrap(), CardFilter::all());
        let resp = [[0x55u8; 256].as_slice(), &[0x90, 0x00]].concat();
        let burst = 100_000u64;
        let t0 = std::time::Instant::now();
        for _ in 0..burst {
            t.exchange(1, Front::Vpcd, &h("A0B0000000"), &resp);
        }
        let took = t0.elapsed();
        let (sent, dropped) = settled(&t.counters(), burst);
        assert_eq!(sent + dropped, burst);
        assert!(dropped > 0, "a queue of {QUEUE} never filled");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
}
