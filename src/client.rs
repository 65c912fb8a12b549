//! The application side of PC/SC (the `pcsc` crate over pcsc-lite): what `simpool read` and the
//! end-to-end tests do to see a pool card through pcscd and vpcd, with pySim-style TPDUs.

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};
use serde::Serialize;

use crate::sim::profile::{decode_iccid, decode_imsi};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("PC/SC: {0} (is pcscd running? for a private one set PCSCLITE_CSOCK_NAME)")]
    Pcsc(#[from] pcsc::Error),
    #[error("{what}: card answered {}", hex::encode_upper(.sw))]
    Status { what: &'static str, sw: Vec<u8> },
}

#[derive(Debug, Clone, Serialize)]
pub struct ReaderReport {
    pub reader: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iccid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imsi: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn context() -> Result<Context, ClientError> {
    Ok(Context::establish(Scope::User)?)
}

pub fn readers(ctx: &Context) -> Result<Vec<CString>, ClientError> {
    match ctx.list_readers_owned() {
        Ok(r) => Ok(r),
        Err(pcsc::Error::NoReadersAvailable) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until every reader in `names` shows a card, or `within` has passed (event-driven:
/// SCardGetStatusChange, not polling).
pub fn wait_for_cards(
    ctx: &Context,
    names: &[CString],
    within: Duration,
) -> Result<bool, ClientError> {
    let end = Instant::now() + within;
    let mut states: Vec<ReaderState> = names
        .iter()
        .map(|n| ReaderState::new(n.clone(), State::UNAWARE))
        .collect();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match ctx.get_status_change(left, &mut states) {
            Ok(()) => {}
            Err(pcsc::Error::Timeout) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        if states
            .iter()
            .all(|s| s.event_state().contains(State::PRESENT))
        {
            return Ok(true);
        }
        for s in &mut states {
            s.sync_current_state();
        }
        if left.is_zero() {
            return Ok(false);
        }
    }
}

/// Sends one command, answers `data ‖ SW`.
pub fn transmit(card: &pcsc::Card, cmd: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut buf = [0u8; pcsc::MAX_BUFFER_SIZE];
    Ok(card.transmit(cmd, &mut buf)?.to_vec())
}

fn expect_sw1(what: &'static str, r: &[u8], ok: &[u8]) -> Result<(), ClientError> {
    if r.len() >= 2 && ok.contains(&r[r.len() - 2]) {
        Ok(())
    } else {
        Err(ClientError::Status {
            what,
            sw: r.to_vec(),
        })
    }
}

fn read_binary(card: &pcsc::Card, what: &'static str, len: u8) -> Result<Vec<u8>, ClientError> {
    let r = transmit(card, &[0xA0, 0xB0, 0x00, 0x00, len])?;
    if r.len() < 2 || r[r.len() - 2..] != [0x90, 0x00] {
        return Err(ClientError::Status { what, sw: r });
    }
    Ok(r[..r.len() - 2].to_vec())
}

/// ICCID and IMSI as pySim reads them: SELECT by FID (`9Fxx` expected), READ BINARY.
pub fn read_identity(card: &pcsc::Card) -> Result<(String, Option<String>), ClientError> {
    let sel = |fid: [u8; 2], what| {
        let r = transmit(card, &[0xA0, 0xA4, 0x00, 0x00, 0x02, fid[0], fid[1]])?;
        expect_sw1(what, &r, &[0x9F, 0x61, 0x90])
    };
    sel([0x3F, 0x00], "SELECT MF")?;
    sel([0x2F, 0xE2], "SELECT EF.ICCID")?;
    let iccid = decode_iccid(&read_binary(card, "READ BINARY EF.ICCID", 10)?);
    sel([0x7F, 0x20], "SELECT DF.GSM")?;
    sel([0x6F, 0x07], "SELECT EF.IMSI")?;
    let imsi = decode_imsi(&read_binary(card, "READ BINARY EF.IMSI", 9)?);
    Ok((iccid, imsi))
}

/// Connects to `reader` and reads ATR, ICCID and IMSI.
pub fn report(ctx: &Context, reader: &CStr) -> ReaderReport {
    let mut rep = ReaderReport {
        reader: reader.to_string_lossy().into_owned(),
        atr: None,
        iccid: None,
        imsi: None,
        error: None,
    };
    let card = match ctx.connect(reader, ShareMode::Shared, Protocols::ANY) {
        Ok(c) => c,
        Err(pcsc::Error::NoSmartcard) => {
            rep.error = Some("no card".into());
            return rep;
        }
        Err(e) => {
            rep.error = Some(ClientError::from(e).to_string());
            return rep;
        }
    };
    match card.status2_owned() {
        Ok(st) => rep.atr = Some(hex::encode_upper(st.atr())),
        Err(e) => rep.error = Some(e.to_string()),
    }
    match read_identity(&card) {
        Ok((iccid, imsi)) => {
            rep.iccid = Some(iccid);
            rep.imsi = imsi;
        }
        Err(e) => rep.error = Some(e.to_string()),
    }
    let _ = card.disconnect(Disposition::LeaveCard);
    rep
}
