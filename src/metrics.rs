//! Prometheus metrics (`GET /metrics` of the control API).
//!
//! Everything is read at scrape time from counters the daemon keeps anyway (atomics in the card
//! registry, the readers and the pool link), so the exchange path pays nothing for metrics: no
//! lock, no registry, no label lookup. Each scrape builds a fresh [`Registry`] holding one
//! [`Collector`] that walks the daemon.
//!
//! Both text formats are served: Prometheus text 0.0.4 by default, OpenMetrics 1.0 when the
//! scraper asks for it (`Accept: application/openmetrics-text`, as Prometheus does).
//!
//! Per-card series appear once a card has been used (started, stopped or exchanged with) since
//! the daemon started, and a (card, front end) pair once it carried an exchange: 256 cards × 4
//! front ends of zeros would drown the few that matter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::bridge::Presence;
use crate::cards::{Front, Holder, LATENCY_BUCKETS};
use crate::daemon::Daemon;
use crate::values::CardNo;

pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which exposition format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// The format a scraper's `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// GSMTAP datagram counts, when tracing is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsmtapCounts {
    pub sent: u64,
    pub dropped: u64,
}

/// GSMTAP datagram counts while tracing is on (`serve --gsmtap`); the series are left out
/// when it is off.
fn gsmtap_counts(d: &Daemon) -> Option<GsmtapCounts> {
    d.gsmtap.as_ref().map(|c| GsmtapCounts {
        sent: c.sent(),
        dropped: c.dropped(),
    })
}

/// The metrics text of `daemon` in `format`.
pub fn render(daemon: Arc<Daemon>, format: Format) -> String {
    let gsmtap = gsmtap_counts(&daemon);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        daemon,
        gsmtap,
        process: Process::read(),
    }));
    let mut out = String::with_capacity(16 * 1024);
    let written = match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
    };
    // Writing into a String cannot fail; an encoder error would be a bug in a metric name.
    if let Err(e) = written {
        log::error!("metrics: encoding failed: {e}");
    }
    out
}

