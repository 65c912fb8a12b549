//! A card's identity — ICCID and IMSI — as every part of simpool reads it: the files' BCD
//! codecs (EF.ICCID, EF.IMSI of GSM 11.11 / 3GPP 51.011), and the one command sequence that
//! reads them (the vendor manual's sessions 1 and 2, as pySim does), as a sans-IO state
//! machine. The daemon drives it through a card lease, `simpool read` through PC/SC; the
//! simulator encodes its files with the same codecs.

/// Why reading stopped. `E` is the transport's error (a lease's, PC/SC's).
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E: std::error::Error> {
    #[error("{what}: {error}")]
    Exchange { what: &'static str, error: E },
    #[error("{what}: card answered {}", hex::encode_upper(.sw))]
    Status { what: &'static str, sw: Vec<u8> },
}

/// ICCID and IMSI read from a card (either absent when its file is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Files {
    pub iccid: Option<String>,
    pub imsi: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    SelectMf,
    SelectIccid,
    ReadIccid { retried: bool },
    SelectGsm,
    SelectDcs1800,
    SelectImsi,
    ReadImsi { retried: bool },
    Done,
}

/// The reading sequence: ask [`Reading::command`] what to send, feed the card's answer
/// (`data ‖ SW1 SW2`) to [`Reading::answer`], until there is nothing more to send. SELECT by
/// FID (`9Fxx`, `61xx` or `9000` is success; a missing file leaves its field empty), READ
/// BINARY once more with the length a `67xx`/`6Cxx` names.
#[derive(Debug, Clone)]
pub struct Reading {
    step: Step,
    /// The length to read next (set by a `67xx`/`6Cxx` retry).
    len: u8,
    files: Files,
}

impl Default for Reading {
    fn default() -> Self {
        Reading::new()
    }
}

impl Reading {
    pub fn new() -> Reading {
        Reading {
            step: Step::SelectMf,
            len: 0,
            files: Files::default(),
        }
    }

    /// What to send next, named for errors; `None` when done.
    pub fn command(&self) -> Option<(&'static str, Vec<u8>)> {
        let select = |fid: [u8; 2]| vec![0xA0, 0xA4, 0x00, 0x00, 0x02, fid[0], fid[1]];
        let read = |len: u8| vec![0xA0, 0xB0, 0x00, 0x00, len];
        Some(match self.step {
            Step::SelectMf => ("SELECT MF", select([0x3F, 0x00])),
            Step::SelectIccid => ("SELECT EF.ICCID", select([0x2F, 0xE2])),
            Step::ReadIccid { .. } => ("READ BINARY EF.ICCID", read(self.len)),
            Step::SelectGsm => ("SELECT DF.GSM", select([0x7F, 0x20])),
            Step::SelectDcs1800 => ("SELECT DF.DCS1800", select([0x7F, 0x21])),
            Step::SelectImsi => ("SELECT EF.IMSI", select([0x6F, 0x07])),
            Step::ReadImsi { .. } => ("READ BINARY EF.IMSI", read(self.len)),
            Step::Done => return None,
        })
    }

    /// The card's answer to the last command.
    pub fn answer<E: std::error::Error>(&mut self, resp: &[u8]) -> Result<(), ReadError<E>> {
        let what = self.command().map_or("", |(w, _)| w);
        let sw = match resp {
            [.., a, b] => [*a, *b],
            _ => {
                return Err(ReadError::Status {
                    what,
                    sw: resp.to_vec(),
                })
            }
        };
        let selected = matches!(sw[0], 0x9F | 0x61 | 0x90);
        self.step = match self.step {
            Step::SelectMf | Step::SelectIccid if !selected => Step::SelectGsm,
            Step::SelectMf => Step::SelectIccid,
            Step::SelectIccid => {
                self.len = 10;
                Step::ReadIccid { retried: false }
            }
            Step::ReadIccid { retried } => match self.read(what, resp, sw, retried)? {
                Some(data) => {
                    self.files.iccid = Some(decode_iccid(data));
                    Step::SelectGsm
                }
                None => Step::ReadIccid { retried: true },
            },
            Step::SelectGsm if selected => Step::SelectImsi,
            Step::SelectGsm => Step::SelectDcs1800,
            Step::SelectDcs1800 if selected => Step::SelectImsi,
            Step::SelectDcs1800 => Step::Done,
            Step::SelectImsi if selected => {
                self.len = 9;
                Step::ReadImsi { retried: false }
            }
            Step::SelectImsi => Step::Done,
            // PIN1 (CHV1) enabled and not verified: the IMSI is hidden, the ICCID still shown.
            Step::ReadImsi { .. } if matches!(sw, [0x98, 0x04] | [0x69, 0x82]) => Step::Done,
            Step::ReadImsi { retried } => match self.read(what, resp, sw, retried)? {
                Some(data) => {
                    self.files.imsi = decode_imsi(data);
                    Step::Done
                }
                None => Step::ReadImsi { retried: true },
            },
            Step::Done => Step::Done,
        };
        Ok(())
    }

    /// A READ BINARY's data, or `None` to read again with the length the card named.
    fn read<'a, E: std::error::Error>(
        &mut self,
        what: &'static str,
        resp: &'a [u8],
        sw: [u8; 2],
        retried: bool,
    ) -> Result<Option<&'a [u8]>, ReadError<E>> {
        if matches!(sw[0], 0x67 | 0x6C) && sw[1] != 0 && !retried {
            self.len = sw[1];
            return Ok(None);
        }
        if sw != [0x90, 0x00] {
            return Err(ReadError::Status {
                what,
                sw: sw.to_vec(),
            });
        }
        Ok(Some(&resp[..resp.len() - 2]))
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// What was read (call once [`Reading::command`] answers `None`).
    pub fn files(self) -> Files {
        self.files
    }
}

