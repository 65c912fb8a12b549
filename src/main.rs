//! The `simpool` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use simpool::bridge::ResetPolicy;
use simpool::config::{self, FileConfig, ReaderEntry};
use simpool::pool::{Link, LinkOptions, Slot, FACTORY_ADDRESS};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};
use simpool::{client, inventory};

#[derive(Parser)]
#[command(
    name = "simpool",
    version,
    about = "SIM cards of a networked Lit-K13e-V53 SIM pool as PC/SC readers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct PoolArgs {
    /// The pool: HOST:PORT, or `sim` for the built-in simulated pool.
    #[arg(long, default_value = FACTORY_ADDRESS, env = "SIMPOOL_POOL")]
    pool: String,
    /// Longest wait for any answer of the pool, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    reply_timeout_ms: u64,
    /// Cards file for `--pool sim` (TOML; default: the built-in set).
    #[arg(long)]
    cards: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated pool (256 slots, simulated GSM SIMs) on TCP.
    Sim(SimArgs),
    /// The pool's ID and firmware version.
    Info {
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// The 256 slot states.
    Status {
        #[command(flatten)]
        pool: PoolArgs,
        /// Print JSON instead of the grid.
        #[arg(long)]
        json: bool,
    },
    /// Number, state, ATR, ICCID and IMSI of every inserted card (starts each card).
    Scan {
        #[command(flatten)]
        pool: PoolArgs,
        #[arg(long)]
        json: bool,
    },
    /// Serve pool cards as PC/SC readers through vpcd (card N to the first reader, M to the next…).
    Serve(ServeArgs),
    /// Read ATR, ICCID and IMSI of the cards in PC/SC readers (through pcscd, like any application).
    Read {
        /// Only readers whose name contains this.
        #[arg(long)]
        reader: Option<String>,
        #[arg(long)]
        json: bool,
        /// Wait up to this many seconds for every reader to show a card.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Start a card and run commands (hex TPDUs/APDUs) through the T=0 terminal.
    Apdu {
        #[command(flatten)]
        pool: PoolArgs,
        /// Card number, 1–256 as on the front panel.
        #[arg(long)]
        card: u16,
        /// Commands in hex (spaces and colons allowed inside one argument).
        #[arg(required = true)]
        commands: Vec<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
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
}

fn parse_reset(s: &str) -> Result<ResetPolicy, String> {
    match s {
        "restart" => Ok(ResetPolicy::Restart),
        "cached" => Ok(ResetPolicy::Cached),
        _ => Err("want restart or cached".into()),
    }
}

#[derive(Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6666")]
    listen: String,
    /// Cards file (TOML); default: the built-in set.
    #[arg(long)]
    cards: Option<std::path::PathBuf>,
    /// Populate slots 1..=N with generated cards instead (for benchmarks).
    #[arg(long, conflicts_with = "cards")]
    fill: Option<u16>,
    #[command(flatten)]
    faults: FaultArgs,
}

#[derive(Args, Clone, Default)]
struct FaultArgs {
    /// Delay before every reply, ms (a range `MIN-MAX` picks per reply).
    #[arg(long)]
    latency_ms: Option<String>,
    /// Cut card answers into frames of at most N bytes.
    #[arg(long)]
    split: Option<usize>,
    /// NULL bytes before the answer of slow commands.
    #[arg(long)]
    nulls: Option<u8>,
    /// Junk bytes before every N-th reply frame.
    #[arg(long)]
    garbage_every: Option<u64>,
    /// A card that never answers (repeatable).
    #[arg(long)]
    mute: Vec<u16>,
    /// A slot that reports abnormal and never answers (repeatable).
    #[arg(long)]
    abnormal: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Pool(#[from] simpool::pool::PoolError),
    #[error("cannot start the simulator: {0}")]
    Sim(String),
    #[error("{0}")]
    Card(String),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let default_level = if matches!(cli.command, Command::Sim(_)) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_micros()
        .init();
    // One thread does it: simpool's work is moving small frames, and a single-threaded runtime
    // saves the cross-thread wake-ups that dominate an exchange's latency.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simpool: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, &matches)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("simpool: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve").expect("serve matches");
            serve(args, sub).await
        }
        Command::Read { reader, json, wait } => read(reader, json, wait).await,
        Command::Sim(args) => {
            let mut cards = match (&args.cards, args.fill) {
                (Some(p), _) => load_cards(p)?,
                (None, Some(n)) => CardsFile::filled(n),
                (None, None) => CardsFile::default_set(),
            };
            let faults = fault_knobs(&args.faults, &mut cards)?;
            let sim = SimPool::start(&args.listen, cards, faults)
                .await
                .map_err(|e| CliError::Sim(format!("{}: {e}", args.listen)))?;
            log::info!("simulated pool listening on {}", sim.addr());
            wait_for_signal().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { pool } => {
            let (link, _sim) = connect(&pool).await?;
            let id = link.id().await?;
            let version = link.version().await?;
            println!("ID       {}", hex::encode_upper(id));
            println!("version  {version}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { pool, json } => {
            let (link, _sim) = connect(&pool).await?;
            let states = link.states().await?;
            if json {
                let cards: Vec<_> = states
                    .iter()
                    .enumerate()
                    .map(|(i, s)| serde_json::json!({ "card": i + 1, "state": s }))
                    .collect();
                println!("{}", serde_json::json!({ "slots": cards }));
            } else {
                print!("{}", inventory::grid(&states));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Scan { pool, json } => {
            let (link, _sim) = connect(&pool).await?;
            let deadline = Duration::from_millis(pool.reply_timeout_ms * 5);
            let reports = inventory::scan(&link, deadline).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reports).unwrap_or_default()
                );
            } else {
                println!(
                    "{:>4}  {:<9} {:<20} {:<15}  ATR",
                    "card", "state", "ICCID", "IMSI"
                );
                for r in &reports {
                    let state = serde_json::to_value(r.state)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from));
                    match &r.error {
                        Some(e) => {
                            println!("{:>4}  {:<9} error: {e}", r.card, state.unwrap_or_default())
                        }
                        None => println!(
                            "{:>4}  {:<9} {:<20} {:<15}  {}",
                            r.card,
                            state.unwrap_or_default(),
                            r.iccid.as_deref().unwrap_or("-"),
                            r.imsi.as_deref().unwrap_or("-"),
                            r.atr.as_deref().unwrap_or("-"),
                        ),
                    }
                }
            }
            let failed = reports.iter().filter(|r| r.error.is_some()).count();
            Ok(if failed > 0 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Apdu {
            pool,
            card,
            commands,
        } => {
            let slot = Slot::from_card(card).ok_or_else(|| {
                CliError::Usage(format!("card {card} does not exist: cards are 1-256"))
            })?;
            let cmds = commands
                .iter()
                .map(|c| parse_hex(c))
                .collect::<Result<Vec<_>, _>>()?;
            let (link, _sim) = connect(&pool).await?;
            let handle = link.card(slot);
            let atr = handle.start().await.map_err(|e| {
                CliError::Card(format!("card {card} did not start (empty or mute?): {e}"))
            })?;
            eprintln!("ATR {}", hex::encode_upper(&atr));
            let deadline = Duration::from_millis(pool.reply_timeout_ms * 5);
            for cmd in cmds {
                let resp = handle.transmit(&cmd, deadline).await.map_err(|e| {
                    CliError::Card(format!(
                        "card {card}: {} failed: {e}",
                        hex::encode_upper(&cmd)
                    ))
                })?;
                println!("{}", hex::encode_upper(resp));
            }
            Ok(ExitCode::SUCCESS)
        }
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

async fn serve(args: ServeArgs, m: &ArgMatches) -> Result<ExitCode, CliError> {
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
        reader: bindings_in_order(&args, m),
    };
    let cfg = config::resolve(file, flags).map_err(|e| CliError::Usage(e.to_string()))?;
    let running = simpool::serve::start(cfg)
        .await
        .map_err(|e| CliError::Sim(e.to_string()))?;
    wait_for_signal().await;
    log::info!("stopping");
    running.shutdown();
    Ok(ExitCode::SUCCESS)
}

async fn read(filter: Option<String>, json: bool, wait: u64) -> Result<ExitCode, CliError> {
    // pcsc calls block: keep them off the async workers.
    let reports = tokio::task::spawn_blocking(move || -> Result<_, client::ClientError> {
        let ctx = client::context()?;
        let names: Vec<_> = client::readers(&ctx)?
            .into_iter()
            .filter(|n| {
                filter
                    .as_deref()
                    .is_none_or(|f| n.to_string_lossy().contains(f))
            })
            .collect();
        if wait > 0 {
            client::wait_for_cards(&ctx, &names, Duration::from_secs(wait))?;
        }
        Ok(names
            .iter()
            .map(|n| client::report(&ctx, n))
            .collect::<Vec<_>>())
    })
    .await
    .map_err(|e| CliError::Card(e.to_string()))?
    .map_err(|e| CliError::Card(e.to_string()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
    } else if reports.is_empty() {
        println!("no PC/SC readers");
    } else {
        for r in &reports {
            println!("{}", r.reader);
            match &r.error {
                Some(e) => println!("  error  {e}"),
                None => {
                    println!("  ATR    {}", r.atr.as_deref().unwrap_or("-"));
                    println!("  ICCID  {}", r.iccid.as_deref().unwrap_or("-"));
                    println!("  IMSI   {}", r.imsi.as_deref().unwrap_or("-"));
                }
            }
        }
    }
    let ok = !reports.is_empty() && reports.iter().any(|r| r.error.is_none());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn parse_hex(s: &str) -> Result<Vec<u8>, CliError> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let bytes = hex::decode(&clean).map_err(|e| CliError::Usage(format!("bad hex {s:?}: {e}")))?;
    if bytes.is_empty() {
        return Err(CliError::Usage("empty command".into()));
    }
    Ok(bytes)
}

fn load_cards(path: &std::path::Path) -> Result<CardsFile, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    CardsFile::from_toml(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

fn fault_knobs(a: &FaultArgs, cards: &mut CardsFile) -> Result<Faults, CliError> {
    let mut f = Faults::default();
    if let Some(l) = &a.latency_ms {
        let (lo, hi) = match l.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (l.as_str(), l.as_str()),
        };
        let ms = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| CliError::Usage(format!("bad --latency-ms {l:?}")))
        };
        f.latency_min = ms(lo)?;
        f.latency_max = ms(hi)?;
    }
    f.split = a.split.unwrap_or(0);
    f.garbage_every = a.garbage_every.unwrap_or(0);
    if let Some(n) = a.nulls {
        cards.pool.nulls = n;
    }
    for (list, set) in [(&a.mute, &mut f.mute), (&a.abnormal, &mut f.abnormal)] {
        for &c in list {
            if !(1..=256).contains(&c) {
                return Err(CliError::Usage(format!(
                    "card {c} does not exist: cards are 1-256"
                )));
            }
            set.insert(c);
        }
    }
    Ok(f)
}

/// Connects to the pool, or starts the in-process simulator for `--pool sim`.
async fn connect(args: &PoolArgs) -> Result<(Link, Option<SimPool>), CliError> {
    let opts = LinkOptions {
        reply_timeout: Duration::from_millis(args.reply_timeout_ms.max(1)),
        ..LinkOptions::default()
    };
    if args.pool == "sim" {
        let cards = match &args.cards {
            Some(p) => load_cards(p)?,
            None => CardsFile::default_set(),
        };
        let sim = SimPool::start("127.0.0.1:0", cards, Faults::default())
            .await
            .map_err(|e| CliError::Sim(e.to_string()))?;
        let link = Link::connect(&sim.addr().to_string(), opts).await?;
        return Ok((link, Some(sim)));
    }
    Ok((Link::connect(&args.pool, opts).await?, None))
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
