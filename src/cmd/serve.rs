//! `simpool serve`: the daemon.

use std::process::ExitCode;

use clap::{ArgMatches, Args};

use simpool::bridge::ResetPolicy;
use simpool::config::{self, FileConfig, ReaderEntry};

use super::{wait_for_signal, CliError};

#[derive(Args)]
pub struct ServeArgs {
    /// The pool: HOST:PORT, or `sim` for the built-in simulated pool [default: 192.168.1.199:6666].
    #[arg(long)]
    pool: Option<String>,
    /// Bind the next reader to card N (1-256; repeatable).
    #[arg(long)]
    card: Vec<u16>,
    /// Bind the next reader to the card with this ICCID (repeatable).
    #[arg(long)]
    iccid: Vec<String>,
    /// Bind the next reader to the card with this IMSI (repeatable).
    #[arg(long)]
    imsi: Vec<String>,
    /// vpcd's first port, HOST:PORT; the next reader uses PORT+1 and so on [default: 127.0.0.1:35963].
    #[arg(long)]
    vpcd: Option<String>,
    /// Configuration file (TOML); flags override it.
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
    #[arg(long)]
    control: Option<String>,
    /// File holding a bearer token the control API requires (needed off loopback).
    #[arg(long)]
    control_token: Option<std::path::PathBuf>,
    /// Keep runtime bindings in this file, restored at start-up.
    #[arg(long)]
    state: Option<std::path::PathBuf>,
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
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, e)| e).collect()
}

pub async fn run(args: ServeArgs, m: &ArgMatches) -> Result<ExitCode, CliError> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p).map_err(|e| CliError::Usage(e.to_string()))?,
        None => FileConfig::default(),
    };
    let flags = FileConfig {
        pool: args.pool.clone(),
        vpcd: args.vpcd.clone(),
        command_timeout_ms: args.command_timeout_ms,
        reply_timeout_ms: args.reply_timeout_ms,
        keepalive_ms: None,
        reset: args.reset,
        quickack: args.no_quickack.then_some(false),
        cards: args.cards.clone(),
        readers: args.readers,
        control: args.control.clone(),
        control_token: args.control_token.clone(),
        state: args.state.clone(),
        gsmtap: args.gsmtap.clone(),
        gsmtap_cards: args.gsmtap_cards.clone(),
        reader: bindings_in_order(&args, m),
        remsim: (args.remsim.is_some() || args.bank_id.is_some() || args.remsim_listen.is_some())
            .then(|| config::RemsimEntry {
                server: args.remsim.clone(),
                bank_id: args.bank_id,
                listen: args.remsim_listen.clone(),
            }),
        ..FileConfig::default()
    };
    let cfg = config::resolve(file, flags).map_err(|e| CliError::Usage(e.to_string()))?;
    if args.check {
        return check(&cfg, args.cards.as_deref()).await;
    }
    let running = simpool::serve::start(cfg)
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    wait_for_signal().await;
    log::info!("stopping");
    running.shutdown();
    Ok(ExitCode::SUCCESS)
}

async fn check(
    cfg: &simpool::config::ServeConfig,
    cards: Option<&std::path::Path>,
) -> Result<ExitCode, CliError> {
    // `sim`: check against a simulator of our own, as the daemon would run it.
    let mut _sim = None;
    let addr = if cfg.pool == "sim" {
        let set = match cards {
            Some(p) => super::load_cards(p)?,
            None => simpool::sim::profile::CardsFile::default_set(),
        };
        let sim = simpool::sim::SimPool::start("127.0.0.1:0", set, simpool::sim::Faults::default())
            .await
            .map_err(|e| CliError::Sim(e.to_string()))?;
        let a = sim.addr().to_string();
        _sim = Some(sim);
        a
    } else {
        cfg.pool.clone()
    };
    let verdicts = simpool::check::run(cfg, &addr).await;
    for v in &verdicts {
        println!("{v}");
    }
    Ok(if verdicts.iter().all(|v| v.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
