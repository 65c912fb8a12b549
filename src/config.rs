//! `simpool serve` configuration: a TOML file, overridden by the environment (`SIMPOOL_POOL`,
//! `SIMPOOL_CONTROL`, `SIMPOOL_CONTROL_TOKEN`), overridden by command-line flags.
//!
//! ```toml
//! pool = "192.168.1.199:6666"   # or "sim" for the built-in simulated pool
//! vpcd = "127.0.0.1:35963"      # first vpcd port; reader i uses port + i
//! command_timeout_ms = 1500     # longest wait of any PC/SC command
//! reply_timeout_ms = 1000       # longest wait for one answer of the pool
//! null_wait_cap_ms = 30000      # longest a command may go on while the card sends NULLs
//! keepalive_ms = 5000           # query the pool after this much silence
//! reset = "restart"             # or "cached"
//! sim_rest = "127.0.0.1:8000"   # pySim's sim-rest API for every card (default: off)
//!
//! readers = 4                   # readers on the vpcd ports; those without [[reader]] start unbound
//! control = "127.0.0.1:6680"    # the control API ("off" to disable)
//! control_token = "/etc/simpool/token"  # needed to listen on a non-loopback address
//! control_tokens = "/etc/simpool/tokens" # named users: lines `NAME TOKEN ROLE` (read/use/admin)
//! control_socket = "/run/simpool/control.sock" # the control API for local users ("off")
//! control_socket_mode = "0660"  # the socket file's mode
//! control_socket_group = "simpool" # its group; members get the `use` role (root: admin)
//! state = "/var/lib/simpool/state.json" # runtime bindings, kept across restarts
//! history = "/var/lib/simpool/history.sqlite" # every card's history and labels ("off": none)
//! history_days = 90             # history rows kept this many days (0: for ever)
//!
//! [[reader]]
//! card = 18                     # bind by front-panel number …
//! [[reader]]
//! iccid = "89860043191482190636"  # … or by identity (cards move between slots)
//! [[reader]]
//! imsi = "460019894013615"
//! vpcd = "127.0.0.1:35970"      # optional: this reader's own vpcd address
//!
//! [[card_settings]]             # per-card settings
//! card = 7
//! protect = "write"             # refuse anything that changes the card (default "off")
//! guard = "off"                 # the last-try guard (default "on")
//!
//! [remsim]                      # be an osmo-remsim bank (readers are then optional)
//! server = "10.0.0.5"           # osmo-remsim-server, HOST[:PORT] (port 9998 by default)
//! bank_id = 1
//! listen = "0.0.0.0:9999"       # where remote clients connect (the server announces 9999)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::bridge::{Binding, ResetPolicy};
use crate::values::{CardNo, PoolAddr};

/// pcsc-lite takes at most 16 readers and silently drops more.
pub const MAX_READERS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub pool: Option<PoolAddr>,
    pub vpcd: Option<String>,
    pub command_timeout_ms: Option<u64>,
    pub reply_timeout_ms: Option<u64>,
    pub null_wait_cap_ms: Option<u64>,
    pub keepalive_ms: Option<u64>,
    pub reset: Option<ResetPolicy>,
    pub quickack: Option<bool>,
    /// Cards file for `pool = "sim"`.
    pub cards: Option<PathBuf>,
    /// Number of readers (bound ones first); default: one per `[[reader]]`.
    pub readers: Option<usize>,
    /// Control API address, or "off".
    pub control: Option<String>,
    /// File holding the bearer token the control API requires.
    pub control_token: Option<PathBuf>,
    /// Named users' tokens: lines `NAME TOKEN ROLE`.
    pub control_tokens: Option<PathBuf>,
    /// The control API's Unix socket, or "off".
    pub control_socket: Option<String>,
    /// Its file mode, octal (`"0660"`).
    pub control_socket_mode: Option<String>,
    /// Its group; members get the `use` role.
    pub control_socket_group: Option<String>,
    /// State file for runtime bindings.
    pub state: Option<PathBuf>,
    /// The history database (SQLite), or "off".
    pub history: Option<String>,
    /// Days the history keeps rows; 0: for ever.
    pub history_days: Option<u32>,
    /// Pool link health (see README "Pool link health").
    pub frame_timeout_ms: Option<u64>,
    pub health_window_ms: Option<u64>,
    pub health_min_bad: Option<u32>,
    pub health_max_bad_ratio: Option<f64>,
    pub duplicate_settle_ms: Option<u64>,
    pub duplicate_guard_s: Option<u64>,
    /// GSMTAP destination `HOST[:PORT]`, or "off".
    pub gsmtap: Option<String>,
    /// Cards traced by GSMTAP, e.g. "18,256" or "1-16"; default: all.
    pub gsmtap_cards: Option<String>,
    /// The sim-rest API (pySim's `sim-rest-server.py` interface) on HOST:PORT, or "off".
    pub sim_rest: Option<String>,
    #[serde(default)]
    pub reader: Vec<ReaderEntry>,
    /// Per-card settings: the last-try guard, write protection.
    #[serde(default)]
    pub card_settings: Vec<crate::cards::guard::CardEntry>,
    /// The osmo-remsim bank.
    pub remsim: Option<RemsimEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemsimEntry {
    pub server: Option<String>,
    pub bank_id: Option<u16>,
    pub listen: Option<String>,
}

