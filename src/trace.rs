//! `simpool trace`: a GSMTAP listener printing each SIM exchange decoded, one line per datagram,
//! for users without Wireshark (like osmocom's pySim-trace, which cannot decode CLA A0).
//!
//! [`Printer`] is sans-IO: it turns datagrams into lines and remembers per card which file was
//! selected last, so READ BINARY or GET RESPONSE lines name their file. [`listen`] only moves
//! datagrams from a UDP socket to it.

use std::collections::HashMap;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::gsmtap::{self, Apdu, Body, CardFilter};

/// Command name by CLA and INS (GSM 11.11 names for CLA A0, else ETSI TS 102 221 / ISO 7816-4).
pub fn command_name(cla: u8, ins: u8) -> Option<&'static str> {
    let gsm = cla == 0xA0;
    Some(match ins {
        0xA4 => "SELECT",
        0xB0 => "READ BINARY",
        0xB2 => "READ RECORD",
        0xD6 => "UPDATE BINARY",
        0xDC => "UPDATE RECORD",
        0xA2 if gsm => "SEEK",
        0xA2 => "SEARCH RECORD",
        0x32 => "INCREASE",
        0x20 if gsm => "VERIFY CHV",
        0x20 => "VERIFY PIN",
        0x24 if gsm => "CHANGE CHV",
        0x24 => "CHANGE PIN",
        0x26 if gsm => "DISABLE CHV",
        0x26 => "DISABLE PIN",
        0x28 if gsm => "ENABLE CHV",
        0x28 => "ENABLE PIN",
        0x2C if gsm => "UNBLOCK CHV",
        0x2C => "UNBLOCK PIN",
        0x04 if gsm => "INVALIDATE",
        0x04 => "DEACTIVATE FILE",
        0x44 if gsm => "REHABILITATE",
        0x44 => "ACTIVATE FILE",
        0x88 if gsm => "RUN GSM ALGORITHM",
        0x88 | 0x89 => "AUTHENTICATE",
        0xFA => "SLEEP",
        0xF2 => "STATUS",
        0xC0 => "GET RESPONSE",
        0x10 => "TERMINAL PROFILE",
        0xC2 => "ENVELOPE",
        0x12 => "FETCH",
        0x14 => "TERMINAL RESPONSE",
        0x70 => "MANAGE CHANNEL",
        0x73 => "MANAGE SECURE CHANNEL",
        0x75 => "TRANSACT DATA",
        0x76 => "SUSPEND UICC",
        0x78 => "GET IDENTITY",
        0x7C => "EXCHANGE CAPABILITIES",
        0x82 => "EXTERNAL AUTHENTICATE",
        0x84 => "GET CHALLENGE",
        0xAA => "TERMINAL CAPABILITY",
        0xCA => "GET DATA",
        0xCB => "RETRIEVE DATA",
        0xDB => "SET DATA",
        0xE2 => "STORE DATA",
        _ => return None,
    })
}

/// Name of a well-known file (GSM 11.11, TS 31.102).
pub fn file_name(fid: u16) -> Option<&'static str> {
    Some(match fid {
        0x3F00 => "MF",
        0x7F10 => "DF.TELECOM",
        0x7F20 => "DF.GSM",
        0x7F21 => "DF.DCS1800",
        0x7FFF => "ADF",
        0x2F00 => "EF.DIR",
        0x2F05 => "EF.PL",
        0x2FE2 => "EF.ICCID",
        0x6F05 => "EF.LP",
        0x6F07 => "EF.IMSI",
        0x6F08 => "EF.Keys",
        0x6F09 => "EF.KeysPS",
        0x6F20 => "EF.Kc",
        0x6F30 => "EF.PLMNsel",
        0x6F31 => "EF.HPLMN",
        0x6F37 => "EF.ACMmax",
        0x6F38 => "EF.SST",
        0x6F39 => "EF.ACM",
        0x6F3A => "EF.ADN",
        0x6F3B => "EF.FDN",
        0x6F3C => "EF.SMS",
        0x6F3E => "EF.GID1",
        0x6F40 => "EF.MSISDN",
        0x6F42 => "EF.SMSP",
        0x6F43 => "EF.SMSS",
        0x6F44 => "EF.LND",
        0x6F45 => "EF.CBMI",
        0x6F46 => "EF.SPN",
        0x6F74 => "EF.BCCH",
        0x6F78 => "EF.ACC",
        0x6F7B => "EF.FPLMN",
        0x6F7E => "EF.LOCI",
        0x6FAD => "EF.AD",
        0x6FAE => "EF.Phase",
        0x6FE3 => "EF.EPSLOCI",
        _ => return None,
    })
}

