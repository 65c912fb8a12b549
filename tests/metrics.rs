//! `GET /metrics`: both exposition formats parse with the reference parsers (Python's
//! `prometheus_client`: the Prometheus text parser and the strict OpenMetrics one), and the
//! counters move with traffic and errors from vpcd and the API. Needs Debian's
//! python3-prometheus-client (installed on demand by `driver/ensure-watch-deps`).

mod common;
mod watch;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::http::{header, http};
use common::proc::Tied;
use common::stack::Serve;
use serde_json::Value;
use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;
use watch::FakeVpcd;

/// Parses with the real parser; answers every sample as "name{k="v",…}" → value, labels sorted.
const PARSE: &str = r#"
import json, sys
fmt = sys.argv[1]
text = sys.stdin.read()
if fmt == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
out = {"types": {}, "samples": {}}
for fam in text_string_to_metric_families(text):
    out["types"][fam.name] = fam.type
    for s in fam.samples:
        # Bucket bounds as numbers: "1" and "1.0" are the same bound.
        ls = {k: (repr(float(v)) if k == "le" else v) for k, v in s.labels.items()}
        labels = ",".join('%s="%s"' % kv for kv in sorted(ls.items()))
        key = s.name + ("{" + labels + "}" if labels else "")
        if key in out["samples"]:
            raise SystemExit("duplicate sample " + key)
        out["samples"][key] = s.value
json.dump(out, sys.stdout)
"#;

struct Parsed {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Parsed {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}; have {:#?}", self.samples.keys()))
    }

    fn opt(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }
}

fn parse(text: &str, format: &str) -> Parsed {
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSE, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn_tied()
        .expect("run /usr/bin/python3");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {format} parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Parsed {
        types: v["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
            .collect(),
        samples: v["samples"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, x)| (k.clone(), x.as_f64().unwrap()))
            .collect(),
    }
}

/// Scrapes in both formats; checks content types and that both parse to the same samples.
fn scrape(control: &str) -> Parsed {
    let (status, head, text) = http(control, "GET", "/metrics", &[], None);
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let prom = parse(&text, "prometheus");
    let accept = [(
        "Accept",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )];
    let (status, head, om_text) = http(control, "GET", "/metrics", &accept, None);
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(om_text.ends_with("# EOF\n"));
    let om = parse(&om_text, "openmetrics");
    // The same series either way.
    let series = |p: &Parsed| -> Vec<String> { p.samples.keys().cloned().collect() };
    assert_eq!(series(&prom), series(&om));
    om
}