/// One scrape's view of the daemon.
struct Scrape {
    daemon: Arc<Daemon>,
    gsmtap: Option<GsmtapCounts>,
    process: Process,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels = Vec<(&'static str, String)>;

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Writes one family of counters.
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    if let [(labels, v)] = series {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
    }
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one family of gauges.
fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    if let [(labels, v)] = series {
        if labels.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn one(v: u64) -> [(Labels, u64); 1] {
    [(Vec::new(), v)]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &*self.daemon;
        self.exchanges(&mut enc)?;
        self.cards(&mut enc)?;
        self.readers(&mut enc)?;
        self.pool(&mut enc)?;

        // Authentications (sim-rest, API, command line) by front end and result.
        let auth = d.cards.auth_counts();
        let mut series = Vec::new();
        for via in crate::cards::auth::Via::ALL {
            for ended in crate::cards::auth::Ended::ALL {
                let labels: Labels = vec![
                    ("via", via.name().to_string()),
                    ("result", ended.name().to_string()),
                ];
                series.push((labels, auth.get(via, ended)));
            }
        }
        counters(
            &mut enc,
            "simpool_authentications",
            "Authentications run on cards (sim-rest API, control API, command line), by front end and result.",
            &series,
        )?;

        let mut held: [(Labels, i64); 4] =
            ["reader", "api", "scan", "bank"].map(|h| (vec![("holder", h.to_string())], 0));
        for v in d.cards.views() {
            let i = match v.holder {
                Some(Holder::Reader(_)) => 0,
                // A sim-rest request is an API request too (the label's values stay as documented).
                Some(
                    Holder::Api(_)
                    | Holder::SimRest(_)
                    | Holder::Command(_)
                    | Holder::Reservation(_),
                ) => 1,
                Some(Holder::Scan) => 2,
                Some(Holder::Bank { .. }) => 3,
                None => continue,
            };
            held[i].1 += 1;
        }
        gauges(
            &mut enc,
            "simpool_leases_held",
            "Cards held, by kind of holder.",
            None,
            &held,
        )?;

        if let Some(g) = self.gsmtap {
            counters(
                &mut enc,
                "simpool_gsmtap_datagrams_sent",
                "GSMTAP datagrams sent.",
                &one(g.sent),
            )?;
            counters(
                &mut enc,
                "simpool_gsmtap_datagrams_dropped",
                "GSMTAP datagrams dropped (send error, full socket buffer, unencodable).",
                &one(g.dropped),
            )?;
        }

        if let Some(h) = d.cards.history() {
            let s = h.stats();
            counters(
                &mut enc,
                "simpool_history_records_written",
                "History records (lease rows, events) written to the database.",
                &one(s.written),
            )?;
            counters(
                &mut enc,
                "simpool_history_records_dropped",
                "History records dropped because the writer's queue was full.",
                &one(s.dropped),
            )?;
            counters(
                &mut enc,
                "simpool_history_records_failed",
                "History records lost to a write error (disk full, I/O error).",
                &one(s.failed),
            )?;
            counters(
                &mut enc,
                "simpool_history_files_moved_aside",
                "Corrupt history files moved aside while running.",
                &one(s.moved_aside),
            )?;
        }

        let mut m = enc.encode_descriptor(
            "simpool_build",
            "The simpool version.",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;

        self.process.encode(&mut enc)
    }
}

impl Scrape {
    /// Exchanges and errors per (front end, card), and the latency histogram per front end.
    fn exchanges(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cards = &self.daemon.cards;
        let mut exchanges = Vec::new();
        let mut errors = Vec::new();
        for n in CardNo::all() {
            let s = cards.card_stats(n);
            for (i, f) in Front::ALL.iter().enumerate() {
                // Errors are counted on exchanges too, so an unused pair has no errors.
                let x = load(&s.exchanges_by_front[i]);
                if x == 0 {
                    continue;
                }
                let labels: Labels = vec![("front", f.name().to_string()), ("card", n.to_string())];
                errors.push((labels.clone(), load(&s.errors_by_front[i])));
                exchanges.push((labels, x));
            }
        }
        counters(
            enc,
            "simpool_exchanges",
            "Exchanges (one command and its answer) on the one exchange path, by front end and card.",
            &exchanges,
        )?;
        counters(
            enc,
            "simpool_exchange_errors",
            "Exchanges that failed (timeout, pool or protocol error, refused command), by front end and card.",
            &errors,
        )?;

        let mut m = enc.encode_descriptor(
            "simpool_exchange_duration",
            "Time of one exchange, from the front end's command to the card's answer, by front end.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for f in Front::ALL {
            let lat = &cards.front_stats(f).latency;
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(lat.buckets.iter().map(load))
                .collect();
            // The count from the buckets themselves, so +Inf and _count always agree even when
            // an exchange lands between two loads.
            let count = buckets.iter().map(|b| b.1).sum();
            let sum = load(&lat.sum_micros) as f64 / 1e6;
            let labels: Labels = vec![("front", f.name().to_string())];
            m.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }

    /// Starts, stops and failed starts of the cards used since the daemon started.
    fn cards(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cards = &self.daemon.cards;
        let (mut starts, mut stops, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for n in CardNo::all() {
            let s = cards.card_stats(n);
            let row = [
                load(&s.starts),
                load(&s.stops),
                load(&s.start_failures),
                load(&s.exchanges),
            ];
            if row.iter().all(|v| *v == 0) {
                continue;
            }
            let l: Labels = vec![("card", n.to_string())];
            starts.push((l.clone(), row[0]));
            stops.push((l.clone(), row[1]));
            failed.push((l, row[2]));
        }
        counters(
            enc,
            "simpool_card_starts",
            "Card starts (power-up and reset by the pool; a reset is a stop and a start).",
            &starts,
        )?;
        counters(
            enc,
            "simpool_card_stops",
            "Card stops (power-down).",
            &stops,
        )?;
        counters(
            enc,
            "simpool_card_start_failures",
            "Card starts that failed (empty slot, mute card, pool away).",
            &failed,
        )
    }

    /// The vpcd readers: commands, errors, resets, vpcd connections, presence.
    fn readers(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let readers = &self.daemon.readers;
        let each = |f: &dyn Fn(&crate::bridge::ReaderStats) -> &AtomicU64| -> Vec<(Labels, u64)> {
            readers
                .iter()
                .map(|r| (vec![("reader", r.index.to_string())], load(f(&r.stats()))))
                .collect()
        };
        counters(
            enc,
            "simpool_reader_exchanges",
            "Commands PC/SC sent through the reader.",
            &each(&|s| &s.commands),
        )?;
        counters(
            enc,
            "simpool_reader_errors",
            "Commands of the reader answered by simpool with an error status instead of the card.",
            &each(&|s| &s.errors),
        )?;
        counters(
            enc,
            "simpool_reader_resets",
            "Card power-ups and resets asked by PC/SC through the reader.",
            &each(&|s| &s.resets),
        )?;
        counters(
            enc,
            "simpool_reader_sessions",
            "Sessions of the reader (its card shown to pcscd).",
            &each(&|s| &s.sessions),
        )?;
        counters(
            enc,
            "simpool_vpcd_connects",
            "Connections the reader made to vpcd.",
            &each(&|s| &s.vpcd_connects),
        )?;
        let present: Vec<(Labels, i64)> = readers
            .iter()
            .map(|r| {
                let p = r.status().state == Presence::Present;
                (vec![("reader", r.index.to_string())], i64::from(p))
            })
            .collect();
        gauges(
            enc,
            "simpool_reader_card_present",
            "1 while the reader shows its card to pcscd.",
            None,
            &present,
        )
    }

    /// The pool link.
    fn pool(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &*self.daemon;
        let s = d.link.stats();
        gauges(
            enc,
            "simpool_pool_link_up",
            "1 while the TCP connection to the pool is up.",
            None,
            &[(Vec::new(), i64::from(d.link_up()))],
        )?;
        let connects = load(&s.connects);
        counters(
            enc,
            "simpool_pool_connects",
            "TCP connections made to the pool.",
            &one(connects),
        )?;
        counters(
            enc,
            "simpool_pool_reconnects",
            "TCP connections made to the pool after the first one.",
            &one(connects.saturating_sub(1)),
        )?;
        counters(
            enc,
            "simpool_pool_keepalive_failures",
            "Keep-alive queries the pool did not answer (each drops the connection).",
            &one(load(&s.keepalive_failures)),
        )?;
        counters(
            enc,
            "simpool_pool_requests",
            "Frames sent to the pool.",
            &one(load(&s.frames_out)),
        )?;
        counters(
            enc,
            "simpool_pool_replies",
            "Frames received from the pool (unsolicited ones included).",
            &one(load(&s.frames_in)),
        )?;
        counters(
            enc,
            "simpool_pool_unsolicited_replies",
            "Frames from the pool nobody waited for (dropped).",
            &one(load(&s.unsolicited)),
        )?;
        counters(
            enc,
            "simpool_pool_late_replies",
            "Late replies to exchanges that were given up (expected; dropped).",
            &one(load(&s.late)),
        )?;
        counters(
            enc,
            "simpool_pool_unknown_frames",
            "Well-formed frames of a kind simpool does not know (skipped).",
            &one(load(&s.unknown_frames)),
        )?;
        counters(
            enc,
            "simpool_pool_broken_frames",
            "Frames with a wrong length (each failed its card's exchange).",
            &one(load(&s.broken_frames)),
        )?;
        let m = enc.encode_descriptor(
            "simpool_pool_garbage",
            "Bytes from the pool skipped because they were no frame.",
            Some(&Unit::Bytes),
            MetricType::Counter,
        )?;
        ConstCounter::new(load(&s.garbage_bytes)).encode(m)
    }
}

/// The process' own figures, read from `/proc/self` at scrape time (the conventional
/// `process_*` names of Prometheus client libraries).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// Linux reports process times in USER_HZ ticks, 100 per second on every architecture.
const USER_HZ: f64 = 100.0;

impl Process {
    pub fn read() -> Process {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let mut p = Process::parse(&status, &stat, &limits, &boot);
        // The directory handle read_dir holds is listed too: not counted.
        p.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| (d.count() as u64).saturating_sub(1));
        p
    }

    /// Parses the `/proc` files (pure, for tests).
    pub fn parse(status: &str, stat: &str, limits: &str, proc_stat: &str) -> Process {
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v * 1024)
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // stat(5) numbers fields from 1 (pid), 2 (comm): field k is fields[k - 3].
        let field = |k: usize| fields.get(k - 3).and_then(|v| v.parse::<u64>().ok());
        let cpu = match (field(14), field(15)) {
            (Some(u), Some(s)) => Some((u + s) as f64 / USER_HZ),
            _ => None,
        };
        let btime = proc_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        let start = match (btime, field(22)) {
            (Some(b), Some(t)) => Some(b as f64 + t as f64 / USER_HZ),
            _ => None,
        };
        let max_fds = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok());
        Process {
            resident_bytes: kb("VmRSS:"),
            virtual_bytes: kb("VmSize:"),
            open_fds: None,
            max_fds,
            cpu_seconds: cpu,
            start_time_seconds: start,
        }
    }

    fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge_u = |enc: &mut DescriptorEncoder,
                       name: &str,
                       help: &str,
                       unit: Option<&Unit>,
                       v: Option<u64>| {
            match v {
                Some(v) => gauges(enc, name, help, unit, &[(Vec::new(), v as i64)]),
                None => Ok(()),
            }
        };
        gauge_u(
            enc,
            "process_resident_memory",
            "Resident memory size.",
            Some(&Unit::Bytes),
            self.resident_bytes,
        )?;
        gauge_u(
            enc,
            "process_virtual_memory",
            "Virtual memory size.",
            Some(&Unit::Bytes),
            self.virtual_bytes,
        )?;
        gauge_u(
            enc,
            "process_open_fds",
            "Open file descriptors.",
            None,
            self.open_fds,
        )?;
        gauge_u(
            enc,
            "process_max_fds",
            "Limit of open file descriptors.",
            None,
            self.max_fds,
        )?;
        if let Some(cpu) = self.cpu_seconds {
            let m = enc.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
        }
        if let Some(t) = self.start_time_seconds {
            let m = enc.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            ConstGauge::new(t).encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files() {
        let status = "Name:\tsimpool\nVmSize:\t  123456 kB\nVmRSS:\t    8192 kB\n";
        // comm with a space and a parenthesis, as a renamed thread could have.
        let stat = "4242 (sim pool) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 0 0";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let p = Process::parse(status, stat, limits, proc_stat);
        assert_eq!(p.resident_bytes, Some(8192 * 1024));
        assert_eq!(p.virtual_bytes, Some(123456 * 1024));
        assert_eq!(p.max_fds, Some(1024));
        assert_eq!(p.cpu_seconds, Some(3.0));
        assert_eq!(p.start_time_seconds, Some(1_700_000_000.0 + 123.45));
        assert_eq!(Process::parse("", "", "", ""), Process::default());
    }

    #[test]
    fn this_process() {
        let p = Process::read();
        assert!(p.resident_bytes.unwrap() > 0);
        // stdin, stdout, stderr at least.
        assert!(p.open_fds.unwrap() >= 3);
        assert!(p.start_time_seconds.unwrap() > 1.0e9);
    }

    #[test]
    fn accept_header() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
    }
}
