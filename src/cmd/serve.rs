//! `simpool serve`: the daemon.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use simpool::bridge::{Binding, ResetPolicy};
use simpool::config::{self, FileConfig, ReaderEntry, ServeConfig};
use simpool::control::ControlError;
use simpool::serve::ServeError;
use simpool::sim::profile::CardsFile;
use simpool::values::{CardNo, PoolAddr};

use super::{load_cards, out, wait_for_signal, CliError};

#[derive(Args)]
pub struct ServeArgs {
    /// The pool: HOST:PORT, or `sim` for the built-in simulated pool [default: 192.168.1.199:6666;
    /// with --config, the file (or this flag, or SIMPOOL_POOL) must name it].
    #[arg(long, env = "SIMPOOL_POOL")]
    pool: Option<PoolAddr>,
    /// Bind the next reader to card N (1-256; repeatable).
    #[arg(long)]
    card: Vec<CardNo>,
    /// Bind the next reader to the card with this ICCID (repeatable).
    #[arg(long)]
    iccid: Vec<String>,
    /// Bind the next reader to the card with this IMSI (repeatable).
    #[arg(long)]
    imsi: Vec<String>,
    /// Bind the next reader to the eUICC with this EID, whatever profile it has enabled (repeatable).
    #[arg(long)]
    eid: Vec<String>,
    /// vpcd's first port, HOST:PORT; the next reader uses PORT+1 and so on [default: 127.0.0.1:35963].
    #[arg(long)]
    vpcd: Option<String>,
    /// Configuration file (TOML); the environment and flags override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// What PC/SC power-on/reset does: `restart` the card (default) or answer the `cached` ATR.
    #[arg(long, value_parser = parse_reset)]
    reset: Option<ResetPolicy>,
    /// Longest wait of any PC/SC command, ms [default: 1500].
    #[arg(long)]
    command_timeout_ms: Option<u64>,
    /// Longest wait for one answer of the pool, ms [default: 1000].
    #[arg(long)]
    reply_timeout_ms: Option<u64>,
    /// Longest a PC/SC command may go on past --command-timeout-ms while the card keeps
    /// sending NULL bytes ("wait"), ms [default: 30000].
    #[arg(long)]
    null_wait_cap_ms: Option<u64>,
    /// Don't re-arm TCP_QUICKACK on vpcd sockets (for measurements).
    #[arg(long)]
    no_quickack: bool,
    /// Cards file for `--pool sim`.
    #[arg(long)]
    cards: Option<std::path::PathBuf>,
    /// Run N readers on the vpcd ports (at most 16); the bindings take the first ones, the
    /// others start without a card [default: one per binding].
    #[arg(long)]
    readers: Option<usize>,
    /// Serve the control API on HOST:PORT, or `off` [default: 127.0.0.1:6680].
    #[arg(long, env = "SIMPOOL_CONTROL")]
    control: Option<String>,
    /// File holding a bearer token the control API requires (needed off loopback).
    #[arg(long, env = "SIMPOOL_CONTROL_TOKEN")]
    control_token: Option<std::path::PathBuf>,
    /// Named users: a file of lines `NAME TOKEN ROLE` (roles read, use, admin); re-read on
    /// SIGHUP.
    #[arg(long, value_name = "FILE")]
    control_tokens: Option<std::path::PathBuf>,
    /// Also serve the control API on this Unix socket (local users need no token: the
    /// kernel names them), or `off`.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<String>,
    /// The socket file's mode, octal [default: 0660].
    #[arg(long, value_name = "MODE")]
    control_socket_mode: Option<String>,
    /// The socket file's group; its members get the `use` role (root is admin, other local
    /// users read).
    #[arg(long, value_name = "GROUP")]
    control_socket_group: Option<String>,
    /// Keep runtime bindings and reservations in this file, restored at start-up.
    #[arg(long)]
    state: Option<std::path::PathBuf>,
    /// Keep every card's history and labels in this SQLite database, or `off` [default: off].
    #[arg(long, value_name = "FILE")]
    history: Option<String>,
    /// Delete history rows that ended more than this many days ago (0: keep them) [default: 90].
    #[arg(long, value_name = "DAYS")]
    history_days: Option<u32>,
    /// Be an osmo-remsim bank: the osmo-remsim-server, HOST[:PORT] [default port: 9998].
    #[arg(long, value_name = "SERVER")]
    remsim: Option<String>,
    /// The bank's id (0-1023) at the osmo-remsim-server; bank slot k is card k+1.
    #[arg(long, value_name = "N")]
    bank_id: Option<u16>,
    /// Where remote osmo-remsim clients connect [default: 0.0.0.0:9999].
    #[arg(long, value_name = "HOST:PORT")]
    remsim_listen: Option<String>,
    /// Run the start-up checks (pool answers, vpcd ports accept, bound cards present, control
    /// address free), print one verdict per line and exit (1 if any failed).
    #[arg(long)]
    check: bool,
    /// Send every card exchange as GSMTAP (UDP) to HOST[:PORT] (port 4729 if left out), or `off`.
    #[arg(long, value_name = "HOST[:PORT]")]
    gsmtap: Option<String>,
    /// Trace only these cards, e.g. `18,256` or `1-16` [default: all].
    #[arg(long, value_name = "LIST")]
    gsmtap_cards: Option<String>,
    /// Answer pySim's sim-rest API (`sim-rest-client.py`) for every card on HOST:PORT (pySim
    /// uses port 8000; slot k is card k+1), or `off` [default: off].
    #[arg(long, value_name = "HOST:PORT")]
    sim_rest: Option<String>,
}

