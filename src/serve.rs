//! `simpool serve`: assembles the daemon. One pool link, the card registry with its leases, N
//! vpcd readers whose bindings change at runtime, the bank, the control API; their shared state
//! is [`crate::daemon::Daemon`] (which `control` and `metrics` use: nothing imports this module).

use std::sync::Arc;
use std::time::Duration;

use crate::bridge::{Binding, Reader, ReaderConfig, ReaderHandle};
use crate::cards::{Cards, Observer};
use crate::config::ServeConfig;
use crate::control::auth::Auth;
use crate::daemon::{initial_bindings, load_state, Daemon, SavedState};
use crate::history::{History, Options as HistoryOptions, Timestamp};
use crate::pool::{Link, LinkOptions};
use crate::reservations::{Book, Reservation};
use crate::sim::profile::CardsFile;
use crate::sim::SimPool;
use crate::users::{Role, Who};

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
    /// The state file cannot be saved where it is named (a configuration error).
    #[error("{0}")]
    State(String),
    #[error("sim-rest API: cannot listen on {0}: {1}")]
    SimRest(String, std::io::Error),
}

/// A running daemon.
pub struct Running {
    pub daemon: Arc<Daemon>,
    /// The in-process simulator of `--pool sim`.
    pub sim: Option<SimPool>,
    /// Where the control API listens, if on.
    pub control: Option<std::net::SocketAddr>,
    /// Where the sim-rest API listens, if on.
    pub sim_rest: Option<std::net::SocketAddr>,
    /// The osmo-remsim bank, if on.
    pub bank: Option<crate::remsim::Bank>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn link(&self) -> &Link {
        &self.daemon.link
    }

