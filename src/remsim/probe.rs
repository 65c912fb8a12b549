//! Who listens on a bank address, so `serve --check` and a bank that cannot listen name it.
//!
//! The probe is one RSPRO exchange that changes nothing on the other side: connectClientReq
//! without a client slot. simpool's bank and osmo-remsim-bankd 1.0.0 both answer
//! connectClientRes(illegalClientId) with their identity and close (bankd_main.c "missing
//! clientID"): no session starts, no card is touched, no client is displaced. simpool names its
//! bank "simpool bank N", so the answer carries the bank id.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ipa::{self, Frame};
use super::rspro::{ComponentIdentity, ComponentType, Msg, Pdu};

/// How long the probe waits to connect, and then for the answer.
const WAIT: Duration = Duration::from_secs(1);

/// The component name of simpool's bank `bank_id`, towards the server and clients.
pub fn bank_name(bank_id: u16) -> String {
    format!("simpool bank {bank_id}")
}

/// The bank id a simpool bank's identity carries.
pub fn bank_id_of(identity: &ComponentIdentity) -> Option<u16> {
    if identity.software != "simpool" {
        return None;
    }
    identity.name.strip_prefix("simpool bank ")?.parse().ok()
}

/// What answered at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// An RSPRO bank, by its identity.
    Bank(ComponentIdentity),
    /// Something accepts connections but does not answer as a bank.
    NotRspro,
    /// Nothing accepts connections there.
    Nobody,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Bank(id) if id.software == "simpool" => match bank_id_of(id) {
                Some(n) => write!(f, "simpool bank {n} (simpool {})", id.sw_version),
                None => write!(
                    f,
                    "a simpool bank (simpool {}, \"{}\")",
                    id.sw_version, id.name
                ),
            },
            Listener::Bank(id) => write!(
                f,
                "an osmo-remsim bank ({} {}, \"{}\")",
                id.software, id.sw_version, id.name
            ),
            Listener::NotRspro => write!(f, "a program that does not answer as an RSPRO bank"),
            Listener::Nobody => write!(f, "nothing"),
        }
    }
}

/// Asks whoever listens at `addr` who it is.
pub async fn identify(addr: SocketAddr) -> Listener {
    let mut s = match tokio::time::timeout(WAIT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Listener::Nobody,
        _ => return Listener::NotRspro,
    };
    let hello = Msg::ConnectClientReq {
        identity: ComponentIdentity {
            kind: ComponentType::Client,
            name: "simpool-check".into(),
            software: "simpool".into(),
            sw_version: env!("CARGO_PKG_VERSION").into(),
            hw_manufacturer: None,
            hw_model: None,
            hw_serial_nr: None,
            hw_version: None,
            fw_version: None,
        },
        client_slot: None,
    };
    let Ok(bytes) = ipa::encode_rspro(&Pdu::new(hello).encode()) else {
        return Listener::NotRspro;
    };
    if s.write_all(&bytes).await.is_err() {
        return Listener::NotRspro;
    }
    let answer = tokio::time::timeout(WAIT, async {
        let mut dec = ipa::Decoder::new();
        let mut buf = [0u8; 1024];
        loop {
            while let Some(f) = dec.next_frame() {
                match f {
                    Ok(Frame::Rspro(b)) => {
                        return match Pdu::decode(&b).map(|p| p.msg) {
                            Ok(Msg::ConnectClientRes { identity, .. })
                                if identity.kind == ComponentType::Bankd =>
                            {
                                Listener::Bank(identity)
                            }
                            _ => Listener::NotRspro,
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return Listener::NotRspro,
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return Listener::NotRspro,
                Ok(n) => dec.push(&buf[..n]),
            }
        }
    })
    .await;
    answer.unwrap_or(Listener::NotRspro)
}

/// The addresses with a listening TCP socket on `port`, from the text of /proc/net/tcp or
/// /proc/net/tcp6.
pub fn listening_on(port: u16, proc_net_tcp: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in proc_net_tcp.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_), Some(local), Some(_), Some(state)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        // 0A: TCP_LISTEN.
        if state != "0A" {
            continue;
        }
        let Some((ip, p)) = local.split_once(':') else {
            continue;
        };
        if u16::from_str_radix(p, 16).ok() != Some(port) {
            continue;
        }
        // The kernel prints each 32-bit word of the address as it lies in memory.
        let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
            .map(|i| {
                let w = ip.get(i * 8..i * 8 + 8)?;
                u32::from_str_radix(w, 16).ok().map(u32::to_ne_bytes)
            })
            .collect();
        let ip = match (ip.len(), words) {
            (8, Some(w)) => IpAddr::V4(Ipv4Addr::from(w[0])),
            (32, Some(w)) => {
                let mut b = [0u8; 16];
                for (i, word) in w.iter().enumerate() {
                    b[i * 4..i * 4 + 4].copy_from_slice(word);
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => continue,
        };
        out.push(SocketAddr::new(ip, port));
    }
    out
}

/// Who holds `want`: a listener on that address, or on every address, of its port. Each is
/// named by the address it listens on (`listed`), or, where this host's list of sockets
/// cannot be read (systemd's ProcSubset=pid hides it), by the address that answered.
pub async fn holders(want: SocketAddr) -> Vec<Holder> {
    let mut listed = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            listed.extend(
                listening_on(want.port(), &text)
                    .into_iter()
                    .filter(|l| {
                        want.ip().is_unspecified() || l.ip().is_unspecified() || l.ip() == want.ip()
                    })
                    .map(|at| (at, true)),
            );
        }
    }
    if listed.is_empty() {
        let mut ask = vec![want];
        if want.ip().is_unspecified() {
            ask = vec![
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), want.port()),
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), want.port()),
            ];
        }
        listed.extend(ask.into_iter().map(|at| (at, false)));
    }
    listed.sort();
    listed.dedup();
    let mut out = Vec::new();
    for (at, from_list) in listed {
        // A listener on every address answers on loopback (or on the address wanted).
        let ask = match at.ip() {
            ip if !ip.is_unspecified() => at,
            _ if !want.ip().is_unspecified() => want,
            IpAddr::V4(_) => (Ipv4Addr::LOCALHOST, at.port()).into(),
            IpAddr::V6(_) => (Ipv6Addr::LOCALHOST, at.port()).into(),
        };
        match identify(ask).await {
            Listener::Nobody => {}
            who => out.push(Holder {
                at,
                listed: from_list,
                who,
            }),
        }
    }
    out
}

