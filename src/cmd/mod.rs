//! The subcommands, one file each; `main.rs` parses and dispatches.

pub mod apdu;
pub mod auth;
pub mod daemon;
pub mod exec;
pub mod history;
pub mod info;
pub mod instance;
pub mod label;
pub mod read;
pub mod reserve;
pub mod scan;
pub mod serve;
pub mod sim;
pub mod status;
pub mod stop;
pub mod trace;

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};

use simpool::cards::Cards;
use simpool::control::client::{Control, ControlClientError, Probe};
use simpool::pool::{Link, LinkOptions};
use simpool::sim::profile::CardsFile;
use simpool::values::{OpenedPool, PoolAddr};

/// Exit codes, the same meaning for every command (listed in `--help` and the README).
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_PARTIAL: u8 = 3;
pub const EXIT_WAITING: u8 = 4;
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A wrong command line or configuration (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Standard output was closed under us (`| head`): end quietly.
    #[error("standard output closed")]
    ClosedPipe,
    #[error("writing the output: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Pool(#[from] simpool::pool::PoolError),
    #[error("cannot start the simulator: {0}")]
    Sim(String),
    #[error("{0}")]
    Card(String),
    #[error(transparent)]
    Control(#[from] ControlClientError),
    /// The request was taken, but what it asked for cannot show yet (exit 4).
    #[error("{0}")]
    Waiting(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::ClosedPipe => 0,
            CliError::Waiting(_) => EXIT_WAITING,
            _ => EXIT_ERROR,
        }
    }
}

/// Writes one line to standard output. A closed pipe (`simpool scan | head -1`) is an answer,
/// not a crash: it comes back as [`CliError::ClosedPipe`], so a command can still stop the
/// cards it started before it ends quietly. (Rust ignores SIGPIPE, so `println!` would panic;
/// restoring SIGPIPE's default instead would kill the process before that cleanup.)
pub fn out(line: impl std::fmt::Display) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{line}")
        .and_then(|()| o.flush())
        .map_err(write_error)
}

/// Writes bytes as they are to standard output (a generated script or page).
pub fn out_bytes(bytes: &[u8]) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    o.write_all(bytes)
        .and_then(|()| o.flush())
        .map_err(write_error)
}

/// Prints `v` as JSON, one row per line: a list is `[`, its rows (each compact, on a line of
/// its own, `,` after all but the last) and `]`; anything else is one compact line. The same
/// on a terminal and in a pipe: `grep` and `head` work by row, `jq .` pretty-prints.
pub fn out_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    out(json_rows(v))
}

/// The text [`out_json`] prints (without the final newline).
pub fn json_rows(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Array(rows)) if !rows.is_empty() => {
            let rows: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
            format!("[\n{}\n]", rows.join(",\n"))
        }
        Ok(v) => v.to_string(),
        Err(e) => format!("{{\"error\":{}}}", serde_json::Value::from(e.to_string())),
    }
}

fn write_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::ClosedPipe
    } else {
        CliError::Output(e)
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, registered when created: a command that starts cards makes one
/// first, so an interruption at any later point is seen and the cards are stopped.
pub struct Interrupt {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        async fn one(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.int) => {}
            _ = one(&mut self.term) => {}
        }
    }
}

/// Where client commands find the running daemon: one daemon per call (see `instance`).
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Daemon")]
pub struct ControlArgs {
    /// The daemon's control API, HOST:PORT [env: SIMPOOL_CONTROL] [default: 127.0.0.1:6680].
    #[arg(long, value_name = "HOST:PORT")]
    pub control: Option<String>,
    /// The daemon of instance NAME (simpool@NAME.service): the control address (and token
    /// file) in its configuration /etc/simpool/NAME.toml ($SIMPOOL_CONFIG_DIR/NAME.toml when
    /// set) [env: SIMPOOL_INSTANCE].
    #[arg(long, value_name = "NAME", conflicts_with = "control")]
    pub instance: Option<String>,
    /// File with the bearer token the daemon's control API requires.
    #[arg(long, env = "SIMPOOL_CONTROL_TOKEN")]
    pub control_token: Option<std::path::PathBuf>,
    /// The daemon's Unix control socket (the kernel names you: no token needed) [default:
    /// /run/simpool/control.sock when it is there and neither --control nor a token is given].
    #[arg(long, env = "SIMPOOL_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<std::path::PathBuf>,
}