/// A SELECT that the card accepted (GET RESPONSE or data may follow).
fn selected(sw: [u8; 2]) -> bool {
    matches!(sw[0], 0x90 | 0x91 | 0x9F | 0x61 | 0x62 | 0x63)
}

/// Turns datagrams into lines; keeps the last selected file of each card.
#[derive(Default)]
pub struct Printer {
    cards: HashMap<Option<u32>, CardState>,
}

#[derive(Default)]
struct CardState {
    /// The file selected last, as shown.
    current: Option<String>,
    /// INS of the card's previous command: a GET RESPONSE belongs to a SELECT only right after it.
    last_ins: Option<u8>,
}

impl Printer {
    pub fn new() -> Printer {
        Printer::default()
    }

    /// One line (without newline) for a datagram received at `at`.
    pub fn line(&mut self, at: SystemTime, datagram: &[u8]) -> String {
        let time = clock(at);
        let d = match gsmtap::decode(datagram) {
            Ok(d) => d,
            Err(e) => {
                return format!(
                    "{time} not a GSMTAP SIM datagram: {e}: {}",
                    hex::encode_upper(datagram)
                )
            }
        };
        let card = match d.card {
            Some(n) => format!("card {n:>3}"),
            None => "card   ?".to_string(),
        };
        match d.body {
            Body::Atr(atr) => {
                // A (re)started card: its file selection is gone.
                self.cards.remove(&d.card);
                format!("{time} {card} {:<18} {}", "ATR", hex::encode_upper(atr))
            }
            Body::Apdu(a) => {
                let name = match command_name(a.cla(), a.ins()) {
                    Some(n) => n.to_string(),
                    None => format!("INS {:02X}", a.ins()),
                };
                let file = self.file(d.card, &a);
                let data = match (a.data.is_empty(), a.data_in()) {
                    (true, _) => String::new(),
                    (false, Some(true)) => format!(" >{}", hex::encode_upper(a.data)),
                    (false, Some(false)) => format!(" <{}", hex::encode_upper(a.data)),
                    (false, None) => format!(" ={}", hex::encode_upper(a.data)),
                };
                format!(
                    "{time} {card} {name:<18} {} {file:<16} {}{data}",
                    hex::encode_upper(a.header),
                    hex::encode_upper(a.sw),
                )
            }
            Body::Other { sub_type, bytes } => format!(
                "{time} {card} {:<18} {}",
                format!("sub-type {sub_type}"),
                hex::encode_upper(bytes)
            ),
        }
    }

    /// The file a command works on, when it can be told; `-` otherwise.
    fn file(&mut self, card: Option<u32>, a: &Apdu) -> String {
        let [_, ins, p1, p2, _] = a.header;
        let state = self.cards.entry(card).or_default();
        let after_select = state.last_ins == Some(0xA4);
        state.last_ins = Some(ins);
        let shown = match ins {
            0xA4 => {
                let f = match (p1, a.data.len()) {
                    // By AID (UICC).
                    (0x04, _) => Some(format!("AID {}", hex::encode_upper(a.data))),
                    // By FID, or a path whose last FID is the file.
                    (_, n) if n >= 2 && n % 2 == 0 => {
                        let fid = u16::from_be_bytes([a.data[n - 2], a.data[n - 1]]);
                        Some(match file_name(fid) {
                            Some(name) => format!("{fid:04X} {name}"),
                            None => format!("{fid:04X}"),
                        })
                    }
                    _ => None,
                };
                if f.is_some() && selected(a.sw) {
                    state.current = f.clone();
                }
                f
            }
            // Short file identifier in P1 (binary) or P2 (record).
            0xB0 | 0xD6 if p1 & 0x80 != 0 => Some(format!("SFI {:02X}", p1 & 0x1F)),
            0xB2 | 0xDC if p2 >> 3 != 0 => Some(format!("SFI {:02X}", p2 >> 3)),
            0xC0 if after_select => state.current.clone(),
            0xB0 | 0xD6 | 0xB2 | 0xDC | 0xA2 | 0x32 | 0x04 | 0x44 => state.current.clone(),
            _ => None,
        };
        shown.unwrap_or_else(|| "-".into())
    }
}

