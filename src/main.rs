//! The `simpool` command line: parses, sets up logging and the runtime, dispatches to `cmd/`.

mod cmd;

use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};

use cmd::{CliError, ControlArgs, PoolArgs};

/// Shown under every command's `--help` (and in the man pages): the same meaning everywhere.
const AFTER_HELP: &str = "\
Exit status (every command):
  0    done
  1    error: one line on stderr (pool or daemon unreachable, card refused or mute, held
       or reserved by another user, a reserve that found no free card in time, ...)
  2    usage: a wrong command line or configuration file
  3    partial: some cards or readers failed; each is reported in the output
  4    waiting: taken, but the card cannot show yet (bind, reserve --reader: an empty slot,
       a card held elsewhere or marked bad, no free card with that ICCID/IMSI); the
       binding (and the reservation) stays
  130  interrupted (Ctrl-C, SIGTERM) after stopping the cards the command had started;
       the daemons (serve, sim) end with 0 on SIGINT/SIGTERM, their normal way to stop
A closed standard output (e.g. `| head`) ends a command quietly with 0.

Settings: flag > environment (SIMPOOL_POOL, SIMPOOL_CONTROL, SIMPOOL_CONTROL_TOKEN,
SIMPOOL_CONTROL_SOCKET) > configuration
file (serve --config) > default. RUST_LOG, if set, wins over -v/-q.";

#[derive(Parser)]
#[command(
    name = "simpool",
    version,
    about = "SIM cards of a networked Lit-K13e-V53 SIM pool as PC/SC readers"
)]
struct Cli {
    /// More log output on stderr: -v one level more (info), -vv debug, -vvv trace.
    // A heading of their own: under a command's --help they come after its own options.
    #[arg(short, long, action = ArgAction::Count, global = true, help_heading = "Global options")]
    verbose: u8,
    /// Less log output on stderr: -q one level less, -qq none. The default level is info for
    /// `serve` and `sim`, warn for the other commands.
    #[arg(short, long, action = ArgAction::Count, global = true, help_heading = "Global options")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a simulated pool (256 slots, simulated GSM SIMs) on TCP.
    Sim(cmd::sim::SimArgs),
    /// The pool's ID and firmware version.
    Info {
        /// Print JSON: {"id","version"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// The 256 slot states (through the daemon: and who holds which card).
    Status {
        /// Print JSON instead of the grid: [{"card","state","holder"}, ...] (256 entries).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Number, state, ATR, ICCID and IMSI of every inserted card (starts each free card).
    Scan {
        /// Print JSON instead of a table: [{"card","state","atr","iccid","imsi","holder","error"}, ...].
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pool: PoolArgs,
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
        /// Print JSON instead of text: [{"reader","atr","iccid","imsi","error"}, ...].
        #[arg(long)]
        json: bool,
        /// Wait up to this many seconds for every reader to show a card.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Start a card and run commands (hex TPDUs/APDUs) through the T=0 terminal; stop it after.
    Apdu(cmd::apdu::ApduArgs),
    /// Stop (power down) a card, or every running card.
    #[command(override_usage = "simpool stop [OPTIONS] (--card <N> | --all)")]
    Stop(cmd::stop::StopArgs),
    /// The running daemon's readers: binding, state, card.
    Readers {
        /// Print JSON instead of a table: [{"reader","name","vpcd","binding","card","state",...}, ...].
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Bind a reader of the running daemon to a card (pcscd sees the old card removed first).
    #[command(
        override_usage = "simpool bind [OPTIONS] <READER> (--card <N> | --iccid <ICCID> | --imsi <IMSI>)"
    )]
    Bind {
        /// Reader index (0-based, as `simpool readers` shows).
        reader: String,
        #[command(flatten)]
        target: cmd::daemon::Target,
        /// Print JSON instead of text: the reader, as `readers --json` shows it.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Unbind a reader of the running daemon: pcscd sees no card in it.
    Unbind {
        /// Reader index (0-based).
        reader: String,
        /// Print JSON instead of text: the reader, as `readers --json` shows it.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Reserve a card of the running daemon for you until a time (SELECTION: --card, --iccid,
    /// --imsi, --label, --eid, --all; the first free one is taken).
    Reserve(cmd::reserve::ReserveArgs),
    /// Renew a reservation: it ends DUR from now.
    Renew {
        /// The reservation's id (as `reserve` printed it).
        id: simpool::reservations::ReservationId,
        /// How long from now (90s, 15m, 2h, 1d; at most 7d).
        #[arg(long = "for", value_name = "DUR", value_parser = cmd::reserve::duration)]
        for_: std::time::Duration,
        /// Print JSON: the reservation, as `reserve --json` shows it.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// End a reservation (yours, or anyone's as an admin): its reader is unbound, its card
    /// stopped and freed.
    Release {
        /// The reservation's id.
        id: simpool::reservations::ReservationId,
        /// Print JSON: the reservation that ended.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// The running daemon's reservations: card, user, reader, expiry, note.
    Reservations {
        /// Print JSON: [{"id","card","iccid","imsi","reader","reader_name","user","note","since","expires"}, ...].
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    Man {
        /// Write simpool.1 and simpool-COMMAND.1 here instead of printing simpool.1.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

/// The command line's definition, with the exit codes under every command's help.
fn cli_command() -> clap::Command {
    Cli::command()
        .after_help(AFTER_HELP)
        .mut_subcommands(|s| s.after_help(AFTER_HELP))
}

/// The log level: the command's default moved by -v/-q.
fn log_level(cli: &Cli) -> &'static str {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    // Long-running commands say what they do at the default level; one-shot commands only warn.
    let default = match cli.command {
        Command::Serve(_) | Command::Sim(_) => 3,
        _ => 2,
    };
    let i = (default + i32::from(cli.verbose) - i32::from(cli.quiet)).clamp(0, 5);
    LEVELS[i as usize]
}

fn main() -> ExitCode {
    let matches = cli_command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(log_level(&cli)))
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
            return ExitCode::from(cmd::EXIT_ERROR);
        }
    };
    match rt.block_on(run(cli, &matches)) {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing left to say to anyone.
        Err(CliError::ClosedPipe) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simpool: error: {e}");
            ExitCode::from(e.exit_code())
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
        Command::Info { pool, json } => cmd::info::run(pool, json).await,
        Command::Status { pool, json } => cmd::status::run(pool, json).await,
        Command::Scan { pool, json } => cmd::scan::run(pool, json).await,
        Command::Apdu(args) => cmd::apdu::run(args).await,
        Command::Stop(args) => cmd::stop::run(args).await,
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
        Command::Reserve(args) => cmd::reserve::reserve(args).await,
        Command::Renew {
            id,
            for_,
            json,
            control,
        } => cmd::reserve::renew(control, id, for_, json).await,
        Command::Release { id, json, control } => cmd::reserve::release(control, id, json).await,
        Command::Reservations { json, control } => cmd::reserve::list(control, json).await,
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cli_command(), "simpool", &mut buf);
            cmd::out_bytes(&buf)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            let page = cli_command();
            match dir {
                Some(d) => {
                    std::fs::create_dir_all(&d)
                        .and_then(|()| simpool::man::generate_to(page, &d))
                        .map_err(|e| CliError::Failed(format!("{}: {e}", d.display())))?;
                }
                None => {
                    let mut buf = Vec::new();
                    simpool::man::render(page, &mut buf)
                        .map_err(|e| CliError::Failed(e.to_string()))?;
                    cmd::out_bytes(&buf)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
