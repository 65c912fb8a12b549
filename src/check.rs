//! `simpool serve --check`: the daemon's start-up checks, run once, one verdict per line.
//!
//! The pool is reachable and answers ID and version; each reader's vpcd port accepts a
//! connection; each binding's card is in the pool; the control address is free; for a remsim
//! bank, the server accepts connections from the bank's address, the address it will give
//! clients, and the bank's listen address is free (else which bank holds it).

use std::time::Duration;

use crate::bridge::Binding;
use crate::cards::{Cards, Holder, Wanted};
use crate::config::ServeConfig;
use crate::pool::{Link, LinkOptions, SlotState};

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub item: String,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = if self.ok { "ok    " } else { "FAILED" };
        write!(f, "{word} {}: {}", self.item, self.detail)
    }
}

fn verdict(item: impl Into<String>, ok: bool, detail: impl Into<String>) -> Verdict {
    Verdict {
        item: item.into(),
        ok,
        detail: detail.into(),
    }
}

/// Runs every check; `pool_addr` is the resolved pool address (the simulator's for `sim`).
pub async fn run(cfg: &ServeConfig, pool_addr: &str) -> Vec<Verdict> {
    let mut out = Vec::new();
    let pool_item = if cfg.pool == "sim" {
        "pool (built-in simulator)".to_string()
    } else {
        format!("pool {}", cfg.pool)
    };
    let opts = LinkOptions {
        reply_timeout: cfg.reply_timeout,
        ..LinkOptions::default()
    };
    let link = match Link::connect(pool_addr, opts).await {
        Ok(l) => Some(l),
        Err(e) => {
            out.push(verdict(&pool_item, false, e.to_string()));
            None
        }
    };
    let mut states = None;
    if let Some(link) = &link {
        match (link.id().await, link.version().await) {
            (Ok(id), Ok(v)) => {
                out.push(verdict(
                    &pool_item,
                    true,
                    format!("ID {}, firmware {v}", hex::encode_upper(id)),
                ));
                states = link.states().await.ok();
            }
            (Err(e), _) | (_, Err(e)) => out.push(verdict(
                &pool_item,
                false,
                format!("connected, but {e}: is this a pool?"),
            )),
        }
    }
    for (i, r) in cfg.readers.iter().enumerate() {
        let item = format!("reader {i} vpcd {}", r.vpcd);
        let v = match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(&r.vpcd),
        )
        .await
        {
            Ok(Ok(_)) => verdict(item, true, "accepts connections (pcscd with vpcd is there)"),
            Ok(Err(e)) => verdict(item, false, crate::bridge::vpcd_problem(&r.vpcd, &e)),
            Err(_) => verdict(item, false, "no answer to connect within 2 s"),
        };
        out.push(v);
    }
    for (i, r) in cfg.readers.iter().enumerate() {
        let Some(b) = &r.binding else { continue };
        let item = format!("reader {i} {b}");
        let (Some(link), Some(st)) = (&link, &states) else {
            out.push(verdict(
                item,
                false,
                "not checked: the pool does not answer",
            ));
            continue;
        };
        let v = match b {
            Binding::Card(n) => match st[usize::from(n - 1)] {
                SlotState::Empty => verdict(item, false, "the slot is empty"),
                SlotState::Abnormal => verdict(item, false, "the slot reports abnormal"),
                s => verdict(item, true, format!("inserted ({})", slot_word(s))),
            },
            Binding::Iccid(x) | Binding::Imsi(x) => {
                let want = match b {
                    Binding::Iccid(_) => Wanted::Iccid(x),
                    _ => Wanted::Imsi(x),
                };
                let cards = Cards::new(link.clone(), Vec::new());
                match cards.find(&want, Holder::Scan, cfg.command_timeout).await {
                    Ok(lease) => {
                        let n = lease.number();
                        lease.release().await;
                        verdict(item, true, format!("found: card {n}"))
                    }
                    Err(e) => verdict(item, false, e.to_string()),
                }
            }
        };
        out.push(v);
    }
    if let Some(r) = &cfg.remsim {
        out.extend(remsim(r).await);
    }
    if let Some(addr) = &cfg.control {
        let item = format!("control API {addr}");
        let v = match crate::control::bind(addr, cfg.control_token.as_deref()).await {
            Ok(l) => {
                drop(l);
                verdict(item, true, "free")
            }
            Err(e) => verdict(item, false, e.to_string()),
        };
        out.push(v);
    }
    out
}

/// The bank's checks: the server answers (connected to from where the bank will connect),
/// the address the server will give clients, and the listen address is free (else who holds
/// it).
async fn remsim(r: &crate::config::RemsimSpec) -> Vec<Verdict> {
    use crate::remsim::{probe, reach};
    let mut out = Vec::new();
    let listening = tokio::net::lookup_host(&r.listen)
        .await
        .ok()
        .and_then(|mut a| a.next());
    // Only a TCP connect: registering would make the server push this bank's maps to a
    // connection about to close (and could unsettle a bank already running).
    let item = format!("remsim server {}", r.server);
    let source = listening.and_then(reach::source_for);
    let seen_as = match reach::connect_from(source, &r.server, Duration::from_secs(2)).await {
        Ok(s) => {
            let local = s.local_addr().ok();
            let from = local.map_or(String::new(), |a| format!(" from {}", a.ip()));
            out.push(verdict(item, true, format!("accepts connections{from}")));
            local
        }
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut => {
                    ": is osmo-remsim-server running there?"
                }
                _ => "",
            };
            out.push(verdict(item, false, format!("{e}{hint}")));
            None
        }
    };
    // Not connected: where a connection would come from is still known (the route).
    let seen_as = match seen_as {
        Some(a) => Some(a),
        None => reach::route_source(source, &r.server).await.ok(),
    };
    if let (Some(listening), Some(seen_as)) = (listening, seen_as) {
        let h = reach::judge(listening, seen_as);
        let mut detail = format!("the server will send them to {}", h.addr);
        for c in &h.concerns {
            let warning = if c.fails() { "" } else { "warning: " };
            detail.push_str(&format!("; {warning}{c}"));
        }
        let ok = !h.concerns.iter().any(|c| c.fails());
        out.push(verdict(
            format!("remsim bank {} clients", r.bank_id),
            ok,
            detail,
        ));
    }
    let item = format!("remsim bank listen {}", r.listen);
    let v = match crate::remsim::bank::listen(&r.listen).await {
        Ok(l) => {
            drop(l);
            verdict(item, true, "free")
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            verdict(item, false, probe::in_use(&r.listen).await)
        }
        Err(e) => verdict(item, false, e.to_string()),
    };
    out.push(v);
    out
}

fn slot_word(s: SlotState) -> &'static str {
    match s {
        SlotState::Working => "working",
        SlotState::Inserted => "idle",
        _ => "?",
    }
}
