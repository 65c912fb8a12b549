//! `simpool serve`: one pool link, one [`Reader`] per virtual reader.

use std::sync::Arc;

use crate::bridge::{Directory, Reader, ReaderConfig, ReaderStats};
use crate::config::ServeConfig;
use crate::pool::{Link, LinkOptions};
use crate::sim::profile::CardsFile;
use crate::sim::{Faults, SimPool};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the simulated pool: {0}")]
    Sim(String),
}

/// A running daemon.
pub struct Running {
    pub link: Link,
    /// The in-process simulator of `--pool sim`.
    pub sim: Option<SimPool>,
    pub readers: Vec<(String, Arc<ReaderStats>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops every reader (their vpcd connections close: pcscd sees the cards removed).
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.link.close();
    }
}

pub async fn start(cfg: ServeConfig) -> Result<Running, ServeError> {
    let (addr, sim) = if cfg.pool == "sim" {
        let cards = match &cfg.cards {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ServeError::Sim(format!("{}: {e}", p.display())))?;
                CardsFile::from_toml(&text)
                    .map_err(|e| ServeError::Sim(format!("{}: {e}", p.display())))?
            }
            None => CardsFile::default_set(),
        };
        let sim = SimPool::start("127.0.0.1:0", cards, Faults::default())
            .await
            .map_err(|e| ServeError::Sim(e.to_string()))?;
        log::info!("built-in simulated pool on {}", sim.addr());
        (sim.addr().to_string(), Some(sim))
    } else {
        (cfg.pool.clone(), None)
    };
    let link = Link::spawn(
        &addr,
        LinkOptions {
            reply_timeout: cfg.reply_timeout,
            keepalive: Some(cfg.keepalive),
            ..LinkOptions::default()
        },
    );
    let dir = Arc::new(Directory::default());
    let mut readers = Vec::new();
    let mut tasks = Vec::new();
    for (i, spec) in cfg.readers.iter().enumerate() {
        let name = format!("reader {i} ({})", spec.vpcd);
        let reader = Reader::new(
            name.clone(),
            link.clone(),
            ReaderConfig {
                vpcd: spec.vpcd.clone(),
                binding: spec.binding.clone(),
                command_timeout: cfg.command_timeout,
                reset: cfg.reset,
                quickack: cfg.quickack,
                retry: std::time::Duration::from_millis(500),
            },
            dir.clone(),
        );
        log::info!("{name}: bound to {}", spec.binding);
        readers.push((name, reader.stats()));
        tasks.push(tokio::spawn(reader.run()));
    }
    Ok(Running {
        link,
        sim,
        readers,
        tasks,
    })
}
