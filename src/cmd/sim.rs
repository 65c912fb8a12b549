//! `simpool sim`: a simulated pool on TCP.

use std::time::Duration;

use clap::Args;

use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

use super::{load_cards, wait_for_signal, CliError};

#[derive(Args)]
pub struct SimArgs {
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
pub struct FaultArgs {
    /// Delay before every reply, ms (a range `MIN-MAX` picks per reply).
    #[arg(long)]
    latency_ms: Option<String>,
    /// Cut card answers into frames of at most N bytes.
    #[arg(long)]
    split: Option<usize>,
    /// NULL bytes before the answer of slow commands.
    #[arg(long)]
    nulls: Option<u8>,
    /// Wire time per byte between pool and card, µs (1040 = 9600 baud, as a real pool).
    #[arg(long, value_name = "US")]
    byte_time_us: Option<u64>,
    /// Junk bytes before every N-th reply frame.
    #[arg(long)]
    garbage_every: Option<u64>,
    /// A card that never answers (repeatable).
    #[arg(long)]
    mute: Vec<simpool::values::CardNo>,
    /// A slot that reports abnormal and never answers (repeatable).
    #[arg(long)]
    abnormal: Vec<simpool::values::CardNo>,
}

pub async fn run(args: SimArgs) -> Result<std::process::ExitCode, CliError> {
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
    Ok(std::process::ExitCode::SUCCESS)
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
    if let Some(us) = a.byte_time_us {
        if us > 100_000 {
            return Err(CliError::Usage(format!(
                "--byte-time-us {us}: at most 100000 (0.1 s per byte)"
            )));
        }
        cards.pool.byte_time_us = us;
    }
    for (list, set) in [(&a.mute, &mut f.mute), (&a.abnormal, &mut f.abnormal)] {
        set.extend(list.iter().map(|c| c.get()));
    }
    Ok(f)
}
