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

JSON output (--json) is one row per line: a list is `[`, one compact row per line, `]`.
The daemon and pool options may come before the command too: simpool --control HOST:PORT readers
(--control, --control-token, --instance, --pool, --reply-timeout-ms, --cards, --force, --json).

Settings: flag > environment (SIMPOOL_POOL, SIMPOOL_CONTROL, SIMPOOL_CONTROL_TOKEN,
SIMPOOL_CONTROL_SOCKET, SIMPOOL_INSTANCE) > configuration
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
    /// Run a simulated pool (256 slots; simulated SIMs, USIMs and eUICCs) on TCP.
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
        /// Print JSON instead of the grid: [{"card","state","holder","labels","refused", …the card's facts}, ...] (256 entries).
        #[arg(long)]
        json: bool,
        /// Instead: each local instance (the NAME.toml files of /etc/simpool, or of
        /// $SIMPOOL_CONFIG_DIR) with its control address, pool, bank id and state. JSON:
        /// [{"instance","config","control","pool","bank_id","reachable","link","error"}, ...].
        #[arg(long)]
        all_instances: bool,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Number, state, ATR, ICCID and IMSI of every inserted card (starts each free card).
    Scan {
        /// Print JSON instead of a table: [{"card","state","atr","iccid","imsi","holder","error","labels"}, ...].
        #[arg(long)]
        json: bool,
        /// Only these cards: `18,256` or `1-16,18`.
        #[arg(long, value_name = "LIST")]
        card: Option<String>,
        /// Only the idle cards: leave out those someone holds (a reader, a request, a bank
        /// client) and those already running.
        #[arg(long)]
        free: bool,
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
    /// Run one authentication on a card: 3G with --autn (RES, CK, IK, Kc or AUTS), 2G without (SRES, Kc).
    Auth(cmd::auth::AuthArgs),
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
        override_usage = "simpool bind [OPTIONS] <READER> (--card <N> | --iccid <ICCID> | --imsi <IMSI> | --eid <EID> | --label <KEY=VALUE>...)"
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
    /// What happened to the cards: leases (holder, user, start, end, why, counters) and events.
    History(cmd::history::HistoryArgs),
    /// Show, set or remove a card's labels (KEY=VALUE; `--label` selects cards by them).
    Label(cmd::label::LabelArgs),
    /// Run a PC/SC program once per selected card, each on a free reader of the running daemon.
    Exec(cmd::exec::ExecArgs),
    /// exec's keeper: kills the runs of an exec that was killed (started by exec itself).
    #[command(name = "exec-guard", hide = true)]
    ExecGuard,
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

/// Options of the commands that may also come before the command's name (`simpool --control X
/// readers`): (option, whether it takes a value). They are moved behind the name, so that each
/// command still accepts exactly its own options and says so for the others.
const HOISTED: &[(&str, bool)] = &[
    ("--control", true),
    ("--control-token", true),
    ("--instance", true),
    ("--pool", true),
    ("--reply-timeout-ms", true),
    ("--cards", true),
    ("--force", false),
    ("--json", false),
];

/// The command line with the options of [`HOISTED`] given before the command moved behind it.
fn hoist_options(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::with_capacity(args.len());
    let mut moved = Vec::new();
    let mut it = args.into_iter();
    out.extend(it.next());
    while let Some(a) = it.next() {
        let text = a.to_string_lossy().into_owned();
        if text == "--" {
            out.append(&mut moved);
            out.push(a);
            out.extend(it);
            return out;
        }
        if !text.starts_with('-') {
            // The command: the moved options go right behind it.
            out.push(a);
            out.append(&mut moved);
            out.extend(it);
            return out;
        }
        let name = text.split('=').next().unwrap_or_default();
        match HOISTED.iter().find(|(o, _)| *o == name) {
            Some((_, takes_value)) => {
                moved.push(a);
                if *takes_value && !text.contains('=') {
                    moved.extend(it.next());
                }
            }
            None => out.push(a),
        }
    }
    out.append(&mut moved);
    out
}

/// Whether the command's `--pool` came from `SIMPOOL_POOL`.
fn pool_from_env(matches: &clap::ArgMatches) -> bool {
    matches.subcommand().is_some_and(|(_, m)| {
        m.ids().any(|i| i.as_str() == "pool")
            && m.value_source("pool") == Some(clap::parser::ValueSource::EnvVariable)
    })
}

fn main() -> ExitCode {
    let matches = cli_command().get_matches_from(hoist_options(std::env::args_os().collect()));
    cmd::POOL_FROM_ENV.store(
        pool_from_env(&matches),
        std::sync::atomic::Ordering::Relaxed,
    );
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
        Command::Status {
            all_instances: true,
            json,
            ..
        } => {
            // Not clap's conflicts: a SIMPOOL_POOL in the environment must not get in the way.
            let sub = matches
                .subcommand_matches("status")
                .expect("status matches");
            for id in ["pool", "control", "instance", "cards", "force"] {
                if sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine) {
                    return Err(CliError::Usage(format!(
                        "--all-instances asks every instance of this host: --{id} does not go \
                         with it"
                    )));
                }
            }
            cmd::instance::all(json).await
        }
        Command::Status { pool, json, .. } => cmd::status::run(pool, json).await,
        Command::Scan {
            pool,
            json,
            card,
            free,
        } => cmd::scan::run(pool, json, card, free).await,
        Command::Apdu(args) => cmd::apdu::run(args).await,
        Command::Auth(args) => cmd::auth::run(args).await,
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
        Command::History(args) => cmd::history::run(args).await,
        Command::Label(args) => cmd::label::run(args).await,
        Command::Exec(args) => cmd::exec::run(args).await,
        Command::ExecGuard => {
            simpool::exec::guard::run().await;
            Ok(ExitCode::SUCCESS)
        }
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

#[cfg(test)]
mod tests {
    use super::hoist_options;

    fn hoisted(line: &str) -> String {
        let args = line.split(' ').map(std::ffi::OsString::from).collect();
        let out: Vec<String> = hoist_options(args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        out.join(" ")
    }

    #[test]
    fn options_before_the_command_move_behind_it() {
        assert_eq!(
            hoisted("simpool --control 127.0.0.1:7 readers --json"),
            "simpool readers --control 127.0.0.1:7 --json"
        );
        assert_eq!(
            hoisted("simpool -v --pool=sim --json scan --card 18"),
            "simpool -v scan --pool=sim --json --card 18"
        );
        // Options after the command, and a line without a command, stay as they are.
        assert_eq!(
            hoisted("simpool info --pool sim"),
            "simpool info --pool sim"
        );
        assert_eq!(hoisted("simpool --pool sim"), "simpool --pool sim");
        assert_eq!(hoisted("simpool --help"), "simpool --help");
    }
}