/// The osmo-remsim bank of the resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemsimSpec {
    /// osmo-remsim-server, HOST:PORT.
    pub server: String,
    pub bank_id: u16,
    pub listen: String,
}

/// Merges the `[remsim]` table and the flags; `None` if neither asks for a bank.
fn resolve_remsim(
    file: Option<RemsimEntry>,
    flags: Option<RemsimEntry>,
) -> Result<Option<RemsimSpec>, ConfigError> {
    let (file, flags) = (file.unwrap_or_default(), flags.unwrap_or_default());
    let server = flags.server.or(file.server);
    let bank_id = flags.bank_id.or(file.bank_id);
    let listen = flags.listen.or(file.listen);
    let Some(server) = server else {
        if bank_id.is_some() || listen.is_some() {
            return Err(ConfigError::Invalid(
                "a remsim bank id or listen address without a server: give --remsim SERVER \
                 (or server in [remsim])"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let bank_id = bank_id.ok_or_else(|| {
        ConfigError::Invalid("--remsim needs --bank-id N (or bank_id in [remsim])".into())
    })?;
    if bank_id > 1023 {
        return Err(ConfigError::Invalid(format!(
            "bank id {bank_id}: osmo-remsim takes 0-1023"
        )));
    }
    Ok(Some(RemsimSpec {
        server: crate::remsim::bank::server_address(&server),
        bank_id,
        listen: listen.unwrap_or_else(|| crate::remsim::bank::DEFAULT_LISTEN.into()),
    }))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderEntry {
    pub card: Option<CardNo>,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
    /// An eUICC's EID (its ICCID changes with the profile enabled).
    pub eid: Option<String>,
    pub vpcd: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))
    }
}

/// One reader of the resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderSpec {
    /// The card shown at start-up; `None`: the reader starts without a card.
    pub binding: Option<Binding>,
    pub vpcd: String,
}

/// The control API's default address: loopback only.
pub const DEFAULT_CONTROL: &str = "127.0.0.1:6680";

/// Everything `serve` needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub pool: PoolAddr,
    pub cards: Option<PathBuf>,
    pub command_timeout: Duration,
    pub reply_timeout: Duration,
    /// A command whose card keeps sending NULL bytes may go on past `command_timeout`, up to
    /// this long.
    pub null_wait_cap: Duration,
    pub keepalive: Duration,
    pub reset: ResetPolicy,
    pub quickack: bool,
    pub readers: Vec<ReaderSpec>,
    pub health: crate::pool::HealthOptions,
    /// Control API address; `None`: off.
    pub control: Option<String>,
    pub control_token: Option<PathBuf>,
    pub control_tokens: Option<PathBuf>,
    /// The control API's Unix socket; `None`: off.
    pub control_socket: Option<PathBuf>,
    pub control_socket_mode: u32,
    pub control_socket_group: Option<String>,
    pub state: Option<PathBuf>,
    /// The history database; `None`: off.
    pub history: Option<PathBuf>,
    /// Days the history keeps rows; 0: for ever.
    pub history_days: u32,
    /// Be an osmo-remsim bank.
    pub remsim: Option<RemsimSpec>,
    /// GSMTAP tracing; `None`: off.
    pub gsmtap: Option<crate::gsmtap::Config>,
    /// The sim-rest API's address; `None`: off (the default).
    pub sim_rest: Option<String>,
    /// Per-card settings (`[[card_settings]]`: guard, protect).
    pub card_settings: crate::cards::guard::ConfigSettings,
}

