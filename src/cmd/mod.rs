//! The subcommands, one file each; `main.rs` parses and dispatches.

pub mod apdu;
pub mod daemon;
pub mod info;
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

/// Prints `v` as one JSON document.
pub fn out_json(v: &impl serde::Serialize) -> Result<(), CliError> {
    out(serde_json::to_string_pretty(v).unwrap_or_default())
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

/// Where client commands find the running daemon.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Daemon")]
pub struct ControlArgs {
    /// The daemon's control API, HOST:PORT [default: 127.0.0.1:6680].
    #[arg(long, env = "SIMPOOL_CONTROL")]
    pub control: Option<String>,
    /// File with the bearer token the daemon's control API requires.
    #[arg(long, env = "SIMPOOL_CONTROL_TOKEN")]
    pub control_token: Option<std::path::PathBuf>,
    /// The daemon's Unix control socket (the kernel names you: no token needed) [default:
    /// /run/simpool/control.sock when it is there and neither --control nor a token is given].
    #[arg(long, env = "SIMPOOL_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<std::path::PathBuf>,
}

impl ControlArgs {
    /// The Unix socket to use, if any: the one given, else the service's when it is there
    /// and no TCP address or token was given.
    fn socket(&self) -> Option<std::path::PathBuf> {
        if let Some(p) = &self.control_socket {
            return (p.as_os_str() != "off").then(|| p.clone());
        }
        let service = std::path::Path::new(simpool::control::client::SERVICE_SOCKET);
        (self.control.is_none() && self.control_token.is_none() && service.exists())
            .then(|| service.to_path_buf())
    }

    pub fn client(&self) -> Result<Control, CliError> {
        let token = match &self.control_token {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", p.display())))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let socket = self.socket();
        Ok(Control {
            addr: match &socket {
                Some(p) => format!("unix:{}", p.display()),
                None => self
                    .control
                    .clone()
                    .unwrap_or_else(|| simpool::config::DEFAULT_CONTROL.into()),
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

impl PoolArgs {
    /// The daemon if one answers and no `--pool` was given; else a connection of our own. A
    /// daemon that refuses us for want of its token is final; a `--pool` naming the pool a
    /// running daemon uses is refused unless `--force`.
    pub async fn via(&self) -> Result<Via, CliError> {
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
                self.check_around_daemon(&control, a).await?;
                Ok(Via::Pool(self.open(addr).await?))
            }
        }
    }

    /// Refuses to go around a running daemon that uses pool `a` (or cannot be asked), unless
    /// `--force`; says so when forced.
    async fn check_around_daemon(&self, control: &Control, a: &str) -> Result<(), CliError> {
        let conflict = match control.probe().await {
            Probe::Nothing(_) => return Ok(()),
            Probe::Daemon(h) if !same_pool(a, &h.pool).await => return Ok(()),
            Probe::Daemon(_) => format!("the daemon on {} uses pool {a}", control.addr),
            Probe::NeedsToken(e) => format!("{e}; it may be using pool {a}"),
        };
        if !self.force {
            return Err(CliError::Card(format!(
                "{conflict}: leave out --pool to go through the daemon, or give --force to open                  a connection of this command's own anyway (the daemon's sessions can break)"
            )));
        }
        eprintln!("simpool: warning: {conflict}; going around it (--force)");
        Ok(())
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

/// A value as a table cell: "-" when there is none.
pub fn cell(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}