/// Runs the sequence through a blocking `transmit` (PC/SC).
pub fn read_blocking<E: std::error::Error>(
    mut transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<Files, ReadError<E>> {
    let mut r = Reading::new();
    while let Some((what, cmd)) = r.command() {
        let resp = transmit(&cmd).map_err(|error| ReadError::Exchange { what, error })?;
        r.answer(&resp)?;
    }
    Ok(r.files())
}

fn digit_values(digits: &str) -> impl Iterator<Item = u8> + '_ {
    digits.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0')
}

/// EF.ICCID: nibble-swapped BCD, `F`-padded; non-digits are ignored, at most 20 digits used.
pub fn encode_iccid(digits: &str) -> [u8; 10] {
    let mut out = [0xFF; 10];
    for (i, d) in digit_values(digits).take(20).enumerate() {
        let b = &mut out[i / 2];
        *b = if i % 2 == 0 {
            (*b & 0xF0) | d
        } else {
            (*b & 0x0F) | (d << 4)
        };
    }
    out
}

/// Decodes EF.ICCID (or any nibble-swapped BCD); `F` nibbles are skipped, `A`–`E` shown as
/// hex letters. Never panics.
pub fn decode_iccid(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| [b & 0x0F, b >> 4])
        .filter(|&n| n != 0x0F)
        .map(|n| char::from_digit(u32::from(n), 16).map_or('?', |c| c.to_ascii_uppercase()))
        .collect()
}

/// EF.IMSI (51.011 §10.3.2): length byte, then the parity nibble (`9` odd, `1` even) with the
/// first digit, then the other digits nibble-swapped, `F`-padded to 9 bytes. Non-digits are
/// ignored, at most 15 digits used.
pub fn encode_imsi(digits: &str) -> [u8; 9] {
    let d: Vec<u8> = digit_values(digits).take(15).collect();
    let mut out = [0xFF; 9];
    if d.is_empty() {
        return out;
    }
    out[0] = (d.len() / 2 + 1) as u8;
    let parity = if d.len() % 2 == 1 { 0x9 } else { 0x1 };
    // Nibble 0 is the parity; digit k goes to nibble k+1.
    let mut nibbles = vec![parity];
    nibbles.extend_from_slice(&d);
    for (i, pair) in nibbles.chunks(2).enumerate() {
        let hi = pair.get(1).copied().unwrap_or(0x0F);
        out[1 + i] = (hi << 4) | pair[0];
    }
    out
}