impl ReaderEntry {
    fn binding(&self) -> Result<Binding, ConfigError> {
        let b = match (self.card, &self.iccid, &self.imsi, &self.eid) {
            (Some(n), None, None, None) => Binding::Card(n),
            (None, Some(i), None, None) => Binding::Iccid(i.clone()),
            (None, None, Some(i), None) => Binding::Imsi(i.clone()),
            (None, None, None, Some(e)) => Binding::Eid(e.clone()),
            _ => {
                return Err(ConfigError::Invalid(
                    "each [[reader]] needs exactly one of card, iccid, imsi, eid".into(),
                ))
            }
        };
        b.checked().map_err(ConfigError::Invalid)
    }
}

/// Adds `offset` to the port of `HOST:PORT`.
pub fn port_plus(addr: &str, offset: usize) -> Result<String, ConfigError> {
    let bad = || ConfigError::Invalid(format!("bad vpcd address {addr:?}: want HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let port = usize::from(port) + offset;
    if port > usize::from(u16::MAX) {
        return Err(bad());
    }
    Ok(format!("{host}:{port}"))
}

/// Merges file and flags (flags win; bindings from flags replace the file's readers).
pub fn resolve(file: FileConfig, flags: FileConfig) -> Result<ServeConfig, ConfigError> {
    let remsim = resolve_remsim(file.remsim.clone(), flags.remsim.clone())?;
    let sim_rest = match flags.sim_rest.clone().or(file.sim_rest.clone()) {
        Some(s) if s == "off" => None,
        other => other,
    };
    // A pure bank or sim-rest server needs no reader (and no pcscd).
    let readers = resolve_readers(&file, &flags, remsim.is_some() || sim_rest.is_some())?;
    let (command_timeout, reply_timeout) = resolve_timeouts(&file, &flags)?;
    let pick = |a: Option<u64>, b: Option<u64>, d: u64| Duration::from_millis(a.or(b).unwrap_or(d));
    let control = match flags
        .control
        .clone()
        .or(file.control.clone())
        .unwrap_or_else(|| DEFAULT_CONTROL.into())
    {
        s if s == "off" => None,
        s => Some(s),
    };
    Ok(ServeConfig {
        pool: flags
            .pool
            .clone()
            .or(file.pool.clone())
            .unwrap_or_else(PoolAddr::factory),
        cards: flags.cards.clone().or(file.cards.clone()),
        command_timeout,
        reply_timeout,
        null_wait_cap: pick(
            flags.null_wait_cap_ms,
            file.null_wait_cap_ms,
            crate::pool::link::NULL_WAIT_CAP.as_millis() as u64,
        ),
        keepalive: pick(flags.keepalive_ms, file.keepalive_ms, 5000),
        reset: flags.reset.or(file.reset).unwrap_or_default(),
        quickack: flags.quickack.or(file.quickack).unwrap_or(true),
        readers,
        health: resolve_health(&file, &flags)?,
        control,
        control_token: flags.control_token.clone().or(file.control_token.clone()),
        control_tokens: flags.control_tokens.clone().or(file.control_tokens.clone()),
        control_socket: match flags.control_socket.clone().or(file.control_socket.clone()) {
            Some(s) if s == "off" || s.is_empty() => None,
            s => s.map(PathBuf::from),
        },
        control_socket_mode: match flags
            .control_socket_mode
            .clone()
            .or(file.control_socket_mode.clone())
        {
            None => 0o660,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "control_socket_mode {m:?}: want an octal file mode such as 0660"
                    ))
                })?,
        },
        control_socket_group: flags
            .control_socket_group
            .clone()
            .or(file.control_socket_group.clone()),
        state: flags.state.clone().or(file.state.clone()),
        history: match flags.history.clone().or(file.history.clone()) {
            Some(s) if s == "off" => None,
            Some(s) if s.is_empty() => {
                return Err(ConfigError::Invalid(
                    "history: give a file, or \"off\"".into(),
                ))
            }
            s => s.map(PathBuf::from),
        },
        history_days: flags
            .history_days
            .or(file.history_days)
            .unwrap_or(crate::history::DEFAULT_RETENTION_DAYS),
        remsim,
        gsmtap: resolve_gsmtap(&file, &flags)?,
        sim_rest,
        card_settings: crate::cards::guard::ConfigSettings::from_entries(
            if flags.card_settings.is_empty() {
                &file.card_settings
            } else {
                &flags.card_settings
            },
        )
        .map_err(ConfigError::Invalid)?,
    })
}