    /// Stops every reader (their vpcd connections close: pcscd sees the cards removed); the
    /// leases still held end in the history as `daemon-stopped`, and the history is closed.
    pub async fn shutdown(self) {
        let cards = self.daemon.cards.clone();
        cards.set_stopping();
        if let Some(b) = self.bank {
            b.shutdown();
        }
        for t in &self.tasks {
            t.abort();
        }
        // The aborted tasks drop their leases, which ends their history rows.
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(h) = cards.history() {
            h.close().await;
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
    if let Some(p) = &cfg.state {
        crate::daemon::check_state_path(p).map_err(ServeError::State)?;
    }
    let cards_file = match (&cfg.cards, cfg.pool.is_sim()) {
        (Some(p), true) => Some(load_cards(p)?),
        _ => None,
    };
    let opened = cfg.pool.open(cards_file).await.map_err(ServeError::Sim)?;
    if let Some(sim) = &opened.sim {
        log::info!("built-in simulated pool on {}", sim.addr());
    }
    // The control API's sockets first: a daemon that cannot offer them should not half-start.
    let token = cfg
        .control_token
        .as_deref()
        .map(crate::control::read_token)
        .transpose()?;
    let auth = Arc::new(
        Auth::new(
            token.as_deref(),
            cfg.control_tokens.as_deref(),
            cfg.control_socket_group.clone(),
        )
        .map_err(crate::control::ControlError::from)?,
    );
    let listener = match &cfg.control {
        Some(a) => Some(crate::control::bind_with(a, auth.clone()).await?),
        None => None,
    };
    let unix = match &cfg.control_socket {
        Some(p) => Some(crate::control::bind_unix(
            p,
            cfg.control_socket_mode,
            cfg.control_socket_group.as_deref(),
            auth.clone(),
        )?),
        None => None,
    };
    let sim_rest = match &cfg.sim_rest {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| ServeError::SimRest(a.clone(), e))?,
        ),
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
    if let Some(h) = open_history(&cfg).await {
        cards.set_history(h);
    }
    cards.set_settings(Arc::new(cfg.card_settings.clone()));
    // The bank's listener before the readers: a bank that cannot listen should not half-start.
    let bank = match &cfg.remsim {
        Some(r) => Some(start_bank(&cfg, r, &cards).await?),
        None => None,
    };
    let startup: Vec<Option<Binding>> = cfg.readers.iter().map(|r| r.binding.clone()).collect();
    let saved = cfg.state.as_deref().and_then(load_state);
    let bindings = initial_bindings(&startup, saved.clone());
    // The users the bindings were made for, when the saved bindings are the ones used.
    let users = match &saved {
        Some(s) if s.startup == startup => s.reader_users.clone(),
        _ => Vec::new(),
    };
    let expired = match &saved {
        Some(s) => restore_reservations(&cards, s),
        None => Vec::new(),
    };
    let (readers, mut tasks) = start_readers(&cfg, &cards, bindings, users);
    if cards.history().is_some() {
        tasks.push(tokio::spawn(cards.clone().watch_slots(SLOT_WATCH)));
    }
    let daemon = Arc::new(Daemon::new(
        cfg.pool.clone(),
        cards,
        readers,
        cfg.command_timeout,
        gsmtap,
        cfg.state.clone(),
        startup,
    ));
    tasks.push(tokio::spawn(daemon.clone().run_expiry()));
    for r in expired {
        let d = daemon.clone();
        tasks.push(tokio::spawn(async move {
            let why = format!("expired at {} while the daemon was down", r.expires);
            d.end_reservation(r, &why).await;
        }));
    }
    let mut control = None;
    if let Some(listener) = listener {
        control = Some(listener.local_addr());
        log::info!("control API on http://{}", listener.local_addr());
        tasks.push(tokio::spawn(listener.serve(daemon.clone())));
    }
    if let Some(unix) = unix {
        log::info!("control API on unix:{}", unix.path().display());
        tasks.push(tokio::spawn(unix.serve(daemon.clone())));
    }
    // Always: SIGHUP must not end the daemon (`systemctl reload`), tokens file or not.
    tasks.push(tokio::spawn(reload_on_hangup(auth)));
    let mut sim_rest_addr = None;
    if let Some(l) = sim_rest {
        let a = l.local_addr().ok();
        sim_rest_addr = a;
        if a.is_some_and(|a| !a.ip().is_loopback()) {
            log::warn!(
                "sim-rest API on {} (not loopback): it has no token, as pySim's has none; \
                 anyone who reaches it can run authentications on the pool's cards",
                l.local_addr().map(|a| a.to_string()).unwrap_or_default()
            );
        }
        log::info!(
            "sim-rest API on http://{} (slot k is card k+1)",
            l.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let router = crate::simrest::router(daemon.clone());
        tasks.push(tokio::spawn(crate::control::serve_http(
            l,
            router,
            "sim-rest API",
        )));
    }
    Ok(Running {
        daemon,
        sim: opened.sim,
        control,
        sim_rest: sim_rest_addr,
        bank,
        tasks,
    })
}

/// How often the slot states are read for the history's inserted/removed events.
const SLOT_WATCH: Duration = Duration::from_secs(2);

/// Opens the history (`--history`), if on. A corrupt file is moved aside and a new one begun
/// (by [`History::open`]); one that cannot be taken at all (in use by another daemon, a newer
/// schema, a directory that cannot be made) is logged and the daemon serves without history.
async fn open_history(cfg: &ServeConfig) -> Option<History> {
    let path = cfg.history.clone()?;
    let mut opts = HistoryOptions::new(&path);
    opts.retention_days = cfg.history_days;
    match tokio::task::spawn_blocking(move || History::open(opts)).await {
        Ok(Ok(h)) => {
            log::info!(
                "history in {} (rows kept {})",
                path.display(),
                match cfg.history_days {
                    0 => "for ever".to_string(),
                    d => format!("{d} days"),
                }
            );
            Some(h)
        }
        Ok(Err(e)) => {
            log::error!("{e}: serving without history (and without labels)");
            None
        }
        Err(e) => {
            log::error!("history {}: {e}: serving without history", path.display());
            None
        }
    }
}

/// Re-reads the tokens file on SIGHUP; a broken file keeps the tokens in force.
async fn reload_on_hangup(auth: Arc<Auth>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        log::warn!("cannot watch SIGHUP: the tokens file is read at start-up only");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(file) = auth.tokens_file().map(|p| p.display().to_string()) else {
            log::info!("SIGHUP: no control_tokens file to re-read");
            continue;
        };
        match auth.reload() {
            Ok(n) => log::info!("SIGHUP: {n} token(s) in force, {file} re-read"),
            Err(e) => log::warn!("SIGHUP: {e}; the tokens in force stay"),
        }
    }
}

/// Puts the saved reservations back in the card layer's book; answers those whose time ran
/// out meanwhile (to be ended once the daemon runs).
fn restore_reservations(cards: &Cards, saved: &SavedState) -> Vec<Reservation> {
    let (book, expired) = Book::restore(
        saved.reservations.clone(),
        saved.next_reservation,
        Timestamp::now(),
    );
    let kept = book.list().len();
    cards.with_book(|b| *b = book);
    if kept > 0 {
        log::info!("restored {kept} reservation(s) from the state file");
    }
    // Back in the book until they are ended (their readers unbound, their cards stopped).
    cards.with_book(|b| {
        for r in &expired {
            b.insert(r.clone());
        }
    });
    expired
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
    users: Vec<Option<String>>,
) -> (Vec<ReaderHandle>, Vec<tokio::task::JoinHandle<()>>) {
    let mut readers = Vec::new();
    let mut tasks = Vec::new();
    for (i, (spec, binding)) in cfg.readers.iter().zip(bindings).enumerate() {
        let (mut reader, handle) = Reader::new(
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
        if let (Some(_), Some(Some(u))) = (&binding, users.get(i)) {
            reader.for_user(Some(Who::new(u.clone(), Role::Use)));
        }
        match &binding {
            Some(b) => log::info!("{}: bound to {b}", reader.name),
            None => log::info!("{}: no card bound", reader.name),
        }
        readers.push(handle);
        tasks.push(tokio::spawn(reader.run()));
    }
    (readers, tasks)
}