impl ControlArgs {
    /// The Unix socket to use, if any: the one given, else — when no token is given — the
    /// service's when no other daemon is named, or instance NAME's (/run/simpool/NAME/) when
    /// that instance is named; each only when it is there.
    fn socket(&self, t: &instance::Target) -> Option<std::path::PathBuf> {
        if let Some(p) = &self.control_socket {
            return (p.as_os_str() != "off").then(|| p.clone());
        }
        if self.control_token.is_some() || t.token.is_some() {
            return None;
        }
        let named = self.control.is_some()
            || std::env::var_os("SIMPOOL_CONTROL").is_some_and(|v| !v.is_empty());
        let path = match &t.instance {
            Some(name) => std::path::Path::new(simpool::control::client::SERVICE_SOCKET)
                .with_file_name(name)
                .join("control.sock"),
            None if !named => simpool::control::client::SERVICE_SOCKET.into(),
            None => return None,
        };
        path.exists().then_some(path)
    }

    pub fn client(&self) -> Result<Control, CliError> {
        let t = instance::target(self.control.as_deref(), self.instance.as_deref())?;
        let token = match (&self.control_token, &t.token) {
            (Some(p), _) => Some(instance::read_token(p, None)?),
            (None, Some(p)) => Some(instance::read_token(p, t.instance.as_deref())?),
            (None, None) => None,
        };
        let socket = self.socket(&t);
        Ok(Control {
            addr: match &socket {
                Some(p) => format!("unix:{}", p.display()),
                None => t.addr,
            },
            token,
            socket,
        })
    }
}

/// How client commands reach the pool: through the daemon when one answers, else directly.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Pool")]
pub struct PoolArgs {
    /// The pool, HOST:PORT, or `sim` for the built-in simulated pool. Given, the command opens a
    /// pool connection of its own (refused when the running daemon uses that pool, unless
    /// --force); without it the command goes through the running daemon (see --control), or
    /// to the factory address 192.168.1.199:6666 when none answers.
    #[arg(long, env = "SIMPOOL_POOL")]
    pub pool: Option<PoolAddr>,
    /// Longest wait for any answer of the pool, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub reply_timeout_ms: u64,
    /// Cards file for `--pool sim` (TOML; default: the built-in set).
    #[arg(long)]
    pub cards: Option<std::path::PathBuf>,
    /// Go ahead where simpool would refuse to disturb a running daemon: with --pool, use a pool
    /// the daemon on --control uses (or that cannot be asked for want of its token) over a
    /// connection of this command's own; `stop`: also stop cards a reader or request holds
    /// (its session breaks; a reader shows the card removed and starts it again).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// A pool connection of this command's own (and the simulator behind `--pool sim`), with a
/// card registry around it, so the command runs the same card operations as the daemon.
pub struct OwnPool {
    pub cards: Cards,
    _opened: OpenedPool,
}

impl OwnPool {
    pub fn link(&self) -> &Link {
        self.cards.link()
    }