/// The readers: the flags' bindings, else the file's, on consecutive vpcd ports, then unbound
/// ones up to `readers`; checked against pcsc-lite's limit and for clashes.
fn resolve_readers(
    file: &FileConfig,
    flags: &FileConfig,
    service: bool,
) -> Result<Vec<ReaderSpec>, ConfigError> {
    let vpcd = flags
        .vpcd
        .clone()
        .or(file.vpcd.clone())
        .unwrap_or_else(|| crate::vpcd::DEFAULT_ADDRESS.into());
    let entries = if flags.reader.is_empty() {
        &file.reader
    } else {
        &flags.reader
    };
    let count = flags.readers.or(file.readers);
    if entries.is_empty() && count.is_none() && !service {
        return Err(ConfigError::Invalid(
            "no reader: give --card N, --iccid, --imsi or --eid (or [[reader]] in --config), \
             or --readers N for readers that start without a card, or --remsim for a bank, \
             or --sim-rest ADDR for the sim-rest API"
                .into(),
        ));
    }
    let count = count.unwrap_or(entries.len());
    if entries.len() > MAX_READERS || count > MAX_READERS {
        return Err(ConfigError::Invalid(format!(
            "{} readers asked, pcsc-lite takes at most {MAX_READERS}",
            entries.len().max(count)
        )));
    }
    if entries.len() > count {
        return Err(ConfigError::Invalid(format!(
            "{} bindings for --readers {count}: give more readers or fewer bindings",
            entries.len()
        )));
    }
    let mut readers: Vec<ReaderSpec> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        readers.push(ReaderSpec {
            binding: Some(e.binding()?),
            vpcd: match &e.vpcd {
                Some(a) => a.clone(),
                None => port_plus(&vpcd, i)?,
            },
        });
    }
    for i in entries.len()..count {
        readers.push(ReaderSpec {
            binding: None,
            vpcd: port_plus(&vpcd, i)?,
        });
    }
    check_clashes(&readers, |_| None)?;
    Ok(readers)
}

/// The command and reply timeouts (at least 10 ms each).
fn resolve_timeouts(
    file: &FileConfig,
    flags: &FileConfig,
) -> Result<(Duration, Duration), ConfigError> {
    let pick = |a: Option<u64>, b: Option<u64>, d: u64| Duration::from_millis(a.or(b).unwrap_or(d));
    let command_timeout = pick(flags.command_timeout_ms, file.command_timeout_ms, 1500);
    let reply_timeout = pick(flags.reply_timeout_ms, file.reply_timeout_ms, 1000);
    if command_timeout < Duration::from_millis(10) || reply_timeout < Duration::from_millis(10) {
        return Err(ConfigError::Invalid(
            "timeouts must be at least 10 ms".into(),
        ));
    }
    Ok((command_timeout, reply_timeout))
}

/// GSMTAP tracing: off unless a destination is given; cards without a destination are a
/// mistake.
fn resolve_gsmtap(
    file: &FileConfig,
    flags: &FileConfig,
) -> Result<Option<crate::gsmtap::Config>, ConfigError> {
    let cards = flags.gsmtap_cards.clone().or(file.gsmtap_cards.clone());
    match flags.gsmtap.clone().or(file.gsmtap.clone()) {
        Some(s) if s != "off" => Ok(Some(crate::gsmtap::Config {
            dest: crate::gsmtap::destination(&s).map_err(ConfigError::Invalid)?,
            cards: match &cards {
                Some(c) => crate::gsmtap::CardFilter::parse(c)
                    .map_err(|e| ConfigError::Invalid(format!("gsmtap cards: {e}")))?,
                None => crate::gsmtap::CardFilter::all(),
            },
        })),
        _ if cards.is_some() => Err(ConfigError::Invalid(
            "GSMTAP cards given, but no GSMTAP destination (--gsmtap HOST[:PORT])".into(),
        )),
        _ => Ok(None),
    }
}

