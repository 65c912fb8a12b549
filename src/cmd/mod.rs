//! The subcommands, one file each; `main.rs` parses and dispatches.

pub mod apdu;
pub mod daemon;
pub mod info;
pub mod read;
pub mod scan;
pub mod serve;
pub mod sim;
pub mod status;
pub mod trace;

use std::time::Duration;

use clap::Args;

use simpool::control::client::{Control, ControlClientError};
use simpool::pool::{Link, LinkOptions, FACTORY_ADDRESS};
use simpool::sim::profile::CardsFile;
use simpool::sim::{Faults, SimPool};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Pool(#[from] simpool::pool::PoolError),
    #[error("cannot start the simulator: {0}")]
    Sim(String),
    #[error("{0}")]
    Card(String),
    #[error(transparent)]
    Control(#[from] ControlClientError),
}

/// Where client commands find the running daemon.
#[derive(Args, Clone, Debug)]
pub struct ControlArgs {
    /// The daemon's control API, HOST:PORT.
    #[arg(long, env = "SIMPOOL_CONTROL", default_value = simpool::config::DEFAULT_CONTROL)]
    pub control: String,
    /// File with the bearer token the daemon's control API requires.
    #[arg(long, env = "SIMPOOL_CONTROL_TOKEN")]
    pub control_token: Option<std::path::PathBuf>,
}

impl ControlArgs {
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
        Ok(Control {
            addr: self.control.clone(),
            token,
        })
    }
}

/// How client commands reach the pool: through the daemon when one answers, else directly.
#[derive(Args, Clone, Debug)]
pub struct PoolArgs {
    /// The pool, HOST:PORT, or `sim` for the built-in simulated pool. Given, the command opens a
    /// pool connection of its own; without it the command goes through the running daemon
    /// (see --control), or to the factory address 192.168.1.199:6666 when none answers.
    #[arg(long, env = "SIMPOOL_POOL")]
    pub pool: Option<String>,
    /// Longest wait for any answer of the pool, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub reply_timeout_ms: u64,
    /// Cards file for `--pool sim` (TOML; default: the built-in set).
    #[arg(long)]
    pub cards: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// A pool connection of this command's own (and the simulator behind `--pool sim`).
pub struct OwnPool {
    pub link: Link,
    pub _sim: Option<SimPool>,
}

/// Which way a client command goes.
pub enum Via {
    Daemon(Control),
    Pool(OwnPool),
}

impl PoolArgs {
    /// The daemon if one answers and no `--pool` was given; else a connection of our own.
    pub async fn via(&self) -> Result<Via, CliError> {
        let control = self.control.client()?;
        match self.pool.as_deref() {
            None => {
                if control.probe().await {
                    log::debug!("using the daemon on {}", control.addr);
                    return Ok(Via::Daemon(control));
                }
                log::debug!("no daemon on {}: dialling the pool", control.addr);
                Ok(Via::Pool(self.connect(FACTORY_ADDRESS).await?))
            }
            Some("sim") => Ok(Via::Pool(self.connect("sim").await?)),
            Some(addr) => {
                // Going around a running daemon can restart cards under its sessions: say so
                // (one line; without a daemon on the control address there is nothing to say).
                if control.probe().await {
                    eprintln!(
                        "simpool: warning: a simpool daemon on {} may be using this pool; \
                         --pool opens a connection of this command's own (leave it out to go \
                         through the daemon)",
                        control.addr
                    );
                }
                Ok(Via::Pool(self.connect(addr).await?))
            }
        }
    }

    /// Connects to `addr`, or starts the in-process simulator for `sim`.
    pub async fn connect(&self, addr: &str) -> Result<OwnPool, CliError> {
        let opts = LinkOptions {
            reply_timeout: Duration::from_millis(self.reply_timeout_ms.max(1)),
            ..LinkOptions::default()
        };
        if addr == "sim" {
            let cards = match &self.cards {
                Some(p) => load_cards(p)?,
                None => CardsFile::default_set(),
            };
            let sim = SimPool::start("127.0.0.1:0", cards, Faults::default())
                .await
                .map_err(|e| CliError::Sim(e.to_string()))?;
            let link = Link::connect(&sim.addr().to_string(), opts).await?;
            return Ok(OwnPool {
                link,
                _sim: Some(sim),
            });
        }
        Ok(OwnPool {
            link: Link::connect(addr, opts).await?,
            _sim: None,
        })
    }
}

pub fn parse_hex(s: &str) -> Result<Vec<u8>, CliError> {
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

pub fn load_cards(path: &std::path::Path) -> Result<CardsFile, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    CardsFile::from_toml(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

pub async fn wait_for_signal() {
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

/// A JSON value as a string cell: "-" when null.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
