//! Reading a card's ATR, ICCID and IMSI with the manual's command sequences (sessions 1 and 2),
//! through any exchange function (a lease, or a card of a command's own link); the front-panel grid.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::pool::{Card, ExchangeError, PoolError, SlotState};
use crate::sim::profile::{decode_iccid, decode_imsi};

/// One scanned card. Every key is always present (`null` where unknown): tools rely on it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CardReport {
    pub card: u16,
    pub state: SlotState,
    pub atr: Option<String>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("start failed: {0}")]
    Start(PoolError),
    #[error("{what}: {error}")]
    Exchange {
        what: &'static str,
        error: ExchangeError,
    },
    #[error("{what}: card answered {}", hex::encode_upper(.sw))]
    Status { what: &'static str, sw: Vec<u8> },
}

/// Identity read from one card.
#[derive(Debug, Default, Clone)]
pub struct Identity {
    pub atr: Vec<u8>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
}

/// Runs the manual's read sequences through `transmit` (one exchange per call).
struct Reader<F> {
    transmit: F,
}

impl<F, Fut> Reader<F>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, ExchangeError>>,
{
    async fn run(&self, what: &'static str, cmd: &[u8]) -> Result<Vec<u8>, ReadError> {
        (self.transmit)(cmd.to_vec())
            .await
            .map_err(|error| ReadError::Exchange { what, error })
    }

    /// SELECT by FID; success is `9Fxx` (GSM) or `61xx`/`9000`.
    async fn select(&self, what: &'static str, fid: [u8; 2]) -> Result<bool, ReadError> {
        let r = self
            .run(what, &[0xA0, 0xA4, 0x00, 0x00, 0x02, fid[0], fid[1]])
            .await?;
        Ok(matches!(r[r.len() - 2], 0x9F | 0x61 | 0x90))
    }

    /// READ BINARY of `len` bytes, retrying once with the length a `67xx`/`6Cxx` names.
    async fn read_binary(&self, what: &'static str, len: u8) -> Result<Vec<u8>, ReadError> {
        let mut r = self.run(what, &[0xA0, 0xB0, 0x00, 0x00, len]).await?;
        let n = r.len();
        if matches!(r[n - 2], 0x67 | 0x6C) && r[n - 1] != 0 {
            r = self.run(what, &[0xA0, 0xB0, 0x00, 0x00, r[n - 1]]).await?;
        }
        let n = r.len();
        if r[n - 2..] != [0x90, 0x00] {
            return Err(ReadError::Status {
                what,
                sw: r[n - 2..].to_vec(),
            });
        }
        r.truncate(n - 2);
        Ok(r)
    }
}

/// Reads ICCID and IMSI of a started card (whose ATR is `atr`) through `transmit`. A missing
/// file leaves that field empty.
pub async fn read_files<F, Fut>(atr: Vec<u8>, transmit: F) -> Result<Identity, ReadError>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<Vec<u8>, ExchangeError>>,
{
    let r = Reader { transmit };
    let mut id = Identity {
        atr,
        ..Default::default()
    };
    if r.select("SELECT MF", [0x3F, 0x00]).await?
        && r.select("SELECT EF.ICCID", [0x2F, 0xE2]).await?
    {
        id.iccid = Some(decode_iccid(
            &r.read_binary("READ BINARY EF.ICCID", 10).await?,
        ));
    }
    let gsm = r.select("SELECT DF.GSM", [0x7F, 0x20]).await?
        || r.select("SELECT DF.DCS1800", [0x7F, 0x21]).await?;
    if gsm && r.select("SELECT EF.IMSI", [0x6F, 0x07]).await? {
        id.imsi = decode_imsi(&r.read_binary("READ BINARY EF.IMSI", 9).await?);
    }
    Ok(id)
}

/// Starts `card` and reads its ATR, ICCID and IMSI (a one-shot command's own pool connection;
/// the daemon goes through [`crate::cards::Lease::read_identity`]).
pub async fn read_identity(card: &Card, deadline: Duration) -> Result<Identity, ReadError> {
    let atr = card.start().await.map_err(ReadError::Start)?;
    read_files(
        atr,
        |cmd| async move { card.transmit(&cmd, deadline).await },
    )
    .await
}

/// A 16×16 grid like the front panel: one character per slot.
pub fn grid(states: &[SlotState]) -> String {
    let mut s = String::from("card  +0 +1 +2 +3 +4 +5 +6 +7 +8 +9 10 11 12 13 14 15\n");
    for (row, chunk) in states.chunks(16).enumerate() {
        s.push_str(&format!("{:>4}", row * 16 + 1));
        for st in chunk {
            s.push_str("  ");
            s.push(symbol(*st));
        }
        s.push('\n');
    }
    let count = |f: fn(&SlotState) -> bool| states.iter().filter(|s| f(s)).count();
    s.push_str(&format!(
        "legend: . empty  o inserted  * working  ! abnormal  ? unknown\n\
         cards: {} inserted ({} working, {} idle, {} abnormal), {} empty slots\n",
        count(|s| s.has_card()),
        count(|s| *s == SlotState::Working),
        count(|s| *s == SlotState::Inserted),
        count(|s| *s == SlotState::Abnormal),
        count(|s| !s.has_card()),
    ));
    s
}

fn symbol(s: SlotState) -> char {
    match s {
        SlotState::Empty => '.',
        SlotState::Inserted => 'o',
        SlotState::Working => '*',
        SlotState::Abnormal => '!',
        SlotState::Unknown(_) => '?',
    }
}