fn parse_reset(s: &str) -> Result<ResetPolicy, String> {
    match s {
        "restart" => Ok(ResetPolicy::Restart),
        "cached" => Ok(ResetPolicy::Cached),
        _ => Err("want restart or cached".into()),
    }
}

/// Readers in the order their `--card`/`--iccid`/`--imsi` flags were given.
fn bindings_in_order(args: &ServeArgs, m: &ArgMatches) -> Vec<ReaderEntry> {
    let mut all: Vec<(usize, ReaderEntry)> = Vec::new();
    let idx = |id: &str| {
        m.indices_of(id)
            .map(|i| i.collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for (i, n) in idx("card").into_iter().zip(&args.card) {
        all.push((
            i,
            ReaderEntry {
                card: Some(*n),
                ..Default::default()
            },
        ));
    }
    for (i, s) in idx("iccid").into_iter().zip(&args.iccid) {
        all.push((
            i,
            ReaderEntry {
                iccid: Some(s.clone()),
                ..Default::default()
            },
        ));
    }
    for (i, s) in idx("imsi").into_iter().zip(&args.imsi) {
        all.push((
            i,
            ReaderEntry {
                imsi: Some(s.clone()),
                ..Default::default()
            },
        ));
    }
    for (i, s) in idx("eid").into_iter().zip(&args.eid) {
        all.push((
            i,
            ReaderEntry {
                eid: Some(s.clone()),
                ..Default::default()
            },
        ));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, e)| e).collect()
}

/// A value given in the environment rather than on the command line: it ranks below the
/// command line and above the configuration file.
fn from_env<T: Clone>(m: &ArgMatches, id: &str, v: &Option<T>) -> (Option<T>, Option<T>) {
    match m.value_source(id) {
        Some(ValueSource::EnvVariable) => (None, v.clone()),
        _ => (v.clone(), None),
    }
}

/// The card an ICCID/IMSI binding is, on the simulated pool (whose cards are known before
/// anything starts). A real pool's identities are only known once its cards are read: the
/// daemon then refuses a held card per reader at run time instead.
fn sim_card_of(cards: &CardsFile) -> impl Fn(&Binding) -> Option<CardNo> + '_ {
    move |b| {
        cards
            .card
            .iter()
            .find(|e| match b {
                Binding::Iccid(s) => e.profile.iccid == *s,
                Binding::Imsi(s) => e.profile.imsi == *s,
                Binding::Eid(s) => e.profile.euicc.as_ref().is_some_and(|u| {
                    simpool::sim::euicc::eid_digits(&u.eid).eq_ignore_ascii_case(s)
                }),
                Binding::Card(_) => false,
            })
            .and_then(|e| CardNo::new(e.slot).ok())
    }
}

/// Many readers and API clients need file descriptors: raise the soft limit to the hard one
/// (no privilege needed), so a 1024 default does not cap the control API's 256 connections
/// plus readers, pool and bank links.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => log::debug!("open files limit raised from {soft} to {hard}"),
            Err(e) => log::debug!("open files limit stays {soft}: {e}"),
        },
        Ok((soft, _)) => log::debug!("open files limit {soft} (already the hard limit)"),
        Err(e) => log::debug!("cannot read the open files limit: {e}"),
    }
}