/// The pool link's health rules (README "Pool link health").
fn resolve_health(
    file: &FileConfig,
    flags: &FileConfig,
) -> Result<crate::pool::HealthOptions, ConfigError> {
    let d = crate::pool::HealthOptions::default();
    let ms = |a: Option<u64>, b: Option<u64>, d: Duration| {
        a.or(b).map(Duration::from_millis).unwrap_or(d)
    };
    let ratio = flags
        .health_max_bad_ratio
        .or(file.health_max_bad_ratio)
        .unwrap_or(d.max_bad_ratio);
    if !(0.0..=1.0).contains(&ratio) {
        return Err(ConfigError::Invalid(
            "health_max_bad_ratio must be between 0 and 1".into(),
        ));
    }
    Ok(crate::pool::HealthOptions {
        frame_timeout: ms(
            flags.frame_timeout_ms,
            file.frame_timeout_ms,
            d.frame_timeout,
        ),
        stall: d.stall,
        window: ms(flags.health_window_ms, file.health_window_ms, d.window),
        min_bad: flags
            .health_min_bad
            .or(file.health_min_bad)
            .unwrap_or(d.min_bad),
        max_bad_ratio: ratio,
        settle: ms(
            flags.duplicate_settle_ms,
            file.duplicate_settle_ms,
            d.settle,
        ),
        guard: flags
            .duplicate_guard_s
            .or(file.duplicate_guard_s)
            .map(Duration::from_secs)
            .unwrap_or(d.guard),
    })
}

