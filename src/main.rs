//! The `simpool` command line.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use simpool::inventory;
use simpool::pool::{Link, LinkOptions, Slot, FACTORY_ADDRESS};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

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
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Sim(_)) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("simpool: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("simpool: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
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
