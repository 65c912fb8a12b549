//! The application side of PC/SC (the `pcsc` crate over pcsc-lite): what `simpool read` and the
//! end-to-end tests do to see a pool card through pcscd and vpcd, with pySim-style TPDUs.

use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

use pcsc::{Context, Disposition, Protocols, ReaderState, Scope, ShareMode, State};

use crate::identity;
use crate::rows::ReadRow;
use crate::values::Atr;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("PC/SC: {0} (is pcscd running? for a private one set PCSCLITE_CSOCK_NAME)")]
    Pcsc(#[from] pcsc::Error),
    #[error(transparent)]
    Read(#[from] identity::ReadError<pcsc::Error>),
    #[error("the card has no EF.ICCID")]
    NoIccid,
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

/// ICCID and IMSI as pySim reads them (the one sequence of [`crate::identity`]).
pub fn read_identity(card: &pcsc::Card) -> Result<(String, Option<String>), ClientError> {
    let mut buf = [0u8; pcsc::MAX_BUFFER_SIZE];
    let files = identity::read_blocking(|cmd| card.transmit(cmd, &mut buf).map(<[u8]>::to_vec))?;
    Ok((files.iccid.ok_or(ClientError::NoIccid)?, files.imsi))
}

/// Connects to `reader` and reads ATR, ICCID and IMSI.
pub fn report(ctx: &Context, reader: &CStr) -> ReadRow {
    let mut rep = ReadRow {
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
        Ok(st) => rep.atr = Some(Atr::from(st.atr())),
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