/// A listener in the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub at: SocketAddr,
    /// `at` is where it listens (from the host's list), not only where it answered.
    pub listed: bool,
    pub who: Listener,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.listed { "listens" } else { "answers" };
        write!(f, "{} {verb} on {}", self.who, self.at)
    }
}

/// Why `want` (HOST:PORT) cannot be listened on, after "in use": who holds it.
pub async fn in_use(want: &str) -> String {
    let Some(addr) = tokio::net::lookup_host(want)
        .await
        .ok()
        .and_then(|mut a| a.next())
    else {
        return "in use".into();
    };
    let found = holders(addr).await;
    if found.is_empty() {
        return "in use (the holder did not answer a probe)".into();
    }
    let list: Vec<String> = found.iter().map(Holder::to_string).collect();
    let mut s = format!("in use: {}", list.join("; "));
    if found.iter().any(|h| matches!(h.who, Listener::Bank(_))) {
        s.push_str(&format!(
            "; banks on one host each need an address of their own, port {} \
             (--remsim-listen ADDR:{0})",
            super::reach::HANDED_OUT_PORT
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bank_names_carry_the_id() {
        let id = ComponentIdentity::bank(&bank_name(7));
        assert_eq!(bank_id_of(&id), Some(7));
        assert!(Listener::Bank(id)
            .to_string()
            .starts_with("simpool bank 7 (simpool "));
        let mut other = ComponentIdentity::bank("simpool bank 7");
        other.software = "remsim-bankd".into();
        assert_eq!(bank_id_of(&other), None);
        assert_eq!(
            Listener::Bank(other.clone()).to_string().split(" (").next(),
            Some("an osmo-remsim bank")
        );
        other.software = "simpool".into();
        other.name = "simpool".into();
        assert_eq!(bank_id_of(&other), None);
    }

    // Lines as Linux 6.1 prints them (little-endian host).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:270F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0200007F:270F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 00000000:1A0A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   3: 0100007F:270F 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:270F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:270F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_from_proc_net_tcp() {
        if cfg!(target_endian = "big") {
            return;
        }
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            listening_on(9999, TCP),
            vec![sa("127.0.0.1:9999"), sa("127.0.0.2:9999")],
            "listeners only, on that port"
        );
        assert_eq!(listening_on(6666, TCP), vec![sa("0.0.0.0:6666")]);
        assert_eq!(
            listening_on(9999, TCP6),
            vec![sa("[::]:9999"), sa("[::1]:9999")]
        );
        assert!(listening_on(9999, "garbage\n 0: zz:yy 0 0A").is_empty());
    }
}