#[test]
fn metrics_parse_and_move_with_traffic_and_errors() {
    watch::ensure_tools();
    let sim = common::sim_pool(
        CardsFile::default_set(),
        Faults {
            garbage_every: 4,
            ..Faults::default()
        },
    );
    let vpcd = FakeVpcd::start(2);
    let control = format!("127.0.0.1:{}", common::free_port());
    let pool = sim.addr().to_string();
    // A GSMTAP listener, so the tracer's counters move too.
    let gsmtap = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gsmtap_to = gsmtap.local_addr().unwrap().to_string();
    let vpcd_at = vpcd.addr();
    let args = [
        "--pool",
        &pool,
        "--card",
        "18",
        "--readers",
        "2",
        "--vpcd",
        &vpcd_at,
        "--control",
        &control,
        "--gsmtap",
        &gsmtap_to,
    ];
    let serve = Serve::start(&args, "metrics");
    common::wait_for("the control API", Duration::from_secs(15), || {
        http(&control, "GET", "/healthz", &[], None).0 == 200
    });
    let mut reader0 = vpcd.reader(0, Duration::from_secs(15));
    common::wait_for("reader 0 present", Duration::from_secs(10), || {
        http(&control, "GET", "/api/v1/readers/0", &[], None)
            .2
            .contains("\"state\":\"present\"")
    });

    let before = scrape(&control);
    // Conventional types and names.
    for (name, ty) in [
        ("simpool_exchanges", "counter"),
        ("simpool_exchange_errors", "counter"),
        ("simpool_exchange_duration_seconds", "histogram"),
        ("simpool_card_starts", "counter"),
        ("simpool_card_stops", "counter"),
        ("simpool_pool_link_up", "gauge"),
        ("simpool_pool_reconnects", "counter"),
        ("simpool_pool_keepalive_failures", "counter"),
        ("simpool_pool_replies", "counter"),
        ("simpool_pool_unsolicited_replies", "counter"),
        ("simpool_pool_garbage_bytes", "counter"),
        ("simpool_vpcd_connects", "counter"),
        ("simpool_reader_exchanges", "counter"),
        ("simpool_reader_errors", "counter"),
        ("simpool_leases_held", "gauge"),
        ("simpool_build", "info"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("simpool_gsmtap_datagrams_sent", "counter"),
        ("simpool_gsmtap_datagrams_dropped", "counter"),
    ] {
        assert_eq!(
            before.types.get(name).map(String::as_str),
            Some(ty),
            "family {name}; have {:?}",
            before.types
        );
    }
    assert_eq!(before.get("simpool_pool_link_up"), 1.0);
    assert_eq!(before.get("simpool_leases_held{holder=\"reader\"}"), 1.0);
    assert_eq!(before.get("simpool_reader_card_present{reader=\"0\"}"), 1.0);
    assert_eq!(before.get("simpool_reader_card_present{reader=\"1\"}"), 0.0);
    assert!(before.get("simpool_vpcd_connects_total{reader=\"0\"}") >= 1.0);
    assert!(before.get("process_resident_memory_bytes") > 1e6);
    assert!(before.get("process_open_fds") >= 5.0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = before.get("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );
    assert_eq!(before.get("simpool_build_info{version=\"0.1.0\"}"), 1.0);
    // 18 was read (scan front) and started when the reader took it.
    assert!(before.get("simpool_card_starts_total{card=\"18\"}") >= 1.0);

    // Traffic through vpcd: power on, 10 good commands, 1 malformed (refused: an error).
    reader0.power_on();
    for _ in 0..10 {
        let r = reader0.transmit(&common::hex("A0A4000002 3F00"));
        assert_eq!(r[0], 0x9F, "SELECT MF answered {}", hex::encode_upper(&r));
    }
    assert_eq!(
        reader0.transmit(&common::hex("A0A400")),
        common::hex("6700")
    );
    // And through the API on card 5: 2 good, 1 refused.
    let (status, _, body) = http(
        &control,
        "POST",
        "/api/v1/cards/5/apdu",
        &[],
        Some(r#"{"tpdus":["A0A40000023F00","A0A40000027F20","A0A400"]}"#),
    );
    assert_eq!(status, 200, "{body}");

    let after = scrape(&control);
    let delta = |k: &str| after.opt(k) - before.opt(k);
    let vpcd18 = "{card=\"18\",front=\"vpcd\"}";
    assert_eq!(delta(&format!("simpool_exchanges_total{vpcd18}")), 11.0);
    assert_eq!(
        delta(&format!("simpool_exchange_errors_total{vpcd18}")),
        1.0
    );
    assert_eq!(
        after.get("simpool_exchanges_total{card=\"5\",front=\"api\"}"),
        3.0
    );
    assert_eq!(
        after.get("simpool_exchange_errors_total{card=\"5\",front=\"api\"}"),
        1.0
    );
    assert_eq!(
        delta("simpool_exchange_duration_seconds_count{front=\"vpcd\"}"),
        11.0
    );
    assert!(delta("simpool_exchange_duration_seconds_sum{front=\"vpcd\"}") > 0.0);
    assert_eq!(
        after.get("simpool_exchange_duration_seconds_bucket{front=\"api\",le=\"inf\"}"),
        3.0
    );
    assert_eq!(delta("simpool_reader_exchanges_total{reader=\"0\"}"), 11.0);
    assert_eq!(delta("simpool_reader_errors_total{reader=\"0\"}"), 1.0);
    assert!(delta("simpool_reader_resets_total{reader=\"0\"}") >= 1.0);
    // Power-on restarts card 18; the API request starts and stops card 5.
    assert!(delta("simpool_card_starts_total{card=\"18\"}") >= 1.0);
    assert_eq!(after.get("simpool_card_starts_total{card=\"5\"}"), 1.0);
    assert_eq!(after.get("simpool_card_stops_total{card=\"5\"}"), 1.0);
    assert!(delta("simpool_pool_replies_total") >= 14.0);
    assert!(delta("simpool_pool_requests_total") >= 14.0);
    // Every 4th reply frame of the simulator comes after junk bytes.
    assert!(after.get("simpool_pool_garbage_bytes_total") > 0.0);
    assert_eq!(after.get("simpool_pool_unsolicited_replies_total"), 0.0);
    assert_eq!(after.get("simpool_pool_reconnects_total"), 0.0);
    // Traced: the 10 + 2 exchanges the cards answered and the starts' ATRs (not the refusals).
    assert!(delta("simpool_gsmtap_datagrams_sent_total") >= 12.0);
    assert_eq!(after.get("simpool_gsmtap_datagrams_dropped_total"), 0.0);

    // The pool goes away and comes back: link down, then a reconnect.
    sim.go_down();
    common::wait_for("the link to drop", Duration::from_secs(15), || {
        http(&control, "GET", "/healthz", &[], None).0 == 503
    });
    assert_eq!(scrape(&control).get("simpool_pool_link_up"), 0.0);
    sim.come_back();
    common::wait_for("the link to come back", Duration::from_secs(20), || {
        http(&control, "GET", "/healthz", &[], None).0 == 200
    });
    let back = scrape(&control);
    assert_eq!(back.get("simpool_pool_link_up"), 1.0);
    assert!(back.get("simpool_pool_reconnects_total") >= 1.0);
    drop(serve);
}
