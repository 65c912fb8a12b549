//! `simpool serve`: assembles the daemon. One pool link, the card registry with its leases, N
//! vpcd readers whose bindings change at runtime, the bank, the control API; their shared state
//! is [`crate::daemon::Daemon`] (which `control` and `metrics` use: nothing imports this module).

use std::sync::Arc;
use std::time::Duration;

use crate::bridge::{Binding, Reader, ReaderConfig, ReaderHandle};
use crate::cards::{Cards, Observer};
use crate::config::ServeConfig;
use crate::daemon::{initial_bindings, load_state, Daemon};
use crate::pool::{Link, LinkOptions};
use crate::sim::profile::CardsFile;
use crate::sim::SimPool;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the simulated pool: {0}")]
    Sim(String),
    #[error("control API: {0}")]
    Control(#[from] crate::control::ControlError),
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

/// Starts the daemon: pool link, readers, control API.
pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    start_with(cfg, Vec::new()).await
}

/// As [`start`], with observers on the exchange path (GSMTAP, tests).
pub async fn start_with(
    cfg: ServeConfig,
    observers: Vec<Arc<dyn Observer>>,
) -> Result<Running, ServeError> {
    let cards_file = match (&cfg.cards, cfg.pool.is_sim()) {
        (Some(p), true) => Some(load_cards(p)?),
        _ => None,
    };
    let opened = cfg.pool.open(cards_file).await.map_err(ServeError::Sim)?;
    if let Some(sim) = &opened.sim {
        log::info!("built-in simulated pool on {}", sim.addr());
    }
    // The control API's socket first: a daemon that cannot offer it should not half-start.
    let listener = match &cfg.control {
        Some(a) => Some(crate::control::bind(a, cfg.control_token.as_deref()).await?),
        None => None,
    };
    let link = Link::spawn(
        &opened.addr,
        LinkOptions {
            reply_timeout: cfg.reply_timeout,
            null_wait_cap: cfg.null_wait_cap,
            keepalive: Some(cfg.keepalive),
            health: cfg.health.clone(),
            ..LinkOptions::default()
        },
    );
    let (observers, gsmtap) = with_tracer(&cfg, observers)?;
    let cards = Cards::new(link, observers);
    // The bank's listener before the readers: a bank that cannot listen should not half-start.
    let bank = match &cfg.remsim {
        Some(r) => Some(start_bank(&cfg, r, &cards).await?),
        None => None,
    };
    let startup: Vec<Option<Binding>> = cfg.readers.iter().map(|r| r.binding.clone()).collect();
    let bindings = initial_bindings(&startup, cfg.state.as_deref().and_then(load_state));
    let (readers, mut tasks) = start_readers(&cfg, &cards, bindings);
    let daemon = Arc::new(Daemon::new(
        cfg.pool.clone(),
        cards,
        readers,
        cfg.command_timeout,
        gsmtap,
        cfg.state.clone(),
        startup,
    ));
    let mut control = None;
    if let Some(listener) = listener {
        control = Some(listener.local_addr());
        log::info!("control API on http://{}", listener.local_addr());
        tasks.push(tokio::spawn(listener.serve(daemon.clone())));
    }
    Ok(Running {
        daemon,
        sim: opened.sim,
        control,
        bank,
        tasks,
    })
}

fn load_cards(p: &std::path::Path) -> Result<CardsFile, ServeError> {
    let text =
        std::fs::read_to_string(p).map_err(|e| ServeError::Sim(format!("{}: {e}", p.display())))?;
    CardsFile::from_toml(&text).map_err(|e| ServeError::Sim(format!("{}: {e}", p.display())))
}

/// The observers with the GSMTAP tracer added when tracing is on, and its counters.
fn with_tracer(
    cfg: &ServeConfig,
    mut observers: Vec<Arc<dyn Observer>>,
) -> Result<GsmtapParts, ServeError> {
    let Some(g) = &cfg.gsmtap else {
        return Ok((observers, None));
    };
    let tracer = crate::gsmtap::Tracer::new(g.dest, g.cards.clone()).map_err(ServeError::Gsmtap)?;
    log::info!("GSMTAP to {}, cards {}", g.dest, g.cards);
    let counters = tracer.counters();
    observers.push(Arc::new(tracer));
    Ok((observers, Some(counters)))
}

type GsmtapParts = (Vec<Arc<dyn Observer>>, Option<Arc<crate::gsmtap::Counters>>);

async fn start_bank(
    cfg: &ServeConfig,
    r: &crate::config::RemsimSpec,
    cards: &Cards,
) -> Result<crate::remsim::Bank, ServeError> {
    Ok(crate::remsim::Bank::start(
        crate::remsim::BankConfig {
            server: r.server.clone(),
            bank_id: r.bank_id,
            listen: r.listen.clone(),
            command_timeout: cfg.command_timeout,
            name: crate::remsim::probe::bank_name(r.bank_id),
        },
        cards.clone(),
    )
    .await?)
}

/// One reader task per configured reader, bound as `bindings` say.
fn start_readers(
    cfg: &ServeConfig,
    cards: &Cards,
    bindings: Vec<Option<Binding>>,
) -> (Vec<ReaderHandle>, Vec<tokio::task::JoinHandle<()>>) {
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
    (readers, tasks)
}
