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

/// What the card pcscd shows must have.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub atr: Option<Vec<u8>>,
    pub iccid: Option<String>,
}

/// Waits until pcscd shows in `name` the card the daemon put there, at most `within`: present
/// and not mute, with the daemon's ATR and (read through PC/SC) its ICCID, when known; stops
/// early when `cancel` turns true.
///
/// Called once the daemon says the reader shows the card. The ICCID is read because an ATR
/// says little (many cards share one): it proves the reader named is the daemon's reader
/// (a daemon whose readers sit on other vpcd ports than their names say would otherwise run
/// the program on some other card) and that pcscd is not still showing the previous card.
pub fn wait_present(
    name: &str,
    want: &Expect,
    within: Duration,
    cancel: &watch::Receiver<bool>,
) -> Result<(), NotShown> {
    let atr = want.atr.as_deref();
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
        let mut other = None;
        if present && same_atr {
            match (&want.iccid, iccid_in(&ctx, rs[0].name())) {
                (None, _) => return Ok(()),
                (Some(w), Ok(got)) if *w == got => return Ok(()),
                (Some(_), Ok(got)) => other = Some(format!("pcscd shows ICCID {got} there")),
                (Some(_), Err(e)) => other = Some(format!("reading its ICCID: {e}")),
            }
        }
        let seen = if let Some(o) = other {
            o
        } else if present {
            format!("pcscd shows ATR {}", hex::encode_upper(rs[0].atr()))
        } else if st.contains(State::MUTE) {
            "pcscd finds the card mute".into()
        } else {
            "pcscd shows no card".into()
        };
        rs[0].sync_current_state();
        if left.is_zero() {
            return Err(NotShown::Reader(format!(
                "pcscd does not show the card in {name} within {} s ({seen})",
                within.as_secs()
            )));
        }
    }
}

/// The ICCID of the card in reader `name`, read as pySim reads it.
fn iccid_in(ctx: &pcsc::Context, name: &std::ffi::CStr) -> Result<String, String> {
    let card = ctx
        .connect(name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        .map_err(|e| e.to_string())?;
    let r = crate::client::read_identity(&card).map_err(|e| e.to_string());
    // Back at the MF, as after a reset, for the program (a reset would restart the card).
    let _ = crate::client::transmit(&card, &[0xA0, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00]);
    let _ = card.disconnect(pcsc::Disposition::LeaveCard);
    r.map(|(iccid, _)| iccid)
}
