//! Where osmo-remsim-server sends this bank's clients, and whether they can get there.
//!
//! RSPRO 1.0.0 has no field for a bank's address. The server tells a client "your bank is at
//! the address its control connection comes from, port 9999": osmo-remsim 1.0.0,
//! src/server/rspro_server.c, `_update_client_for_slotmap` takes the peer address of the
//! bank's socket (`osmo_sock_get_ip_and_port(..., false)`, i.e. getpeername), turns it into an
//! IPv4 number with `inet_addr`, and sets the port to 9999 ("TODO: configurable"). So a bank
//! that listens on one address of its own must also connect to the server from it, and a
//! listener on another port is never handed out.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// The port osmo-remsim-server 1.0.0 hands out for every bank.
pub const HANDED_OUT_PORT: u16 = 9999;

/// The address the control connection must come from: the listener's, when it listens on one
/// address; the kernel's choice when it listens on all of them.
pub fn source_for(listening: SocketAddr) -> Option<IpAddr> {
    (!listening.ip().is_unspecified()).then(|| listening.ip())
}

/// Connects to the server (HOST:PORT) from `source` (any port), within `wait` per address.
pub async fn connect_from(
    source: Option<IpAddr>,
    server: &str,
    wait: Duration,
) -> std::io::Result<TcpStream> {
    let mut last = None;
    let mut tried = false;
    for a in tokio::net::lookup_host(server).await? {
        if source.is_some_and(|s| s.is_ipv4() != a.is_ipv4()) {
            continue;
        }
        tried = true;
        let socket = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot connect from {ip}: {e}"))
            })?;
        }
        match tokio::time::timeout(wait, socket.connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to connect within {} s", wait.as_secs()),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        let why = match (tried, source) {
            (false, Some(ip)) => format!(
                "{server} has no {} address to reach from {ip}",
                if ip.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
            _ => format!("{server}: no address"),
        };
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why)
    }))
}

/// The local address a connection to the server would have, without connecting: the
/// kernel's route lookup for a UDP socket (no packet is sent). For `serve --check` when the
/// server does not answer.
pub async fn route_source(source: Option<IpAddr>, server: &str) -> std::io::Result<SocketAddr> {
    let a = tokio::net::lookup_host(server)
        .await?
        .find(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let any: IpAddr = if a.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let u = std::net::UdpSocket::bind(SocketAddr::new(source.unwrap_or(any), 0))?;
    u.connect(a)?;
    u.local_addr()
}

/// What the server will tell clients, judged against where the bank listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandOut {
    /// The address clients are sent to.
    pub addr: SocketAddr,
    pub concerns: Vec<Concern>,
}

/// Why clients may not reach the bank at the address handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concern {
    /// The bank listens on another port than the one handed out: its clients go to whatever
    /// listens on ADDR:9999 (another bank on this host, or nothing).
    Port { listening: u16 },
    /// Listening on every address, reached over loopback: clients on other hosts are sent to
    /// their own loopback.
    Loopback,
    /// osmo-remsim-server 1.0.0 hands out IPv4 addresses only.
    NotIpv4,
}

impl Concern {
    /// A problem (clients do not reach the bank), not only a warning.
    pub fn fails(&self) -> bool {
        !matches!(self, Concern::Loopback)
    }
}

impl fmt::Display for Concern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Concern::Port { listening } => write!(
                f,
                "this bank listens on port {listening}, not {HANDED_OUT_PORT} (the port the \
                 server always hands out): its clients reach whatever listens on port \
                 {HANDED_OUT_PORT} there (another bank, or nothing)"
            ),
            Concern::Loopback => write!(
                f,
                "a loopback address: only clients on this host reach this bank; for clients \
                 on other hosts, give --remsim-listen (listen in [remsim]) an address of this \
                 host they reach, port {HANDED_OUT_PORT} (the bank then connects to the server \
                 from it), or name the server by an address that is not loopback"
            ),
            Concern::NotIpv4 => write!(
                f,
                "not IPv4: osmo-remsim-server 1.0.0 hands clients IPv4 addresses only, so \
                 they cannot be sent to this bank"
            ),
        }
    }
}

/// `listening`: the bank's listener; `seen_as`: the local address of its control connection,
/// which is what the server sees (barring NAT between them).
pub fn judge(listening: SocketAddr, seen_as: SocketAddr) -> HandOut {
    let ip = match seen_as.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let addr = SocketAddr::new(ip, HANDED_OUT_PORT);
    let mut concerns = Vec::new();
    if listening.port() != HANDED_OUT_PORT {
        concerns.push(Concern::Port {
            listening: listening.port(),
        });
    }
    if !ip.is_ipv4() {
        concerns.push(Concern::NotIpv4);
    } else if ip.is_loopback() && listening.ip().is_unspecified() {
        // Chosen on purpose when the listener names a loopback address: no warning then.
        concerns.push(Concern::Loopback);
    }
    HandOut { addr, concerns }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_listener_address_is_the_source_unless_it_is_every_address() {
        assert_eq!(
            source_for(sa("127.0.0.2:9999")),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(source_for(sa("0.0.0.0:9999")), None);
        assert_eq!(source_for(sa("[::]:9999")), None);
    }

    #[test]
    fn handed_out_is_the_source_address_and_port_9999() {
        let h = judge(sa("10.0.0.6:9999"), sa("10.0.0.6:41234"));
        assert_eq!(h.addr, sa("10.0.0.6:9999"));
        assert!(h.concerns.is_empty());
        // A chosen loopback listener: no warning.
        assert!(judge(sa("127.0.0.2:9999"), sa("127.0.0.2:5000"))
            .concerns
            .is_empty());
        // Every address, reached over loopback: only local clients.
        let h = judge(sa("0.0.0.0:9999"), sa("127.0.0.1:5000"));
        assert_eq!(h.addr, sa("127.0.0.1:9999"));
        assert_eq!(h.concerns, vec![Concern::Loopback]);
        assert!(!Concern::Loopback.fails());
        // Every address, reached from a real one: fine.
        assert!(judge(sa("0.0.0.0:9999"), sa("10.0.0.6:5000"))
            .concerns
            .is_empty());
    }

    #[test]
    fn another_port_or_ipv6_is_a_problem() {
        let h = judge(sa("127.0.0.2:19999"), sa("127.0.0.2:5000"));
        assert_eq!(h.concerns, vec![Concern::Port { listening: 19999 }]);
        assert!(h.concerns[0].fails());
        assert!(h.concerns[0].to_string().contains("port 19999"));
        let h = judge(sa("[::]:9999"), sa("[fd00::6]:5000"));
        assert_eq!(h.concerns, vec![Concern::NotIpv4]);
        assert!(h.concerns[0].fails());
        // An IPv4 connection on a dual-stack socket is IPv4.
        let h = judge(sa("[::]:9999"), sa("[::ffff:10.0.0.6]:5000"));
        assert_eq!(h.addr, sa("10.0.0.6:9999"));
        assert!(h.concerns.is_empty());
    }
}
