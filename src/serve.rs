//! `simpool serve`: the daemon. One pool link, the card registry with its leases, N vpcd readers
//! whose bindings change at runtime, the control API, and the state file that keeps runtime
//! bindings across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bridge::{BindError, Binding, Reader, ReaderConfig, ReaderHandle, ReaderStatus};
use crate::cards::{Cards, Observer};
use crate::config::ServeConfig;
use crate::pool::{Link, LinkOptions, LinkState};
use crate::sim::profile::CardsFile;
use crate::sim::{Faults, SimPool};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the simulated pool: {0}")]
    Sim(String),
    #[error("control API: {0}")]
    Control(String),
    #[error(transparent)]
    Remsim(#[from] crate::remsim::bank::BankError),
    #[error("GSMTAP socket: {0}")]
    Gsmtap(std::io::Error),
}

/// A running daemon.
pub struct Running {
    pub daemon: Arc<Daemon>,
    /// The in-process simulator of `--pool sim`.
    pub sim: Option<SimPool>,
    /// Where the control API listens, if on.
    pub control: Option<std::net::SocketAddr>,
    /// The osmo-remsim bank, if on.
    pub bank: Option<crate::remsim::Bank>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn link(&self) -> &Link {
        &self.daemon.link
    }

    /// Stops every reader (their vpcd connections close: pcscd sees the cards removed).
    pub fn shutdown(self) {
        if let Some(b) = self.bank {
            b.shutdown();
        }
        for t in &self.tasks {
            t.abort();
        }
        self.daemon.link.close();
    }
}

/// What the control API and the front ends share.
pub struct Daemon {
    pub link: Link,
    /// The pool as configured: `sim` or HOST:PORT (the link dials the simulator's own port).
    pub pool_address: String,
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
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedState {
    pub version: u32,
    pub startup: Vec<Option<Binding>>,
    pub readers: Vec<Option<Binding>>,
}

impl Daemon {
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
    pub fn pool_name(&self) -> &str {
        if self.pool_address == "sim" {
            "built-in simulated pool"
        } else {
            &self.pool_address
        }
    }

    pub fn link_up(&self) -> bool {
        matches!(self.link.state(), LinkState::Up { .. })
    }

    async fn save_state(&self) {
        let Some(path) = &self.state else { return };
        let _one = self.save.lock().await;
        let st = SavedState {
            version: 1,
            startup: self.startup.clone(),
            readers: self.readers.iter().map(|r| r.status().binding).collect(),
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
fn initial_bindings(
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

/// Starts the daemon: pool link, readers, control API.
pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    start_with(cfg, Vec::new()).await
}

/// As [`start`], with observers on the exchange path (GSMTAP, tests).
pub async fn start_with(
    cfg: ServeConfig,
    observers: Vec<Arc<dyn Observer>>,
) -> Result<Running, ServeError> {
    let (addr, sim) = if cfg.pool == "sim" {
        let cards = match &cfg.cards {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ServeError::Sim(format!("{}: {e}", p.display())))?;
                CardsFile::from_toml(&text)
                    .map_err(|e| ServeError::Sim(format!("{}: {e}", p.display())))?
            }
            None => CardsFile::default_set(),
        };
        let sim = SimPool::start("127.0.0.1:0", cards, Faults::default())
            .await
            .map_err(|e| ServeError::Sim(e.to_string()))?;
        log::info!("built-in simulated pool on {}", sim.addr());
        (sim.addr().to_string(), Some(sim))
    } else {
        (cfg.pool.clone(), None)
    };
    // The control API's socket first: a daemon that cannot offer it should not half-start.
    let listener = match &cfg.control {
        Some(a) => Some(
            crate::control::bind(a, cfg.control_token.as_deref())
                .await
                .map_err(|e| ServeError::Control(e.to_string()))?,
        ),
        None => None,
    };
    let link = Link::spawn(
        &addr,
        LinkOptions {
            reply_timeout: cfg.reply_timeout,
            keepalive: Some(cfg.keepalive),
            health: cfg.health.clone(),
            ..LinkOptions::default()
        },
    );
    let mut observers = observers;
    let gsmtap = match &cfg.gsmtap {
        Some(g) => {
            let tracer =
                crate::gsmtap::Tracer::new(g.dest, g.cards.clone()).map_err(ServeError::Gsmtap)?;
            log::info!("GSMTAP to {}, cards {}", g.dest, g.cards);
            let counters = tracer.counters();
            observers.push(Arc::new(tracer));
            Some(counters)
        }
        None => None,
    };
    let cards = Cards::new(link.clone(), observers);
    // The bank's listener before the readers: a bank that cannot listen should not half-start.
    let bank = match &cfg.remsim {
        Some(r) => Some(
            crate::remsim::Bank::start(
                crate::remsim::BankConfig {
                    server: r.server.clone(),
                    bank_id: r.bank_id,
                    listen: r.listen.clone(),
                    command_timeout: cfg.command_timeout,
                    name: crate::remsim::probe::bank_name(r.bank_id),
                },
                cards.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let startup: Vec<Option<Binding>> = cfg.readers.iter().map(|r| r.binding.clone()).collect();
    let bindings = initial_bindings(&startup, cfg.state.as_deref().and_then(load_state));
    let mut readers = Vec::new();
    let mut tasks = Vec::new();
    for (i, (spec, binding)) in cfg.readers.iter().zip(bindings).enumerate() {
        let (reader, handle) = Reader::new(
            i as u16,
            cards.clone(),
            ReaderConfig {
                vpcd: spec.vpcd.clone(),
                command_timeout: cfg.command_timeout,
                reset: cfg.reset,
                quickack: cfg.quickack,
                retry: Duration::from_millis(500),
            },
            binding.clone(),
        );
        match &binding {
            Some(b) => log::info!("{}: bound to {b}", reader.name),
            None => log::info!("{}: no card bound", reader.name),
        }
        readers.push(handle);
        tasks.push(tokio::spawn(reader.run()));
    }
    let daemon = Arc::new(Daemon {
        link,
        pool_address: cfg.pool.clone(),
        cards,
        readers,
        command_timeout: cfg.command_timeout,
        gsmtap,
        state: cfg.state.clone(),
        startup,
        save: tokio::sync::Mutex::new(()),
    });
    let mut control = None;
    if let Some(listener) = listener {
        control = Some(listener.local_addr());
        log::info!("control API on http://{}", listener.local_addr());
        tasks.push(tokio::spawn(listener.serve(daemon.clone())));
    }
    Ok(Running {
        daemon,
        sim,
        control,
        bank,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_corruption() {
        let dir = std::env::temp_dir().join(format!("simpool-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let st = SavedState {
            version: 1,
            startup: vec![Some(Binding::Card(18)), None],
            readers: vec![Some(Binding::Card(18)), Some(Binding::Iccid("89".into()))],
        };
        write_atomically(&path, &st).unwrap();
        assert_eq!(load_state(&path), Some(st));
        let restored = initial_bindings(&[Some(Binding::Card(18)), None], load_state(&path));
        assert_eq!(restored[1], Some(Binding::Iccid("89".into())));
        // A changed command line wins.
        let fresh = initial_bindings(&[Some(Binding::Card(2)), None], load_state(&path));
        assert_eq!(fresh, vec![Some(Binding::Card(2)), None]);
        std::fs::write(&path, b"{\"version\":1,\"startup\":[{\"card\":").unwrap();
        assert_eq!(load_state(&path), None);
        assert_eq!(load_state(&dir.join("missing.json")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
