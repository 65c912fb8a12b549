//! The `simpool` command line: parses, sets up logging and the runtime, dispatches to `cmd/`.

mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cmd::{CliError, ControlArgs, PoolArgs};

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

#[derive(Subcommand)]
enum Command {
    /// Run a simulated pool (256 slots, simulated GSM SIMs) on TCP.
    Sim(cmd::sim::SimArgs),
    /// The pool's ID and firmware version.
    Info {
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// The 256 slot states (through the daemon: and who holds which card).
    Status {
        #[command(flatten)]
        pool: PoolArgs,
        /// Print JSON instead of the grid.
        #[arg(long)]
        json: bool,
    },
    /// Number, state, ATR, ICCID and IMSI of every inserted card (starts each free card).
    Scan {
        #[command(flatten)]
        pool: PoolArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve pool cards as PC/SC readers through vpcd (card N to the first reader, M to the next…).
    // Boxed: its many flags make it far larger than the other variants.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Print the GSMTAP SIM trace of `serve --gsmtap` decoded, one exchange per line.
    Trace(cmd::trace::TraceArgs),
    /// Read ATR, ICCID and IMSI of the cards in PC/SC readers (through pcscd, like any application).
    Read {
        /// Only readers whose name contains this.
        #[arg(long)]
        reader: Option<String>,
        /// Print JSON instead of text.
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
    /// The running daemon's readers: binding, state, card.
    Readers {
        #[command(flatten)]
        control: ControlArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Bind a reader of the running daemon to a card (pcscd sees the old card removed first).
    Bind {
        /// Reader index (0-based, as `simpool readers` shows).
        reader: String,
        #[command(flatten)]
        target: cmd::daemon::Target,
        #[command(flatten)]
        control: ControlArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Unbind a reader of the running daemon: pcscd sees no card in it.
    Unbind {
        /// Reader index (0-based).
        reader: String,
        #[command(flatten)]
        control: ControlArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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

async fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve").expect("serve matches");
            cmd::serve::run(*args, sub).await
        }
        Command::Read { reader, json, wait } => cmd::read::run(reader, json, wait).await,
        Command::Sim(args) => cmd::sim::run(args).await,
        Command::Trace(args) => cmd::trace::run(args).await,
        Command::Info { pool } => cmd::info::run(pool).await,
        Command::Status { pool, json } => cmd::status::run(pool, json).await,
        Command::Scan { pool, json } => cmd::scan::run(pool, json).await,
        Command::Apdu {
            pool,
            card,
            commands,
        } => cmd::apdu::run(pool, card, commands).await,
        Command::Readers { control, json } => cmd::daemon::readers(control, json).await,
        Command::Bind {
            reader,
            target,
            control,
            json,
        } => cmd::daemon::bind(control, reader, target, json).await,
        Command::Unbind {
            reader,
            control,
            json,
        } => cmd::daemon::unbind(control, reader, json).await,
    }
}
