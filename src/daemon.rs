//! The daemon's shared state: what `serve` assembles and the control API, the page and the
//! metrics read. The pool link, the card registry, the readers, and the state file that keeps
//! runtime bindings across restarts (its load and save).
//!
//! `serve` builds a [`Daemon`] and starts the tasks around it; `control` and `metrics` only
//! take an `Arc<Daemon>`. Nothing here imports `serve` or `control`, so there is no circle.

mod reserve;

pub use reserve::{ReserveFailure, EXPIRY_TICK};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bridge::{BindError, Binding, ReaderHandle, ReaderStatus};
use crate::cards::Cards;
use crate::pool::{Link, LinkState};
use crate::values::PoolAddr;

/// What the control API and the front ends share.
pub struct Daemon {
    pub link: Link,
    /// The pool as configured (`sim`, or HOST:PORT; the link dials the simulator's own port).
    pub pool_address: PoolAddr,
    pub cards: Cards,
    pub readers: Vec<ReaderHandle>,
    pub command_timeout: Duration,
    /// GSMTAP datagrams sent/dropped, when tracing is on.
    pub gsmtap: Option<Arc<crate::gsmtap::Counters>>,
    state: Option<PathBuf>,
    /// The bindings the command line/config asked for at start-up (saved with the state, so a
    /// changed command line wins over an old state file).
    startup: Vec<Option<Binding>>,
    save: tokio::sync::Mutex<()>,
}

/// The state file's content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedState {
    pub version: u32,
    pub startup: Vec<Option<Binding>>,
    pub readers: Vec<Option<Binding>>,
    /// The user each reader's binding was made for (as `readers`).
    #[serde(default)]
    pub reader_users: Vec<Option<String>>,
    /// The reservations, and the next id to give.
    #[serde(default)]
    pub reservations: Vec<crate::reservations::Reservation>,
    #[serde(default)]
    pub next_reservation: u64,
}

impl Daemon {
    /// The daemon's state around a running link, card registry and readers. `startup` are the
    /// bindings the command line or configuration asked for (saved with the state).
    pub fn new(
        pool_address: PoolAddr,
        cards: Cards,
        readers: Vec<ReaderHandle>,
        command_timeout: Duration,
        gsmtap: Option<Arc<crate::gsmtap::Counters>>,
        state: Option<PathBuf>,
        startup: Vec<Option<Binding>>,
    ) -> Daemon {
        Daemon {
            link: cards.link().clone(),
            pool_address,
            cards,
            readers,
            command_timeout,
            gsmtap,
            state,
            startup,
            save: tokio::sync::Mutex::new(()),
        }
    }

    pub fn reader(&self, i: usize) -> Option<&ReaderHandle> {
        self.readers.get(i)
    }

    /// Binds reader `i` and records the change in the state file.
    pub async fn bind(&self, i: usize, binding: Option<Binding>) -> Result<(), BindError> {
        let r = self.readers.get(i).ok_or(BindError::Stopped(i as u16))?;
        r.bind(binding).await?;
        self.save_state().await;
        Ok(())
    }

    /// The pool as the page and the API name it: "built-in simulated pool" for `sim`, else its
    /// address.
    pub fn pool_name(&self) -> String {
        match &self.pool_address {
            PoolAddr::Sim => "built-in simulated pool".into(),
            PoolAddr::Tcp(a) => a.clone(),
        }
    }

    pub fn link_up(&self) -> bool {
        matches!(self.link.state(), LinkState::Up { .. })
    }

    async fn save_state(&self) {
        let Some(path) = &self.state else { return };
        let _one = self.save.lock().await;
        let statuses = self.reader_statuses();
        let st = SavedState {
            version: 1,
            startup: self.startup.clone(),
            readers: statuses.iter().map(|s| s.binding.clone()).collect(),
            reader_users: statuses.iter().map(|s| s.user.clone()).collect(),
            reservations: self.cards.reservations(),
            next_reservation: self.cards.read_book(|b| b.next_id()),
        };
        match write_atomically(path, &st) {
            Ok(()) => log::debug!("state saved to {}", path.display()),
            Err(e) => log::warn!("cannot save the state to {}: {e}", path.display()),
        }
    }

    pub fn reader_statuses(&self) -> Vec<ReaderStatus> {
        self.readers.iter().map(ReaderHandle::status).collect()
    }
}

/// Writes `st` to a temporary file beside `path` and renames it over `path`: a crash leaves the
/// old state or the new one, never half of one.
fn write_atomically(path: &Path, st: &SavedState) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(st).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Whether the state file can be saved where it is named: its directory exists and takes the
/// temporary file a save renames over it. Checked at start-up and by `--check`, so that a
/// wrong path is a configuration error at once, not a warning at the first bind. Leaves
/// nothing behind.
pub fn check_state_path(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let what = format!("state file {}", path.display());
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{what}: its directory {} does not exist",
                dir.display()
            ))
        }
        Err(e) => return Err(format!("{what}: directory {}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => {
            return Err(format!("{what}: {} is not a directory", dir.display()))
        }
        Ok(_) => {}
    }
    if path.is_dir() {
        return Err(format!("{what} is a directory"));
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    match std::fs::File::create(&tmp) {
        Ok(_) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => Err(format!("{what}: cannot write in {}: {e}", dir.display())),
    }
}

/// Reads the state file; a missing, unreadable or corrupt one is logged and ignored.
pub fn load_state(path: &Path) -> Option<SavedState> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!("state file {}: {e}; ignored", path.display());
            return None;
        }
    };
    match serde_json::from_slice::<SavedState>(&text) {
        Ok(s) if s.version == 1 => Some(s),
        Ok(s) => {
            log::warn!(
                "state file {}: version {} unknown; ignored",
                path.display(),
                s.version
            );
            None
        }
        Err(e) => {
            log::warn!("state file {}: corrupt ({e}); ignored", path.display());
            None
        }
    }
}

/// The bindings to start with: the saved ones if the start-up bindings are those the state was
/// saved under, else the start-up ones.
pub fn initial_bindings(
    startup: &[Option<Binding>],
    saved: Option<SavedState>,
) -> Vec<Option<Binding>> {
    match saved {
        Some(s) if s.startup == startup => {
            let mut b = s.readers;
            b.resize(startup.len(), None);
            log::info!("restored the runtime bindings from the state file");
            b
        }
        Some(_) => {
            log::info!(
                "the start-up bindings changed since the state was saved: using the new ones"
            );
            startup.to_vec()
        }
        None => startup.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::CardNo;

    #[test]
    fn state_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("simpool-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let st = SavedState {
            version: 1,
            startup: vec![Some(Binding::Card(CardNo::of(18))), None],
            readers: vec![
                Some(Binding::Card(CardNo::of(18))),
                Some(Binding::Iccid("89".into())),
            ],
            ..SavedState::default()
        };
        write_atomically(&path, &st).unwrap();
        assert_eq!(load_state(&path), Some(st));
        let restored = initial_bindings(
            &[Some(Binding::Card(CardNo::of(18))), None],
            load_state(&path),
        );
        assert_eq!(restored[1], Some(Binding::Iccid("89".into())));
        // A changed command line wins.
        let fresh = initial_bindings(
            &[Some(Binding::Card(CardNo::of(2))), None],
            load_state(&path),
        );
        assert_eq!(fresh, vec![Some(Binding::Card(CardNo::of(2))), None]);
        std::fs::write(&path, b"{\"version\":1,\"startup\":[{\"card\":").unwrap();
        assert_eq!(load_state(&path), None);
        assert_eq!(load_state(&dir.join("missing.json")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