    /// Before the command ends: waits until every lease is over (the cards it started are
    /// stopped) and the pool has received every request.
    pub async fn finish(&self) {
        if !self.cards.idle(Duration::from_secs(5)).await {
            log::warn!("some cards were still held when the command ended");
        }
        settle(self.link()).await;
    }
}

/// Which way a client command goes.
pub enum Via {
    Daemon(Control),
    Pool(OwnPool),
}

/// Whether `--pool` came from `SIMPOOL_POOL` rather than the command line (set by `main` from
/// clap's value source), so hints name what the user actually set.
pub static POOL_FROM_ENV: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl PoolArgs {
    /// How the user named the pool: `--pool X` or `SIMPOOL_POOL=X`.
    fn named(&self, a: &str) -> String {
        if POOL_FROM_ENV.load(std::sync::atomic::Ordering::Relaxed) {
            format!("SIMPOOL_POOL={a}")
        } else {
            format!("--pool {a}")
        }
    }

    /// `--cards` is the simulated pool's: given with any other pool (or none, through the
    /// daemon) it would be ignored, so it is refused.
    fn refuse_cards_off_sim(&self) -> Result<(), CliError> {
        match (&self.cards, &self.pool) {
            (Some(_), Some(PoolAddr::Sim)) | (None, _) => Ok(()),
            (Some(f), Some(PoolAddr::Tcp(a))) => Err(CliError::Usage(format!(
                "--cards {} is for the simulated pool (--pool sim); {} is a real pool, whose \
                 cards are the ones inserted",
                f.display(),
                self.named(a)
            ))),
            (Some(f), None) => Err(CliError::Usage(format!(
                "--cards {} is for the simulated pool: give --pool sim (without --pool the \
                 command goes through the running daemon, whose cards are its pool's)",
                f.display()
            ))),
        }
    }

    /// The daemon if one answers and no `--pool` was given; else a connection of our own. A
    /// daemon that refuses us for want of its token is final; a `--pool` naming the pool a
    /// running daemon uses is refused unless `--force`.
    pub async fn via(&self) -> Result<Via, CliError> {
        self.refuse_cards_off_sim()?;
        let control = self.control.client()?;
        match &self.pool {
            Some(PoolAddr::Sim) => Ok(Via::Pool(self.open(&PoolAddr::Sim).await?)),
            None => match control.probe().await {
                Probe::Daemon(_) => {
                    log::debug!("using the daemon on {}", control.addr);
                    Ok(Via::Daemon(control))
                }
                Probe::NeedsToken(e) => Err(e.into()),
                Probe::Nothing(cause) => {
                    log::debug!("no daemon on {}: dialling the pool", control.addr);
                    self.open(&PoolAddr::factory())
                        .await
                        .map(Via::Pool)
                        .map_err(|e| {
                            CliError::Failed(format!(
                                "no simpool daemon answers on {} ({cause}); {e}",
                                control.addr
                            ))
                        })
                }
            },
            Some(addr @ PoolAddr::Tcp(a)) => {
                let daemon = self.check_around_daemon(&control, a).await?;
                self.open(addr).await.map(Via::Pool).map_err(|e| {
                    match (
                        POOL_FROM_ENV.load(std::sync::atomic::Ordering::Relaxed),
                        daemon,
                    ) {
                        (true, true) => CliError::Failed(format!(
                            "{e} (the pool from SIMPOOL_POOL; unset it to go through the \
                             daemon on {})",
                            control.addr
                        )),
                        (true, false) => {
                            CliError::Failed(format!("{e} (the pool from SIMPOOL_POOL)"))
                        }
                        (false, _) => e,
                    }
                })
            }
        }
    }

    /// Refuses to go around a running daemon that uses pool `a` (or cannot be asked), unless
    /// `--force`; says so when forced. A daemon on its built-in simulated pool shares no pool
    /// with any address. Answers whether a daemon answered.
    async fn check_around_daemon(&self, control: &Control, a: &str) -> Result<bool, CliError> {
        let conflict = match control.probe().await {
            Probe::Nothing(_) => return Ok(false),
            Probe::Daemon(h) if !same_pool(a, &h.pool).await => return Ok(true),
            Probe::Daemon(_) => format!("the daemon on {} uses pool {a}", control.addr),
            Probe::NeedsToken(e) => format!("{e}; it may be using pool {a}"),
        };
        let named = self.named(a);
        if !self.force {
            let leave_out = if POOL_FROM_ENV.load(std::sync::atomic::Ordering::Relaxed) {
                "unset SIMPOOL_POOL"
            } else {
                "leave out --pool"
            };
            return Err(CliError::Card(format!(
                "{conflict} ({named}): {leave_out} to go through the daemon, or give --force to \
                 open a connection of this command's own anyway (the daemon's sessions can \
                 break)"
            )));
        }
        eprintln!("simpool: warning: {conflict} ({named}); going around it (--force)");
        Ok(true)
    }

    /// Connects to `addr`, or starts the in-process simulator for `sim`.
    pub async fn open(&self, addr: &PoolAddr) -> Result<OwnPool, CliError> {
        let opts = LinkOptions {
            reply_timeout: Duration::from_millis(self.reply_timeout_ms.max(1)),
            ..LinkOptions::default()
        };
        let cards = match (&self.cards, addr) {
            (Some(p), PoolAddr::Sim) => Some(load_cards(p)?),
            _ => None,
        };
        let opened = addr.open(cards).await.map_err(CliError::Sim)?;
        let link = Link::connect(&opened.addr, opts).await?;
        Ok(OwnPool {
            cards: Cards::new(link, Vec::new()),
            _opened: opened,
        })
    }
}

/// Whether two pool addresses name the same pool: the same text, or an address in common
/// once resolved.
async fn same_pool(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let resolve = |s: &str| {
        let s = s.to_string();
        async move {
            tokio::net::lookup_host(s)
                .await
                .map(|i| i.collect::<Vec<_>>())
                .unwrap_or_default()
        }
    };
    let (x, y) = (resolve(a).await, resolve(b).await);
    x.iter().any(|p| y.contains(p))
}

/// Runs `work` unless interrupted first (SIGINT, SIGTERM): `None` then. Dropping `work` is
/// how it stops (its leases end, stopping their cards).
pub async fn interruptible<F: Future>(interrupt: &mut Interrupt, work: F) -> Option<F::Output> {
    tokio::select! {
        r = work => Some(r),
        _ = interrupt.recv() => None,
    }
}

/// Waits until the pool has received every request sent so far on `link`. A stop is sent
/// without an answer; the pool handles requests in order, so the answer to a later slot-state
/// query proves the stops arrived (before the process ends and takes the connection with it).
pub async fn settle(link: &Link) {
    if let Err(e) = link.states().await {
        log::warn!("the pool did not confirm the last requests: {e}");
    }
}

pub fn load_cards(path: &std::path::Path) -> Result<CardsFile, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    CardsFile::from_toml(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

pub async fn wait_for_signal() {
    Interrupt::new().recv().await
}

/// The width table rows may take: the terminal's when standard output is one (100 when it
/// does not say), else none: a pipe or file gets whole rows.
pub fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let cols = rustix::termios::tcgetwinsize(&stdout)
        .map(|w| usize::from(w.ws_col))
        .unwrap_or(0);
    Some(if cols == 0 { 100 } else { cols })
}

/// `line` cut to `width` characters, its last one the marker `…`, when it is longer.
pub fn fit(line: &str, width: Option<usize>) -> String {
    match width {
        Some(w) if line.chars().count() > w => {
            let mut s: String = line.chars().take(w.saturating_sub(1)).collect();
            s.push('…');
            s
        }
        _ => line.to_string(),
    }
}

/// `text` in lines of at most `width` characters, broken at spaces, each after `indent`.
pub fn wrap(indent: &str, text: &str, width: Option<usize>) -> Vec<String> {
    let Some(w) = width.map(|w| w.saturating_sub(indent.len()).max(20)) else {
        return vec![format!("{indent}{text}")];
    };
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > w {
            lines.push(format!("{indent}{}", fit(&cur, Some(w))));
            cur.clear();
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    lines.push(format!("{indent}{}", fit(&cur, Some(w))));
    lines
}

/// A value as a table cell: "-" when there is none.
pub fn cell(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_cut_with_a_marker_and_notes_wrapped() {
        assert_eq!(fit("abcdef", Some(4)), "abc…");
        assert_eq!(fit("abcdef", Some(6)), "abcdef");
        assert_eq!(fit("abcdef", None), "abcdef");
        let w = wrap(
            "  ",
            "one two three four five six seven eight nine ten",
            Some(24),
        );
        assert!(
            w.len() > 1 && w.iter().all(|l| l.chars().count() <= 24),
            "{w:?}"
        );
        assert_eq!(w.join(" ").split_whitespace().count(), 10);
    }

    #[test]
    fn json_is_one_row_per_line() {
        assert_eq!(
            json_rows(&serde_json::json!([{"a": 1}, {"a": 2}])),
            "[\n{\"a\":1},\n{\"a\":2}\n]"
        );
        assert_eq!(
            json_rows(&serde_json::json!({"a": [1, 2]})),
            "{\"a\":[1,2]}"
        );
        assert_eq!(json_rows(&Vec::<u8>::new()), "[]");
    }
}
