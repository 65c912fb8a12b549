//! `simpool serve --check`: the daemon's start-up checks, run once, one verdict per line.
//!
//! The pool is reachable and answers ID and version; each reader's vpcd port is there and
//! free (vpcd takes one client per port, so a port another simpool serves is named as such,
//! without queueing a connection there); each binding's card is in the pool; for a remsim
//! bank, the server accepts connections from the bank's address, the address it will give
//! clients, and the bank's listen address is free (else which bank holds it); the control
//! address is free. The checks leave nothing behind.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::bridge::Binding;
use crate::cards::{Cards, Holder};
use crate::config::{ReaderSpec, ServeConfig};
use crate::pool::{Link, LinkOptions, SlotState};

/// How long vpcd may take to take a connection: it does so at pcscd's presence poll, every
/// ~400 ms.
const VPCD_ACCEPT_WAIT: Duration = Duration::from_millis(1500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    let (link, states) = check_pool(cfg, pool_addr, &mut out).await;
    for (i, r) in cfg.readers.iter().enumerate() {
        out.push(check_vpcd(i, r).await);
    }
    for (i, r) in cfg.readers.iter().enumerate() {
        if let Some(b) = &r.binding {
            out.push(check_binding(cfg, i, b, link.as_ref(), states.as_deref()).await);
        }
    }
    if let Some(r) = &cfg.remsim {
        out.extend(check_remsim(r).await);
    }
    if let Some(p) = &cfg.state {
        let item = format!("state {}", p.display());
        out.push(match crate::daemon::check_state_path(p) {
            Ok(()) => verdict(item, true, "writable"),
            Err(e) => verdict(item, false, e),
        });
    }
    if let Some(addr) = &cfg.control {
        let item = format!("control API {addr}");
        out.push(
            match crate::control::bind(addr, cfg.control_token.as_deref()).await {
                Ok(l) => {
                    drop(l);
                    verdict(item, true, "free")
                }
                Err(e) => verdict(item, false, e.to_string()),
            },
        );
    }
    out
}

/// The pool answers ID and version; answers the link and the slot states for later checks.
async fn check_pool(
    cfg: &ServeConfig,
    pool_addr: &str,
    out: &mut Vec<Verdict>,
) -> (Option<Link>, Option<Vec<SlotState>>) {
    let item = if cfg.pool.is_sim() {
        "pool (built-in simulator)".to_string()
    } else {
        format!("pool {}", cfg.pool)
    };
    let opts = LinkOptions {
        reply_timeout: cfg.reply_timeout,
        ..LinkOptions::default()
    };
    let link = match Link::connect(pool_addr, opts).await {
        Ok(l) => l,
        Err(e) => {
            out.push(verdict(&item, false, e.to_string()));
            return (None, None);
        }
    };
    match (link.id().await, link.version().await) {
        (Ok(id), Ok(v)) => {
            out.push(verdict(
                &item,
                true,
                format!("ID {}, firmware {v}", hex::encode_upper(id)),
            ));
            let states = link.states().await.ok();
            (Some(link), states)
        }
        (Err(e), _) | (_, Err(e)) => {
            out.push(verdict(
                &item,
                false,
                format!("connected, but {e}: is this a pool?"),
            ));
            (Some(link), None)
        }
    }
}

/// vpcd is there and this port is free. A port another client holds is named as such from
/// the kernel's socket table, without connecting: vpcd takes one client per port, and a
/// connection it does not take stays queued at its socket, making every later connect wait.
async fn check_vpcd(i: usize, r: &ReaderSpec) -> Verdict {
    let item = format!("reader {i} vpcd {}", r.vpcd);
    let targets: Vec<SocketAddr> = match tokio::net::lookup_host(&r.vpcd).await {
        Ok(a) => a.collect(),
        Err(e) => return verdict(item, false, crate::bridge::vpcd_problem(&r.vpcd, &e)),
    };
    let port = targets.first().map_or(0, SocketAddr::port);
    match socket_table::busy(&targets) {
        Some(socket_table::Busy::Served) => {
            return verdict(
                item,
                false,
                format!("vpcd port {port} is already served (by another simpool?)"),
            )
        }
        Some(socket_table::Busy::Queued) => {
            return verdict(
                item,
                false,
                format!(
                    "vpcd port {port} has a connection queued that vpcd has not taken (another \
                     client, or pcscd stuck?)"
                ),
            )
        }
        None => {}
    }
    let mut s = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&r.vpcd))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return verdict(item, false, crate::bridge::vpcd_problem(&r.vpcd, &e)),
        Err(_) => return verdict(item, false, "no answer to connect within 2 s"),
    };
    // vpcd takes the connection at pcscd's next presence poll and asks at once (for the ATR):
    // wait for that, so that the check leaves no connection queued behind it.
    let mut byte = [0u8; 1];
    match tokio::time::timeout(VPCD_ACCEPT_WAIT, s.read(&mut byte)).await {
        Ok(Ok(_)) => verdict(item, true, "accepts connections (pcscd with vpcd is there)"),
        Ok(Err(e)) => verdict(item, false, crate::bridge::vpcd_problem(&r.vpcd, &e)),
        Err(_) => verdict(
            item,
            false,
            format!(
                "vpcd port {port} did not take the connection within {} ms: is another client \
                 (a second simpool?) connected to it, or is pcscd not polling?",
                VPCD_ACCEPT_WAIT.as_millis()
            ),
        ),
    }
}

