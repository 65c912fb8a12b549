//! What pcscd shows: its reader list (whose index `pySim-read -p` wants) and waiting until a
//! reader shows its new card, through the `pcsc` crate like any application. These calls
//! block: the driver runs them with `spawn_blocking`.

use std::ffi::CString;
use std::time::{Duration, Instant};

use pcsc::{ReaderState, State};
use tokio::sync::watch;

/// How long one wait for pcscd lasts before the cancel flag is looked at again.
const SLICE: Duration = Duration::from_millis(200);

/// pcscd's readers in its order.
pub fn readers() -> Result<Vec<String>, String> {
    let ctx = crate::client::context().map_err(|e| e.to_string())?;
    let names = crate::client::readers(&ctx).map_err(|e| e.to_string())?;
    Ok(names
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .collect())
}

/// Why pcscd did not show the card.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotShown {
    #[error("{0}")]
    Reader(String),
    #[error("interrupted")]
    Cancelled,
}

/// Waits until pcscd shows a card in `name` that answered its reset (present, not mute) with
/// `atr` if given, at most `within`; stops early when `cancel` turns true.
///
/// Called once the daemon says the reader shows the card: vpcd has then polled the new
/// connection, after having seen the old card's gone at an earlier poll (the bridge stays away
/// that long), so a "present" seen now is the new card's.
pub fn wait_present(
    name: &str,
    atr: Option<&[u8]>,
    within: Duration,
    cancel: &watch::Receiver<bool>,
) -> Result<(), NotShown> {
    let ctx = crate::client::context().map_err(|e| NotShown::Reader(e.to_string()))?;
    let cname = CString::new(name).map_err(|_| NotShown::Reader(format!("bad name {name:?}")))?;
    let end = Instant::now() + within;
    let mut rs = [ReaderState::new(cname, State::UNAWARE)];
    loop {
        if *cancel.borrow() {
            return Err(NotShown::Cancelled);
        }
        let left = end.saturating_duration_since(Instant::now());
        match ctx.get_status_change(left.min(SLICE), &mut rs) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(pcsc::Error::UnknownReader) => {
                return Err(NotShown::Reader(format!("pcscd does not list {name:?}")))
            }
            Err(e) => return Err(NotShown::Reader(format!("PC/SC: {e}"))),
        }
        let st = rs[0].event_state();
        let present = st.contains(State::PRESENT) && !st.contains(State::MUTE);
        let same_atr = atr.is_none_or(|a| rs[0].atr() == a);
        if present && same_atr {
            return Ok(());
        }
        let seen = if present {
            format!("pcscd shows ATR {}", hex::encode_upper(rs[0].atr()))
        } else if st.contains(State::MUTE) {
            "pcscd finds the card mute".into()
        } else {
            "pcscd shows no card".into()
        };
        rs[0].sync_current_state();
        if left.is_zero() {
            return Err(NotShown::Reader(format!(
                "{name} shows no card to pcscd within {} s ({seen})",
                within.as_secs()
            )));
        }
    }
}