pub async fn run(args: ServeArgs, m: &ArgMatches) -> Result<ExitCode, CliError> {
    let cfg = configuration(&args, m)?;
    if args.check {
        return check(&cfg).await;
    }
    raise_nofile_limit();
    let running = simpool::serve::start(cfg).await.map_err(start_error)?;
    // A daemon's normal end is a signal (systemd stops it with SIGTERM): exit 0.
    wait_for_signal().await;
    log::info!("stopping");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Why the daemon did not start: a mistake in the command line or configuration is a usage
/// error (exit 2), anything else an error (exit 1).
fn start_error(e: ServeError) -> CliError {
    match e {
        ServeError::Control(
            e @ (ControlError::BadAddress(_)
            | ControlError::NeedsToken(_)
            | ControlError::Tokens(_)
            | ControlError::Token(..)),
        ) => CliError::Usage(format!("control API: {e}")),
        ServeError::State(e) => CliError::Usage(e),
        ServeError::Sim(e) => CliError::Sim(e),
        e => CliError::Failed(e.to_string()),
    }
}

/// The configuration as resolved from file, environment and flags, with the binding clash
/// check (on the simulated pool, identities are placed on their cards).
fn configuration(args: &ServeArgs, m: &ArgMatches) -> Result<ServeConfig, CliError> {
    let mut file = match &args.config {
        Some(p) => FileConfig::load(p).map_err(|e| CliError::Usage(e.to_string()))?,
        None => FileConfig::default(),
    };
    // flag > environment > configuration file > default
    let (pool, env_pool) = from_env(m, "pool", &args.pool);
    let (control, env_control) = from_env(m, "control", &args.control);
    let (control_token, env_token) = from_env(m, "control_token", &args.control_token);
    file.pool = env_pool.or(file.pool);
    file.control = env_control.or(file.control);
    file.control_token = env_token.or(file.control_token);
    let flags = FileConfig {
        pool,
        vpcd: args.vpcd.clone(),
        command_timeout_ms: args.command_timeout_ms,
        reply_timeout_ms: args.reply_timeout_ms,
        null_wait_cap_ms: args.null_wait_cap_ms,
        keepalive_ms: None,
        reset: args.reset,
        quickack: args.no_quickack.then_some(false),
        cards: args.cards.clone(),
        readers: args.readers,
        control,
        control_token,
        control_tokens: args.control_tokens.clone(),
        control_socket: args.control_socket.clone(),
        control_socket_mode: args.control_socket_mode.clone(),
        control_socket_group: args.control_socket_group.clone(),
        state: args.state.clone(),
        history: args.history.clone(),
        history_days: args.history_days,
        gsmtap: args.gsmtap.clone(),
        gsmtap_cards: args.gsmtap_cards.clone(),
        sim_rest: args.sim_rest.clone(),
        reader: bindings_in_order(args, m),
        remsim: (args.remsim.is_some() || args.bank_id.is_some() || args.remsim_listen.is_some())
            .then(|| config::RemsimEntry {
                server: args.remsim.clone(),
                bank_id: args.bank_id,
                listen: args.remsim_listen.clone(),
            }),
        ..FileConfig::default()
    };
    // A daemon run from a configuration file (the packaged service) dials only a pool someone
    // named: a file without `pool` is refused, never sent to the factory address.
    let unnamed_pool = match &args.config {
        Some(p) if flags.pool.is_none() && file.pool.is_none() => Some(p.clone()),
        _ => None,
    };
    let cfg = config::resolve(file, flags).map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(p) = unnamed_pool {
        return Err(CliError::Usage(format!(
            "pool not configured: set pool in {} (the pool's HOST:PORT, or \"sim\")",
            p.display()
        )));
    }
    if let (false, Some(f)) = (cfg.pool.is_sim(), &cfg.cards) {
        // A cards file only shapes the simulated pool: with a real one it would do nothing.
        if args.cards.is_some() {
            return Err(CliError::Usage(format!(
                "--cards {} is for the simulated pool (--pool sim); pool {} is a real pool, \
                 whose cards are the ones inserted",
                f.display(),
                cfg.pool
            )));
        }
        log::warn!(
            "cards = {:?} (configuration file) is for the simulated pool; ignored: the pool is {}",
            f.display().to_string(),
            cfg.pool
        );
    }
    if cfg.pool.is_sim() {
        let cards = match &cfg.cards {
            Some(p) => load_cards(p)?,
            None => CardsFile::default_set(),
        };
        config::check_clashes(&cfg.readers, sim_card_of(&cards))
            .map_err(|e| CliError::Usage(e.to_string()))?;
    }
    Ok(cfg)
}

async fn check(cfg: &ServeConfig) -> Result<ExitCode, CliError> {
    // `sim`: check against a simulator of our own, as the daemon would run it.
    let cards = match (&cfg.cards, cfg.pool.is_sim()) {
        (Some(p), true) => Some(load_cards(p)?),
        _ => None,
    };
    let opened = cfg.pool.open(cards).await.map_err(CliError::Sim)?;
    let verdicts = simpool::check::run(cfg, &opened.addr).await;
    for v in &verdicts {
        out(v)?;
    }
    Ok(if verdicts.iter().all(|v| v.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