/// The binding's card is in the pool (an identity: a free inserted card has it).
async fn check_binding(
    cfg: &ServeConfig,
    i: usize,
    b: &Binding,
    link: Option<&Link>,
    states: Option<&[SlotState]>,
) -> Verdict {
    let item = format!("reader {i} {b}");
    let (Some(link), Some(st)) = (link, states) else {
        return verdict(item, false, "not checked: the pool does not answer");
    };
    match (b, b.wanted()) {
        (Binding::Card(n), _) => match st[n.index()] {
            SlotState::Empty => verdict(item, false, "the slot is empty"),
            SlotState::Abnormal => verdict(item, false, "the slot reports abnormal"),
            s => verdict(item, true, format!("inserted ({})", slot_word(s))),
        },
        (_, Some(want)) => {
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
        (_, None) => unreachable!("identity bindings have a search"),
    }
}

/// The bank's checks: the server answers (connected to from where the bank will connect),
/// the address the server will give clients, and the listen address is free (else who holds
/// it).
async fn check_remsim(r: &crate::config::RemsimSpec) -> Vec<Verdict> {
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

/// This host's TCP sockets as the kernel lists them (`/proc/net/tcp`, `/proc/net/tcp6`).
mod socket_table {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// Why a vpcd port cannot take a new client.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Busy {
        /// A connection to it is established (vpcd serves another client).
        Served,
        /// Its listening socket has connections queued that vpcd has not taken.
        Queued,
    }

    const ESTABLISHED: u8 = 0x01;
    const LISTEN: u8 = 0x0A;

    /// Whether any of `targets` is busy, as far as this host's socket table tells (nothing
    /// is known of a vpcd on another host).
    pub fn busy(targets: &[SocketAddr]) -> Option<Busy> {
        let mut text = String::new();
        for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
            text.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        }
        busy_in(&text, targets)
    }

    pub fn busy_in(table: &str, targets: &[SocketAddr]) -> Option<Busy> {
        let mut queued = false;
        for line in table
            .lines()
            .skip_while(|l| l.trim_start().starts_with("sl"))
        {
            let Some(e) = Entry::parse(line) else {
                continue;
            };
            let is_target = |a: &SocketAddr| targets.iter().any(|t| same(t, a));
            if e.state == ESTABLISHED && (is_target(&e.local) || is_target(&e.remote)) {
                return Some(Busy::Served);
            }
            let listens_here = targets.iter().any(|t| {
                t.port() == e.local.port() && (e.local.ip().is_unspecified() || same(t, &e.local))
            });
            if e.state == LISTEN && listens_here && e.rx_queue > 0 {
                queued = true;
            }
        }
        queued.then_some(Busy::Queued)
    }

    fn same(a: &SocketAddr, b: &SocketAddr) -> bool {
        a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
    }

    fn canonical(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }

    struct Entry {
        local: SocketAddr,
        remote: SocketAddr,
        state: u8,
        rx_queue: u32,
    }

    impl Entry {
        /// `sl local rem st tx_queue:rx_queue …`, addresses in the kernel's hex.
        fn parse(line: &str) -> Option<Entry> {
            let mut f = line.split_whitespace().skip(1);
            let local = addr(f.next()?)?;
            let remote = addr(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            let (_, rx) = f.next()?.split_once(':')?;
            Some(Entry {
                local,
                remote,
                state,
                rx_queue: u32::from_str_radix(rx, 16).ok()?,
            })
        }
    }

    /// `0100007F:8C7B` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host byte order.
    fn addr(s: &str) -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let words: Vec<u32> = (0..ip.len() / 8)
            .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok())
            .collect::<Option<_>>()?;
        let ip = match words[..] {
            [w] => IpAddr::V4(Ipv4Addr::from(w.to_le_bytes())),
            [a, b, c, d] => {
                let mut bytes = [0u8; 16];
                for (i, w) in [a, b, c, d].iter().enumerate() {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const TABLE: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:8C7B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:8C7B 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D2A4 0100007F:8C7B 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 00000000:8C7C 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 4 1
";

        #[test]
        fn served_and_queued_ports_are_told_apart_from_free_ones() {
            let at = |p: u16| [SocketAddr::from(([127, 0, 0, 1], p))];
            // 0x8C7B = 35963: vpcd listens, and a client is connected.
            assert_eq!(busy_in(TABLE, &at(35963)), Some(Busy::Served));
            // 35964: nobody connected, but a connection waits in the queue.
            assert_eq!(busy_in(TABLE, &at(35964)), Some(Busy::Queued));
            assert_eq!(busy_in(TABLE, &at(35965)), None);
            let v6 = "   0: 0000000000000000FFFF00000100007F:8C7B 0000000000000000FFFF00000100007F:D2A4 01 00000000:00000000 00:00000000 00000000 0 0 5 1\n";
            assert_eq!(busy_in(v6, &at(35963)), Some(Busy::Served));
        }
    }
}