/// Decodes EF.IMSI; `None` for an unset file (length `00`/`FF`), a length beyond the data,
/// no digits, or a non-digit nibble. `F` filler is skipped. Never panics.
pub fn decode_imsi(bytes: &[u8]) -> Option<String> {
    let (&len, rest) = bytes.split_first()?;
    let len = len as usize;
    if len == 0 || len > 8 || rest.len() < len {
        return None;
    }
    let mut s = String::new();
    for (i, n) in rest[..len]
        .iter()
        .flat_map(|b| [b & 0x0F, b >> 4])
        .enumerate()
    {
        // Nibble 0 is the parity/type nibble.
        if i == 0 || n == 0x0F {
            continue;
        }
        if n > 9 {
            return None;
        }
        s.push(char::from(b'0' + n));
    }
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("no")]
    struct No;

    /// Answers as a GSM SIM does, from a table of (command, answer).
    fn card<'a>(table: &'a [(&'a str, &'a str)]) -> impl FnMut(&[u8]) -> Result<Vec<u8>, No> + 'a {
        move |cmd| {
            let c = hex::encode_upper(cmd);
            let a = table
                .iter()
                .find(|(k, _)| *k == c)
                .map_or("6A82", |(_, v)| *v);
            Ok(hex::decode(a).unwrap())
        }
    }

    #[test]
    fn reads_iccid_and_imsi_as_pysim_does() {
        let iccid = hex::encode_upper(encode_iccid("89860043191482190636"));
        let imsi = hex::encode_upper(encode_imsi("460019894013615"));
        let table = [
            ("A0A40000023F00", "9F17"),
            ("A0A40000022FE2", "9F0F"),
            ("A0B000000A", &format!("{iccid}9000")[..]),
            ("A0A40000027F20", "9F17"),
            ("A0A40000026F07", "9F0F"),
            ("A0B0000009", &format!("{imsi}9000")[..]),
        ];
        let f = read_blocking(card(&table)).unwrap();
        assert_eq!(f.iccid.as_deref(), Some("89860043191482190636"));
        assert_eq!(f.imsi.as_deref(), Some("460019894013615"));
    }

    #[test]
    fn missing_files_a_dcs1800_card_and_a_length_retry() {
        // A 13-digit IMSI fits in 8 bytes: the card names that length.
        let imsi = hex::encode_upper(&encode_imsi("4600198940136")[..8]);
        let table = [
            ("A0A40000023F00", "9F17"),
            ("A0A40000027F21", "9F17"),
            ("A0A40000026F07", "9F0F"),
            ("A0B0000009", "6708"),
            ("A0B0000008", &format!("{imsi}9000")[..]),
        ];
        let f = read_blocking(card(&table)).unwrap();
        assert_eq!(f.iccid, None, "no EF.ICCID");
        assert_eq!(f.imsi.as_deref(), Some("4600198940136"));
        // A READ BINARY that fails is an error naming it.
        let table = [
            ("A0A40000023F00", "9F17"),
            ("A0A40000022FE2", "9F0F"),
            ("A0B000000A", "9804"),
        ];
        let e = read_blocking(card(&table)).unwrap_err().to_string();
        assert_eq!(e, "READ BINARY EF.ICCID: card answered 9804");
        // PIN1 enabled: the ICCID, no IMSI, no error.
        let iccid = hex::encode_upper(encode_iccid("89860043191482190636"));
        let table = [
            ("A0A40000023F00", "9F17"),
            ("A0A40000022FE2", "9F0F"),
            ("A0B000000A", &format!("{iccid}9000")[..]),
            ("A0A40000027F20", "9F17"),
            ("A0A40000026F07", "9F0F"),
            ("A0B0000009", "9804"),
        ];
        let f = read_blocking(card(&table)).unwrap();
        assert_eq!(f.iccid.as_deref(), Some("89860043191482190636"));
        assert_eq!(f.imsi, None);
        // So is an answer too short to hold a status word.
        let e = read_blocking(|_: &[u8]| Ok::<_, No>(vec![0x90])).unwrap_err();
        assert_eq!(e.to_string(), "SELECT MF: card answered 90");
    }
}