/// `HH:MM:SS.uuuuuu`, UTC.
fn clock(at: SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

/// What `simpool trace` keeps and where it writes besides its lines.
#[derive(Default)]
pub struct Options {
    /// Only these cards (`--card LIST`); datagrams that name no card (other senders) or no
    /// GSMTAP SIM datagram are left out too. `None`: everything.
    pub cards: Option<CardFilter>,
    /// Also write each datagram kept into this pcap capture (`--pcap FILE`), flushed per record.
    pub pcap: Option<Box<dyn Write + Send>>,
}

/// Whether `datagram` is for a card of `cards`.
pub fn wanted(cards: &CardFilter, datagram: &[u8]) -> bool {
    match gsmtap::decode(datagram) {
        Ok(d) => d
            .card
            .and_then(|n| u16::try_from(n).ok())
            .is_some_and(|n| cards.contains(n)),
        Err(_) => false,
    }
}

/// Receives GSMTAP on `socket` and writes one line per datagram kept to `out` (and, with
/// `opts.pcap`, the datagram to the capture), until an I/O error (stdout closed, e.g.
/// `simpool trace | head`, or the capture's disk full).
pub async fn listen(
    socket: tokio::net::UdpSocket,
    out: &mut impl Write,
    mut opts: Options,
) -> std::io::Result<()> {
    let mut printer = Printer::new();
    let mut buf = vec![0u8; 65_536];
    let local = socket.local_addr()?;
    if let Some(p) = opts.pcap.as_mut() {
        p.write_all(&crate::pcap::file_header())?;
        p.flush()?;
    }
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let d = &buf[..n];
        if opts.cards.as_ref().is_some_and(|c| !wanted(c, d)) {
            continue;
        }
        let at = SystemTime::now();
        writeln!(out, "{}", printer.line(at, d))?;
        out.flush()?;
        if let Some(p) = opts.pcap.as_mut() {
            // To GSMTAP's own port, whatever port this socket has: Wireshark (and pySim-trace,
            // through tshark) decode GSMTAP by port. Flushed per record: a capture cut by
            // Ctrl-C is whole up to its last datagram.
            let to = std::net::SocketAddr::new(local.ip(), gsmtap::PORT);
            p.write_all(&crate::pcap::record(at, from, to, d))?;
            p.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gsmtap::{encode_atr, encode_exchange, MAX_DATAGRAM};
    use std::time::Duration;

    fn dg(card: u16, cmd: &str, resp: &str) -> Vec<u8> {
        let mut b = [0u8; MAX_DATAGRAM];
        let n = encode_exchange(
            card,
            &hex::decode(cmd).unwrap(),
            &hex::decode(resp).unwrap(),
            &mut b,
        )
        .unwrap();
        b[..n].to_vec()
    }

    #[test]
    fn a_gsm_session_line_by_line() {
        let at = UNIX_EPOCH + Duration::from_micros(86_400 * 1_000_000 * 3 + 3_723_000_042);
        let mut p = Printer::new();
        let mut b = [0u8; MAX_DATAGRAM];
        let n = encode_atr(
            18,
            &hex::decode("3B9F96801F878031E073FE211B674A4C753034054BA9").unwrap(),
            &mut b,
        )
        .unwrap();
        let mut lines = vec![p.line(at, &b[..n])];
        for (cmd, resp) in [
            ("A0A40000023F00", "9F17"),
            ("A0A40000027F20", "9F17"),
            ("A0A40000026F07", "9F0F"),
            ("A0C000000F", "000000096F0704001A001A010200009000"),
            ("A0B0000009", "0849061089491063519000"),
            ("A0A40000026F99", "9404"),
            ("A0B0000009", "9400"),
            ("A088000010000102030405060708090A0B0C0D0E0F", "9F0C"),
            ("A0F2000016", "6E00"),
        ] {
            lines.push(p.line(at, &dg(18, cmd, resp)));
        }
        let want = [
            "01:02:03.000042 card  18 ATR                3B9F96801F878031E073FE211B674A4C753034054BA9",
            "01:02:03.000042 card  18 SELECT             A0A4000002 3F00 MF          9F17 >3F00",
            "01:02:03.000042 card  18 SELECT             A0A4000002 7F20 DF.GSM      9F17 >7F20",
            "01:02:03.000042 card  18 SELECT             A0A4000002 6F07 EF.IMSI     9F0F >6F07",
            "01:02:03.000042 card  18 GET RESPONSE       A0C000000F 6F07 EF.IMSI     9000 <000000096F0704001A001A01020000",
            "01:02:03.000042 card  18 READ BINARY        A0B0000009 6F07 EF.IMSI     9000 <084906108949106351",
            "01:02:03.000042 card  18 SELECT             A0A4000002 6F99             9404 >6F99",
            // A failed SELECT leaves the current file as it was.
            "01:02:03.000042 card  18 READ BINARY        A0B0000009 6F07 EF.IMSI     9400",
            "01:02:03.000042 card  18 RUN GSM ALGORITHM  A088000010 -                9F0C >000102030405060708090A0B0C0D0E0F",
            "01:02:03.000042 card  18 STATUS             A0F2000016 -                6E00",
        ];
        assert_eq!(lines, want);
    }

    #[test]
    fn cards_are_kept_apart_and_uicc_names_used() {
        let at = UNIX_EPOCH;
        let mut p = Printer::new();
        p.line(at, &dg(1, "A0A40000026F07", "9F0F"));
        p.line(at, &dg(2, "00A40004023F00", "6112"));
        let l1 = p.line(at, &dg(1, "A0B0000009", "0849061089491063519000"));
        let l2 = p.line(at, &dg(2, "00B0000009", "0849061089491063519000"));
        let sfi = p.line(at, &dg(2, "00B0870009", "0849061089491063519000"));
        let auth = p.line(at, &dg(2, "00880081022233", "6A86"));
        assert!(
            l1.contains("card   1 READ BINARY") && l1.contains(" 6F07 EF.IMSI "),
            "{l1}"
        );
        assert!(
            l2.contains("card   2 READ BINARY") && l2.contains(" 3F00 MF "),
            "{l2}"
        );
        assert!(sfi.contains(" SFI 07 "), "{sfi}");
        assert!(auth.contains(" AUTHENTICATE "), "{auth}");
        // An ATR forgets the selection of that card only.
        let mut b = [0u8; MAX_DATAGRAM];
        let n = encode_atr(2, &[0x3B, 0x00], &mut b).unwrap();
        p.line(at, &b[..n]);
        assert!(p.line(at, &dg(2, "00B0000009", "9000")).contains(" - "));
        assert!(p
            .line(at, &dg(1, "A0B0000009", "9000"))
            .contains(" 6F07 EF.IMSI "));
    }

    #[test]
    fn foreign_and_broken_datagrams_get_a_line_too() {
        let mut p = Printer::new();
        let mut anon = dg(5, "A0F2000016", "9000");
        anon[8..12].fill(0);
        assert!(p.line(UNIX_EPOCH, &anon).contains(" card   ? STATUS "));
        let bad = p.line(UNIX_EPOCH, &[0x02, 0x04, 0x01]);
        assert!(
            bad.contains("not a GSMTAP SIM datagram") && bad.ends_with("020401"),
            "{bad}"
        );
        let mut unknown = dg(5, "80AB000000", "9000");
        unknown[12] = 0;
        assert!(p.line(UNIX_EPOCH, &unknown).contains(" INS AB "));
    }

    #[test]
    fn the_card_filter_keeps_only_datagrams_naming_its_cards() {
        let cards = CardFilter::parse("1-16,18").unwrap();
        assert!(wanted(&cards, &dg(18, "A0F2000016", "9000")));
        assert!(wanted(&cards, &dg(3, "A0F2000016", "9000")));
        assert!(!wanted(&cards, &dg(17, "A0F2000016", "9000")));
        assert!(!wanted(&cards, &dg(256, "A0F2000016", "9000")));
        let mut anon = dg(18, "A0F2000016", "9000");
        anon[8..12].fill(0);
        assert!(!wanted(&cards, &anon), "a sender that names no card");
        assert!(!wanted(&cards, &[0x02, 0x04, 0x01]));
    }
}