/// Refuses start-up bindings that would show one card in two readers, naming both sides.
/// `card_of` tells which card an ICCID/IMSI binding is, where the pool's contents are known
/// (the simulated pool); identities it cannot place only clash when given twice verbatim.
pub fn check_clashes(
    readers: &[ReaderSpec],
    card_of: impl Fn(&Binding) -> Option<CardNo>,
) -> Result<(), ConfigError> {
    // What each earlier reader shows: its card number if known, else its binding.
    let mut seen: Vec<(usize, &Binding, Option<CardNo>)> = Vec::new();
    for (i, r) in readers.iter().enumerate() {
        let Some(b) = &r.binding else { continue };
        let n = match b {
            Binding::Card(n) => Some(*n),
            other => card_of(other),
        };
        let clash = seen.iter().find(|(_, sb, sn)| match (n, sn) {
            (Some(a), Some(c)) => a == *c,
            _ => b == *sb,
        });
        if let Some((j, sb, _)) = clash {
            let what = match (b, n) {
                (Binding::Card(n), _) => format!("card {n} is"),
                (b, Some(n)) => format!("{b} is card {n},"),
                (b, None) => format!("{b} is"),
            };
            let by = match sb {
                Binding::Card(_) => String::new(),
                other => format!(" (as {other})"),
            };
            return Err(ConfigError::Invalid(format!(
                "reader {i}: {what} already bound to reader {j}{by}"
            )));
        }
        seen.push((i, b, n));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remsim_bank_alone_or_beside_readers() {
        let file: FileConfig =
            toml::from_str("pool = \"sim\"\n[remsim]\nserver = \"10.0.0.5\"\nbank_id = 3\n")
                .unwrap();
        let c = resolve(file.clone(), FileConfig::default()).unwrap();
        assert!(c.readers.is_empty(), "a pure bank needs no reader");
        assert_eq!(
            c.remsim,
            Some(RemsimSpec {
                server: "10.0.0.5:9998".into(),
                bank_id: 3,
                listen: "0.0.0.0:9999".into()
            })
        );
        let flags = FileConfig {
            remsim: Some(RemsimEntry {
                server: Some("127.0.0.1:19998".into()),
                bank_id: Some(1),
                listen: Some("127.0.0.1:19999".into()),
            }),
            readers: Some(2),
            ..Default::default()
        };
        let c = resolve(file, flags).unwrap();
        assert_eq!(c.readers.len(), 2);
        let r = c.remsim.unwrap();
        assert_eq!((r.server.as_str(), r.bank_id), ("127.0.0.1:19998", 1));
        assert_eq!(r.listen, "127.0.0.1:19999");
        for bad in [
            "[remsim]\nserver = \"h\"\n",
            "[remsim]\nbank_id = 1\n",
            "[remsim]\nserver = \"h\"\nbank_id = 1024\n",
        ] {
            let f: FileConfig = toml::from_str(bad).unwrap();
            assert!(resolve(f, FileConfig::default()).is_err(), "{bad}");
        }
        assert!(toml::from_str::<FileConfig>("[remsim]\nport = 1\n").is_err());
    }

    #[test]
    fn history_file_off_and_days() {
        let file: FileConfig = toml::from_str(
            "pool = \"sim\"\nhistory = \"/var/lib/simpool/h.sqlite\"\nhistory_days = 7\n[[reader]]\ncard = 1\n",
        )
        .unwrap();
        let c = resolve(file.clone(), FileConfig::default()).unwrap();
        assert_eq!(c.history, Some(PathBuf::from("/var/lib/simpool/h.sqlite")));
        assert_eq!(c.history_days, 7);
        let off = FileConfig {
            history: Some("off".into()),
            ..Default::default()
        };
        let c = resolve(file.clone(), off).unwrap();
        assert_eq!((c.history, c.history_days), (None, 7));
        let c = resolve(
            FileConfig {
                reader: file.reader.clone(),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!((c.history, c.history_days), (None, 90));
        let empty = FileConfig {
            history: Some(String::new()),
            ..Default::default()
        };
        assert!(resolve(file, empty).is_err());
    }

    #[test]
    fn a_reader_binds_by_eid_with_its_check_digits() {
        let file: FileConfig = toml::from_str(
            "pool = \"sim\"\n[[reader]]\neid = \"89049032000000000000000003400013\"\n",
        )
        .unwrap();
        let c = resolve(file, FileConfig::default()).unwrap();
        assert_eq!(
            c.readers[0].binding,
            Some(Binding::Eid("89049032000000000000000003400013".into()))
        );
        for bad in [
            "eid = \"89049032000000000000000003400014\"",
            "eid = \"8904\"",
            "eid = \"89049032000000000000000003400013\"\ncard = 4",
        ] {
            let file: FileConfig =
                toml::from_str(&format!("pool = \"sim\"\n[[reader]]\n{bad}\n")).unwrap();
            assert!(resolve(file, FileConfig::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_and_flags() {
        let file: FileConfig = toml::from_str(
            "pool = \"10.0.0.9:6666\"\nreset = \"cached\"\n[[reader]]\ncard = 18\n[[reader]]\nimsi = \"460019894013615\"\n",
        )
        .unwrap();
        let c = resolve(file.clone(), FileConfig::default()).unwrap();
        assert_eq!(c.pool, PoolAddr::Tcp("10.0.0.9:6666".into()));
        assert_eq!(c.reset, ResetPolicy::Cached);
        assert_eq!(c.readers[1].vpcd, "127.0.0.1:35964");
        assert_eq!(
            c.readers[1].binding,
            Some(Binding::Imsi("460019894013615".into()))
        );
        let flags = FileConfig {
            vpcd: Some("127.0.0.1:40000".into()),
            reader: vec![ReaderEntry {
                card: Some(CardNo::of(2)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = resolve(file, flags).unwrap();
        assert_eq!(
            c.readers,
            vec![ReaderSpec {
                binding: Some(Binding::Card(CardNo::of(2))),
                vpcd: "127.0.0.1:40000".into()
            }]
        );
    }

    #[test]
    fn gsmtap() {
        let reader = || {
            vec![ReaderEntry {
                card: Some(CardNo::of(18)),
                ..Default::default()
            }]
        };
        let file: FileConfig = toml::from_str(
            "gsmtap = \"127.0.0.1\"\ngsmtap_cards = \"18,256\"\n[[reader]]\ncard = 18\n",
        )
        .unwrap();
        let g = resolve(file, FileConfig::default())
            .unwrap()
            .gsmtap
            .unwrap();
        assert_eq!(g.dest, "127.0.0.1:4729".parse().unwrap());
        assert!(g.cards.contains(18) && g.cards.contains(256) && !g.cards.contains(17));
        // Flags win, "off" included; off by default.
        let on = FileConfig {
            gsmtap: Some("127.0.0.2:5000".into()),
            reader: reader(),
            ..Default::default()
        };
        let off = FileConfig {
            gsmtap: Some("off".into()),
            ..Default::default()
        };
        assert_eq!(resolve(on.clone(), off).unwrap().gsmtap, None);
        let c = resolve(
            FileConfig {
                reader: reader(),
                ..Default::default()
            },
            on,
        )
        .unwrap();
        assert_eq!(c.gsmtap.unwrap().dest, "127.0.0.2:5000".parse().unwrap());
        let c = resolve(
            FileConfig {
                reader: reader(),
                ..Default::default()
            },
            FileConfig::default(),
        );
        assert_eq!(c.unwrap().gsmtap, None);
        for bad in [
            FileConfig {
                gsmtap_cards: Some("18".into()),
                reader: reader(),
                ..Default::default()
            },
            FileConfig {
                gsmtap: Some("127.0.0.1".into()),
                gsmtap_cards: Some("0".into()),
                reader: reader(),
                ..Default::default()
            },
            FileConfig {
                gsmtap: Some("127.0.0.1:x".into()),
                reader: reader(),
                ..Default::default()
            },
        ] {
            assert!(resolve(bad, FileConfig::default()).is_err());
        }
    }

    #[test]
    fn refusals() {
        let many = FileConfig {
            reader: (1..=17)
                .map(|n| ReaderEntry {
                    card: Some(CardNo::of(n)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        assert!(resolve(many, FileConfig::default())
            .unwrap_err()
            .to_string()
            .contains("16"));
        assert!(resolve(FileConfig::default(), FileConfig::default()).is_err());
        let both = FileConfig {
            reader: vec![ReaderEntry {
                card: Some(CardNo::of(1)),
                imsi: Some("1".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(resolve(both, FileConfig::default()).is_err());
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        let twice = FileConfig {
            reader: vec![
                ReaderEntry {
                    card: Some(CardNo::of(18)),
                    ..Default::default()
                },
                ReaderEntry {
                    card: Some(CardNo::of(18)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            resolve(twice, FileConfig::default())
                .unwrap_err()
                .to_string(),
            "reader 1: card 18 is already bound to reader 0"
        );
    }

    #[test]
    fn clashes_by_identity_name_both_sides() {
        let spec = |b: Binding| ReaderSpec {
            binding: Some(b),
            vpcd: "127.0.0.1:1".into(),
        };
        let iccid = Binding::Iccid("89860043191482190636".into());
        let imsi = Binding::Imsi("460019894013615".into());
        let card_of = |b: &Binding| match b {
            Binding::Iccid(s) if s == "89860043191482190636" => Some(CardNo::of(18)),
            Binding::Imsi(s) if s == "460019894013615" => Some(CardNo::of(256)),
            _ => None,
        };
        let e = check_clashes(
            &[spec(Binding::Card(CardNo::of(18))), spec(iccid.clone())],
            card_of,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "reader 1: ICCID 89860043191482190636 is card 18, already bound to reader 0"
        );
        let e = check_clashes(
            &[spec(imsi.clone()), spec(Binding::Card(CardNo::of(256)))],
            card_of,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "reader 1: card 256 is already bound to reader 0 (as IMSI 460019894013615)"
        );
        // Different cards, and identities that cannot be placed, are fine.
        check_clashes(
            &[
                spec(Binding::Card(CardNo::of(18))),
                spec(imsi.clone()),
                spec(Binding::Imsi("1".into())),
            ],
            card_of,
        )
        .unwrap();
        // Without knowing the pool, the same identity twice still clashes.
        assert!(check_clashes(&[spec(iccid.clone()), spec(iccid)], |_| None).is_err());
    }
}
