//! The history database without the daemon (issue 19 §4, §5): every record kind through the
//! writer and back, queries with each filter, batching and a full queue, a `kill -9` while
//! writing (a child process: this binary itself), corrupt files (random bytes, a truncated real
//! database, one corrupted while in use), a full disk (a tiny tmpfs in a mount namespace of its
//! own: needs root), retention, labels.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use simpool::history::{
    Counters, EndReason, Event, EventKind, EventRow, History, HistoryError, HolderKind, Label,
    LabelError, LeaseBegan, LeaseEnded, LeaseId, LeaseRow, Options, Query, SchemaError, Since,
    Store, Timestamp, DEFAULT_LIMIT, MAX_LIMIT,
};

/// A directory of its own under the system's temporary directory, removed afterwards.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("simpool-history-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn db(&self) -> PathBuf {
        self.0.join("history.db")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Counters that say which lease they belong to.
fn counters_of(id: i64) -> Counters {
    Counters {
        exchanges: (id as u64 * 7) % 1000,
        errors: id as u64 % 5,
        authentications: id as u64 % 3,
        pin_failures: id as u64 % 2,
    }
}

fn began(card: u16, kind: HolderKind, start: Timestamp) -> LeaseBegan {
    LeaseBegan {
        card,
        iccid: Some(format!("8949{card:016}")),
        imsi: Some(format!("00101{card:010}")),
        holder_kind: kind,
        front_end: format!("{kind} {card}"),
        user: Some("alice".into()),
        reservation: Some(u64::from(card) + 1000),
        note: Some(format!("note of {card}")),
        start,
    }
}

fn all_leases(h: &History) -> Vec<LeaseRow> {
    h.with_store(|s| {
        s.leases(
            &Query {
                limit: Some(MAX_LIMIT),
                ..Query::default()
            },
            Timestamp::now(),
        )
    })
    .unwrap()
}

fn all_events(h: &History) -> Vec<EventRow> {
    h.with_store(|s| {
        s.events(
            &Query {
                limit: Some(MAX_LIMIT),
                ..Query::default()
            },
            Timestamp::now(),
        )
    })
    .unwrap()
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(words: &[&str]) -> BTreeSet<String> {
    words.iter().map(|s| s.to_string()).collect()
}

const LEASE_KEYS: &[&str] = &[
    "id",
    "card",
    "iccid",
    "imsi",
    "holder_kind",
    "front_end",
    "user",
    "reservation",
    "note",
    "start",
    "end",
    "why",
    "exchanges",
    "errors",
    "authentications",
    "pin_failures",
];
const EVENT_KEYS: &[&str] = &[
    "id", "card", "time", "kind", "iccid", "imsi", "user", "lease", "detail",
];

#[test]
fn every_record_kind_round_trips_through_the_file_and_json() {
    let dir = Dir::new("round-trip");
    let rt = rt();
    let h = History::open(Options::new(dir.db())).unwrap();
    assert_eq!(h.report().opened.version_found, 0);
    let t0 = Timestamp::now().before(Duration::from_secs(2 * 86_400));
    let mut expected = Vec::new();
    // Every holder kind, every reason, ended; one lease left open; one with nothing known.
    for (i, kind) in HolderKind::ALL.iter().enumerate() {
        for (j, why) in EndReason::ALL.iter().enumerate() {
            let card = (i * 10 + j + 1) as u16;
            let start = t0.after(Duration::from_secs((i * 100 + j) as u64));
            let open = h.lease_began(began(card, *kind, start));
            let ended = LeaseEnded {
                end: start.after(Duration::from_millis(1234)),
                why: *why,
                counters: counters_of(open.id.0),
            };
            expected.push(LeaseRow {
                id: open.id,
                began: open.began.clone(),
                end: Some(ended.end),
                why: Some(ended.why),
                counters: ended.counters,
            });
            assert!(h.lease_ended(open, ended));
        }
    }
    let held = h.lease_began(began(
        200,
        HolderKind::Reader,
        t0.after(Duration::from_secs(9999)),
    ));
    let bare = LeaseBegan {
        iccid: None,
        imsi: None,
        user: None,
        reservation: None,
        note: None,
        ..LeaseBegan::now(256, HolderKind::Scan, "scan")
    };
    let bare_open = h.lease_began(bare.clone());
    // The ICCID learnt after the start goes in with the end.
    let mut late = bare_open.clone();
    late.began.iccid = Some("89000000000000000018".into());
    let bare_end = LeaseEnded::now(EndReason::Released, Counters::default());
    h.lease_ended(late.clone(), bare_end);
    let mut events = Vec::new();
    for (i, kind) in EventKind::ALL.iter().enumerate() {
        let e = Event {
            card: 18,
            time: t0.after(Duration::from_secs(i as u64)),
            kind: *kind,
            iccid: Some("89490000000000000018".into()),
            imsi: if i % 2 == 0 {
                Some("001010000000018".into())
            } else {
                None
            },
            user: Some("bob".into()),
            lease: Some(held.id),
            detail: (*kind == EventKind::Refused).then(|| "would use ADM1's last try".into()),
        };
        assert!(h.event(e.clone()));
        events.push(e);
    }
    let nothing = Event::now(1, EventKind::Inserted);
    h.event(nothing.clone());
    events.push(nothing);
    rt.block_on(h.flush());
    let s = h.stats();
    let n = expected.len() as u64;
    assert_eq!(s.written, 2 * n + 3 + events.len() as u64, "{s:?}");
    assert_eq!((s.dropped, s.failed), (0, 0), "{s:?}");

    let check = |h: &History, held_why: Option<EndReason>| {
        let rows = all_leases(h);
        assert_eq!(rows.len(), expected.len() + 2);
        // Newest first: the bare lease (now), the held one, then the ended ones backwards.
        assert_eq!(rows[0].id, late.id);
        assert_eq!(rows[0].began, late.began);
        assert_eq!(rows[0].why, Some(EndReason::Released));
        assert_eq!(rows[1].id, held.id);
        assert_eq!(rows[1].began, held.began);
        assert_eq!(rows[1].why, held_why);
        let mut back: Vec<LeaseRow> = rows[2..].to_vec();
        back.reverse();
        assert_eq!(back, expected);
        for r in &rows {
            let v = serde_json::to_value(r).unwrap();
            assert_eq!(keys(&v), set(LEASE_KEYS), "{v}");
            let again: LeaseRow = serde_json::from_value(v).unwrap();
            assert_eq!(&again, r);
        }
        let ev = all_events(h);
        let mut got: Vec<Event> = ev.iter().map(|r| r.event.clone()).collect();
        got.sort_by_key(|e| e.time);
        let mut want = events.clone();
        want.sort_by_key(|e| e.time);
        assert_eq!(got, want);
        for r in &ev {
            let v = serde_json::to_value(r).unwrap();
            assert_eq!(keys(&v), set(EVENT_KEYS), "{v}");
            assert_eq!(&serde_json::from_value::<EventRow>(v).unwrap(), r);
        }
        rows
    };
    let rows = check(&h, None);
    // JSON as the API will print it: words in kebab-case, times RFC 3339, null where unknown.
    let v = serde_json::to_value(&rows[0]).unwrap();
    assert_eq!(v["holder_kind"], "scan");
    assert_eq!(v["why"], "released");
    assert_eq!(v["user"], serde_json::Value::Null);
    assert_eq!(v["iccid"], "89000000000000000018");
    let crashed = rows
        .iter()
        .find(|r| r.why == Some(EndReason::DaemonCrashed))
        .unwrap();
    let v = serde_json::to_value(crashed).unwrap();
    assert_eq!(v["why"], "daemon-crashed");
    assert_eq!(v["start"], crashed.began.start.to_string());
    assert!(v["start"].as_str().unwrap().ends_with('Z'));
    let sr = rows
        .iter()
        .find(|r| r.began.holder_kind == HolderKind::SimRest)
        .unwrap();
    assert_eq!(serde_json::to_value(sr).unwrap()["holder_kind"], "sim-rest");

    // Closing ends the lease still held as daemon-stopped; the file keeps everything.
    rt.block_on(h.close());
    assert!(
        !h.event(Event::now(1, EventKind::Removed)),
        "recorded after close"
    );
    assert_eq!(h.stats().dropped, 1);
    drop(h);
    let h = History::open(Options::new(dir.db())).unwrap();
    assert_eq!(
        h.report().opened.version_found,
        simpool::history::SCHEMA_VERSION
    );
    assert_eq!(h.report().crashed_leases, 0);
    let rows = check(&h, Some(EndReason::DaemonStopped));
    assert!(rows[1].end.is_some());
    // Ids go on from the highest in the file.
    let next = h.lease_began(LeaseBegan::now(
        3,
        HolderKind::Api,
        "API request from 127.0.0.1:1",
    ));
    assert_eq!(next.id, LeaseId(late.id.0 + 1));
}

#[test]
fn queries_filter_by_card_iccid_user_since_and_limit() {
    let dir = Dir::new("queries");
    let rt = rt();
    let h = History::open(Options::new(dir.db())).unwrap();
    let now = Timestamp::now();
    let hours = |n: u64| now.before(Duration::from_secs(n * 3600));
    // (card, user, start h ago, end h ago or open)
    let plan: &[(u16, &str, u64, Option<u64>)] = &[
        (18, "alice", 10, Some(9)),
        (18, "bob", 8, Some(7)),
        (20, "alice", 6, Some(1)),
        (18, "alice", 5, None),
        (21, "carol", 3, Some(2)),
        (18, "bob", 2, Some(1)),
    ];
    let mut ids = Vec::new();
    for (card, user, start, end) in plan {
        let mut b = began(*card, HolderKind::Reader, hours(*start));
        b.user = Some(user.to_string());
        let open = h.lease_began(b);
        ids.push(open.id);
        if let Some(e) = end {
            h.lease_ended(
                open,
                LeaseEnded {
                    end: hours(*e),
                    why: EndReason::Released,
                    counters: Counters::default(),
                },
            );
        }
    }
    for (i, (card, user, start, _)) in plan.iter().enumerate() {
        h.event(Event {
            user: Some(user.to_string()),
            iccid: Some(format!("8949{card:016}")),
            lease: Some(ids[i]),
            time: hours(*start),
            ..Event::now(*card, EventKind::Refused)
        });
    }
    rt.block_on(h.flush());
    let q = |q: Query| -> Vec<usize> {
        let rows = rt.block_on(h.leases(q)).unwrap();
        rows.iter()
            .map(|r| ids.iter().position(|i| *i == r.id).unwrap())
            .collect()
    };
    let qe = |q: Query| -> Vec<usize> {
        let rows = rt.block_on(h.events(q)).unwrap();
        rows.iter()
            .map(|r| ids.iter().position(|i| Some(*i) == r.event.lease).unwrap())
            .collect()
    };
    // Newest first, by start.
    assert_eq!(q(Query::default()), [5, 4, 3, 2, 1, 0]);
    assert_eq!(qe(Query::default()), [5, 4, 3, 2, 1, 0]);
    let card = |c| Query {
        card: Some(c),
        ..Query::default()
    };
    assert_eq!(q(card(18)), [5, 3, 1, 0]);
    assert_eq!(qe(card(18)), [5, 3, 1, 0]);
    assert_eq!(q(card(99)), Vec::<usize>::new());
    let iccid = Query {
        iccid: Some(format!("8949{:016}", 20)),
        ..Query::default()
    };
    assert_eq!(q(iccid.clone()), [2]);
    assert_eq!(qe(iccid), [2]);
    let user = |u: &str| Query {
        user: Some(u.into()),
        ..Query::default()
    };
    assert_eq!(q(user("alice")), [3, 2, 0]);
    assert_eq!(qe(user("bob")), [5, 1]);
    // Since 4 h: held at some point in the last 4 h (begun, ended, or still open).
    let since = |s: &str| Query {
        since: Some(s.parse().unwrap()),
        ..Query::default()
    };
    assert_eq!(q(since("4h")), [5, 4, 3, 2]);
    assert_eq!(qe(since("4h")), [5, 4]);
    assert_eq!(q(since("90m")), [5, 3, 2]);
    assert_eq!(q(since("1d")), [5, 4, 3, 2, 1, 0]);
    // The same as a time.
    let at = Query {
        since: Some(Since::At(hours(4))),
        ..Query::default()
    };
    assert_eq!(q(at.clone()), [5, 4, 3, 2]);
    let text = hours(4).to_string();
    assert_eq!(q(since(&text)), [5, 4, 3, 2]);
    // Limits, and everything at once.
    let lim = |n| Query {
        limit: Some(n),
        ..Query::default()
    };
    assert_eq!(q(lim(2)), [5, 4]);
    assert_eq!(qe(lim(1)), [5]);
    let all = Query {
        card: Some(18),
        iccid: Some(format!("8949{:016}", 18)),
        user: Some("alice".into()),
        since: Some("6h".parse().unwrap()),
        limit: Some(10),
    };
    assert_eq!(q(all.clone()), [3]);
    assert_eq!(qe(all.clone()), [3]);
    let all = Query {
        since: Some("4h".parse().unwrap()),
        ..all
    };
    assert_eq!(q(all.clone()), [3], "still held");
    assert_eq!(qe(all), Vec::<usize>::new(), "its event is 5 h old");
    // The query string the API will get.
    let from_url: Query = serde_json::from_value(serde_json::json!({
        "card": 18, "user": "bob", "since": "12h", "limit": 1
    }))
    .unwrap();
    assert_eq!(q(from_url), [5]);
    // Refusals.
    for bad in [card(0), card(257), lim(0), lim(MAX_LIMIT + 1)] {
        let e = rt.block_on(h.leases(bad)).unwrap_err();
        assert!(matches!(e, HistoryError::Query(_)), "{e}");
    }
    // The default limit.
    for i in 0..(DEFAULT_LIMIT + 5) {
        h.event(Event {
            time: hours(20).after(Duration::from_millis(u64::from(i))),
            ..Event::now(7, EventKind::Inserted)
        });
    }
    rt.block_on(h.flush());
    assert_eq!(
        rt.block_on(h.events(card(7))).unwrap().len(),
        DEFAULT_LIMIT as usize
    );
}

/// Runs `f` on a thread and fails if it has not returned within 10 s: a record call that
/// blocked would hang here instead of passing.
fn without_blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("a record call blocked")
}

#[test]
fn records_go_in_batches_and_a_full_queue_drops_and_counts() {
    let dir = Dir::new("batches");
    let rt = rt();
    let mut opts = Options::new(dir.db());
    opts.batch = 64;
    opts.queue = 2000;
    let h = History::open(opts).unwrap();
    // While the store is busy, 1000 records queue up; they go in 64 at a time.
    let sent = h.with_store(|_| {
        let h = h.clone();
        without_blocking(move || {
            (0..1000)
                .filter(|i| h.event(Event::now((i % 256 + 1) as u16, EventKind::Inserted)))
                .count()
        })
    });
    assert_eq!(sent, 1000);
    rt.block_on(h.flush());
    let s = h.stats();
    assert_eq!(
        (s.queued, s.written, s.dropped, s.failed),
        (1000, 1000, 0, 0)
    );
    assert!(
        s.batches <= 2 + 1000 / 64,
        "1000 queued records took {} transactions",
        s.batches
    );
    // A record the database refuses costs itself only, not its batch.
    let card6 = Query {
        card: Some(6),
        limit: Some(MAX_LIMIT),
        ..Query::default()
    };
    let card6_before = rt.block_on(h.events(card6.clone())).unwrap().len();
    let before = h.stats();
    h.with_store(|_| {
        h.event(Event::now(5, EventKind::Removed));
        h.event(Event::now(0, EventKind::Removed));
        h.event(Event::now(6, EventKind::Removed));
    });
    rt.block_on(h.flush());
    let s = h.stats();
    assert_eq!(s.written - before.written, 2, "{s:?}");
    assert_eq!(s.failed - before.failed, 1, "{s:?}");
    assert_eq!(
        rt.block_on(h.events(card6)).unwrap().len(),
        card6_before + 1
    );
    rt.block_on(h.close());
    drop(h);

    // A small queue with the writer stuck: the callers never wait, the excess is counted.
    let dir = Dir::new("full-queue");
    let mut opts = Options::new(dir.db());
    opts.queue = 16;
    opts.batch = 8;
    let h = History::open(opts).unwrap();
    let (accepted, opens) = h.with_store(|_| {
        let h = h.clone();
        without_blocking(move || {
            let mut accepted = 0;
            let mut opens = Vec::new();
            for i in 0..100u16 {
                if h.event(Event::now(i % 256 + 1, EventKind::Inserted)) {
                    accepted += 1;
                }
            }
            for i in 0..10u16 {
                opens.push(h.lease_began(LeaseBegan::now(i + 1, HolderKind::Reader, "reader 0")));
            }
            (accepted, opens)
        })
    });
    assert!(accepted <= 16 + 8, "{accepted} accepted into a queue of 16");
    let s = h.stats();
    assert_eq!(s.dropped, 110 - s.queued, "{s:?}");
    rt.block_on(h.flush());
    // A lease whose beginning was dropped is recorded whole when it ends.
    for o in opens {
        let id = o.id;
        assert!(h.lease_ended(o, LeaseEnded::now(EndReason::Released, counters_of(id.0))));
    }
    rt.block_on(h.flush());
    let rows = all_leases(&h);
    assert_eq!(rows.len(), 10);
    for r in &rows {
        assert_eq!(r.why, Some(EndReason::Released));
        assert_eq!(r.counters, counters_of(r.id.0));
    }
    let s = h.stats();
    assert_eq!(s.written + s.dropped, 120, "{s:?}");
}

const KILL9_ENV: &str = "SIMPOOL_HISTORY_KILL9";

/// The child of `kill9_loses_only_unfinished_leases`: writes leases in rounds and prints, after
/// each flush, which leases it has ended and which are still open.
#[test]
#[ignore = "run by kill9_loses_only_unfinished_leases in a child process"]
fn kill9_child() {
    let path = std::env::var_os(KILL9_ENV).expect("run by kill9_loses_only_unfinished_leases");
    let h = History::open(Options::new(PathBuf::from(path))).unwrap();
    let mut held = std::collections::VecDeque::new();
    let mut ended: Vec<i64> = Vec::new();
    for round in 0u64.. {
        for i in 0..50u16 {
            let card = ((round * 50 + u64::from(i)) % 256 + 1) as u16;
            let o = h.lease_began(began(card, HolderKind::Reader, Timestamp::now()));
            if i < 30 {
                ended.push(o.id.0);
                let c = counters_of(o.id.0);
                h.lease_ended(o, LeaseEnded::now(EndReason::Released, c));
            } else {
                held.push_back(o);
            }
        }
        // Leases held over rounds end later, in another transaction than their beginning.
        while held.len() > 60 {
            let o = held.pop_front().unwrap();
            ended.push(o.id.0);
            let c = counters_of(o.id.0);
            h.lease_ended(o, LeaseEnded::now(EndReason::Expired, c));
        }
        h.event(Event::now(18, EventKind::Inserted));
        h.flush_blocking();
        let open: Vec<i64> = held.iter().map(|o| o.id.0).collect();
        println!(
            "flushed {}",
            serde_json::json!({"round": round, "ended": ended, "open": open})
        );
    }
}

#[test]
fn kill9_loses_only_unfinished_leases() {
    let dir = Dir::new("kill9");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill9_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL9_ENV, dir.db())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some((_, j)) = line.split_once("flushed ") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(j) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    for _ in 0..8 {
        let left = deadline.saturating_duration_since(Instant::now());
        last = Some(rx.recv_timeout(left).expect("the child writes rounds"));
    }
    // It is writing the next rounds now.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    reader.join().unwrap();
    while let Ok(v) = rx.try_recv() {
        last = Some(v);
    }
    let last = last.unwrap();
    let ids = |k: &str| -> Vec<i64> {
        last[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let (ended, open) = (ids("ended"), ids("open"));

    let h = History::open(Options::new(dir.db())).unwrap();
    assert!(h.report().opened.moved_aside.is_none(), "{:?}", h.report());
    assert!(h.with_store(|s| s.check()).unwrap());
    let rows = all_leases(&h);
    let by_id: std::collections::HashMap<i64, &LeaseRow> =
        rows.iter().map(|r| (r.id.0, r)).collect();
    // Every lease ended before the last flush the child reported is there, whole.
    for id in &ended {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("lease {id} ended and was lost"));
        assert!(
            matches!(r.why, Some(EndReason::Released | EndReason::Expired)),
            "{r:?}"
        );
        assert!(r.end.is_some());
        assert_eq!(r.counters, counters_of(*id), "{r:?}");
    }
    // Those still held are there, closed as crashed (or ended, if that got in before the kill).
    for id in &open {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("open lease {id} lost"));
        match r.why {
            Some(EndReason::DaemonCrashed) => assert_eq!(r.end, None),
            Some(EndReason::Expired) => assert_eq!(r.counters, counters_of(*id)),
            other => panic!("lease {id}: {other:?}"),
        }
    }
    // Nothing is left open, and whatever else got in is whole.
    assert!(h.report().crashed_leases >= 1, "{:?}", h.report());
    for r in &rows {
        assert!(r.why.is_some(), "{r:?}");
        if r.why != Some(EndReason::DaemonCrashed) {
            assert_eq!(r.counters, counters_of(r.id.0), "{r:?}");
        }
    }
    eprintln!(
        "kill -9 after round {}: {} leases in the file, {} closed as crashed",
        last["round"],
        rows.len(),
        h.report().crashed_leases
    );
}

/// xorshift64: bytes that are no database.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .collect();
    v.sort();
    v
}

/// The history works: a lease written and read back.
fn works(h: &History) {
    let rt = rt();
    let o = h.lease_began(began(42, HolderKind::Api, Timestamp::now()));
    let id = o.id;
    h.lease_ended(o, LeaseEnded::now(EndReason::Released, counters_of(id.0)));
    rt.block_on(h.flush());
    let rows = rt
        .block_on(h.leases(Query {
            card: Some(42),
            ..Query::default()
        }))
        .unwrap();
    assert_eq!(rows.first().map(|r| r.id), Some(id), "{rows:?}");
    assert!(h.with_store(|s| s.check()).unwrap());
}

#[test]
fn a_file_of_random_bytes_is_moved_aside_and_a_new_one_works() {
    let dir = Dir::new("random");
    let bytes = noise(64 * 1024, 0x5eed);
    std::fs::write(dir.db(), &bytes).unwrap();
    let wal = noise(8 * 1024, 0xbad);
    std::fs::write(dir.0.join("history.db-wal"), &wal).unwrap();
    let h = History::open(Options::new(dir.db())).unwrap();
    let (aside, why) = h.report().opened.moved_aside.clone().expect("moved aside");
    assert!(why.contains("not a database"), "{why}");
    let name = aside.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("history.db.corrupt-2"), "{name}");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        bytes,
        "the old file is kept as it was"
    );
    let mut aside_wal = aside.into_os_string();
    aside_wal.push("-wal");
    assert_eq!(
        std::fs::read(&aside_wal).unwrap(),
        wal,
        "its WAL went with it"
    );
    works(&h);
}

/// A real history of `n` leases, closed (its WAL checkpointed into the file).
fn real_history(path: &Path, n: usize) {
    let h = History::open(Options::new(path)).unwrap();
    for i in 0..n {
        let o = h.lease_began(began(
            (i % 256 + 1) as u16,
            HolderKind::Reader,
            Timestamp::now(),
        ));
        h.lease_ended(o, LeaseEnded::now(EndReason::Released, Counters::default()));
    }
    h.close_blocking();
    drop(h);
    assert!(!Path::new(&format!("{}-wal", path.display())).exists());
}

#[test]
fn a_truncated_or_damaged_history_is_moved_aside_and_a_new_one_works() {
    // Cut (the schema then points past the end), or garbage over some pages in the middle
    // (only the integrity check reads them all).
    for (name, cut, damage) in [
        ("half", 0.5, false),
        ("odd", 0.77, false),
        ("damaged", 1.0, true),
    ] {
        let dir = Dir::new(&format!("truncated-{name}"));
        real_history(&dir.db(), 3000);
        let len = std::fs::metadata(dir.db()).unwrap().len();
        let keep = (len as f64 * cut) as u64;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.db())
            .unwrap();
        f.set_len(keep).unwrap();
        if damage {
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start(len / 4 / 4096 * 4096)).unwrap();
            f.write_all(&noise(3 * 4096, 99)).unwrap();
        }
        drop(f);
        let h = History::open(Options::new(dir.db())).unwrap();
        let (aside, why) = h
            .report()
            .opened
            .moved_aside
            .clone()
            .unwrap_or_else(|| panic!("{name}: a file cut to {keep} of {len} bytes was kept"));
        eprintln!("{name}: {keep} of {len} bytes: {why}");
        assert_eq!(std::fs::metadata(&aside).unwrap().len(), keep);
        assert_eq!(all_leases(&h).len(), 0, "a new file");
        works(&h);
    }
}

#[test]
fn a_history_corrupted_while_in_use_is_moved_aside_by_the_daily_check() {
    let dir = Dir::new("corrupt-live");
    let rt = rt();
    let mut opts = Options::new(dir.db());
    opts.retention_every = Duration::from_millis(100);
    let h = History::open(opts).unwrap();
    // Larger than SQLite's page cache, so the check reads the file itself.
    for i in 0..20_000u32 {
        let o = h.lease_began(began(
            (i % 256 + 1) as u16,
            HolderKind::Reader,
            Timestamp::now(),
        ));
        h.lease_ended(o, LeaseEnded::now(EndReason::Released, Counters::default()));
        if i % 1000 == 0 {
            rt.block_on(h.flush());
        }
    }
    rt.block_on(h.flush());
    assert_eq!(h.stats().moved_aside, 0);
    // Something else overwrites the file under the daemon.
    let len = std::fs::metadata(dir.db()).unwrap().len() as usize;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.db())
        .unwrap();
    f.write_all(&noise(len, 77)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(30);
    while h.stats().moved_aside == 0 {
        assert!(
            Instant::now() < deadline,
            "corruption not noticed: {:?}",
            h.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let aside = corrupt_files(&dir.0);
    assert_eq!(aside.len(), 1, "{aside:?}");
    works(&h);
}

#[test]
fn files_that_cannot_be_taken_are_refused_and_left_untouched() {
    let dir = Dir::new("refused");
    // A second daemon on the same file.
    let h = History::open(Options::new(dir.db())).unwrap();
    let e = History::open(Options::new(dir.db())).unwrap_err();
    assert!(matches!(e, HistoryError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("in use by another simpool"), "{e}");
    h.close_blocking();
    drop(h);
    History::open(Options::new(dir.db()))
        .unwrap()
        .close_blocking();

    // A newer simpool's file.
    let newer = dir.0.join("newer.db");
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.execute_batch(&format!(
            "PRAGMA application_id = {}; PRAGMA user_version = 99; CREATE TABLE x (y);",
            simpool::history::APPLICATION_ID
        ))
        .unwrap();
    }
    let before = std::fs::read(&newer).unwrap();
    let e = History::open(Options::new(&newer)).unwrap_err();
    assert!(
        matches!(
            e,
            HistoryError::Schema {
                source: SchemaError::Newer { found: 99, .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(
        std::fs::read(&newer).unwrap() == before,
        "a newer simpool's file was changed"
    );
    // Somebody else's database.
    let other = dir.0.join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE mine (x); INSERT INTO mine VALUES (1);")
        .unwrap();
    let before = std::fs::read(&other).unwrap();
    let e = History::open(Options::new(&other)).unwrap_err();
    assert!(
        matches!(
            e,
            HistoryError::Schema {
                source: SchemaError::NotOurs,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        std::fs::read(&other).unwrap() == before,
        "somebody else's database was changed"
    );
    assert!(corrupt_files(&dir.0).is_empty());
    // A path that cannot be a file.
    let e = History::open(Options::new(&dir.0)).unwrap_err();
    let _ = std::fs::remove_file(format!("{}.lock", dir.0.display()));
    assert!(matches!(e, HistoryError::Sqlite { .. }), "{e}");
    assert!(e.to_string().contains(&dir.0.display().to_string()), "{e}");
}

#[test]
fn retention_deletes_old_rows_at_start_up_and_then_periodically() {
    let dir = Dir::new("retention");
    let now = Timestamp::now();
    let days = |n: u64| now.before(Duration::from_secs(n * 86_400));
    let mut opts = Options::new(dir.db());
    opts.retention_days = 0;
    let h = History::open(opts.clone()).unwrap();
    let lease = |start: u64, end: Option<u64>| {
        let o = h.lease_began(began(9, HolderKind::Bank, days(start)));
        let id = o.id;
        if let Some(e) = end {
            h.lease_ended(
                o,
                LeaseEnded {
                    end: days(e),
                    why: EndReason::Released,
                    counters: Counters::default(),
                },
            );
        }
        id
    };
    let old = lease(120, Some(100));
    let ended_recently = lease(100, Some(80));
    let recent = lease(10, Some(9));
    let held_long = lease(100, None);
    h.event(Event {
        time: days(91),
        ..Event::now(9, EventKind::MarkedBad)
    });
    h.event(Event {
        time: days(89),
        ..Event::now(9, EventKind::BadCleared)
    });
    h.with_store(|s| s.set_labels(9, &["site=lab".parse().unwrap()]))
        .unwrap();
    h.flush_blocking();
    drop(h);
    // history_days = 0 keeps everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        match History::open(opts.clone()) {
            Ok(h) => break h,
            Err(HistoryError::InUse { .. }) if Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(h.report().expired, 0);
    assert_eq!(
        h.report().crashed_leases,
        0,
        "dropping the history closed its leases"
    );
    assert_eq!(all_leases(&h).len(), 4);
    // The lease held when it was dropped was closed as daemon-stopped, now: it stays.
    h.close_blocking();
    drop(h);
    opts.retention_days = 90;
    opts.retention_every = Duration::from_millis(50);
    let h = History::open(opts).unwrap();
    assert_eq!(h.report().expired, 2, "{:?}", h.report());
    let ids: BTreeSet<LeaseId> = all_leases(&h).iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        [ended_recently, recent, held_long].into_iter().collect()
    );
    assert!(!ids.contains(&old));
    let ev = all_events(&h);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].event.kind, EventKind::BadCleared);
    assert_eq!(h.with_store(|s| s.labels(9)).unwrap()["site"], "lab");
    // Later: a row that is already too old goes at the next run.
    let again = {
        let o = h.lease_began(began(10, HolderKind::Bank, days(200)));
        let id = o.id;
        h.lease_ended(
            o,
            LeaseEnded {
                end: days(199),
                why: EndReason::LinkLost,
                counters: Counters::default(),
            },
        );
        id
    };
    h.flush_blocking();
    let deadline = Instant::now() + Duration::from_secs(10);
    while all_leases(&h).iter().any(|r| r.id == again) {
        assert!(Instant::now() < deadline, "not expired: {:?}", h.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.stats().expired, 3);
}

#[test]
fn labels_set_remove_replace_select_and_persist() {
    let dir = Dir::new("labels");
    let rt = rt();
    let h = History::open(Options::new(dir.db())).unwrap();
    let l = |s: &str| s.parse::<Label>().unwrap();
    let got = rt
        .block_on(h.set_labels(18, vec![l("site=lab-2"), l("operator=acme"), l("url=a=b")]))
        .unwrap();
    assert_eq!(
        serde_json::to_value(&got).unwrap(),
        serde_json::json!({"operator": "acme", "site": "lab-2", "url": "a=b"})
    );
    rt.block_on(h.set_labels(19, vec![l("site=lab-2"), l("operator=other")]))
        .unwrap();
    rt.block_on(h.set_labels(20, vec![l("site=lab-1"), l("operator=acme")]))
        .unwrap();
    // A key set again takes the new value.
    let got = rt
        .block_on(h.set_labels(18, vec![l("site=lab-3")]))
        .unwrap();
    assert_eq!(got["site"], "lab-3");
    rt.block_on(h.set_labels(18, vec![l("site=lab-2")]))
        .unwrap();
    // Selection: every label must hold.
    let m = |sel: &[&str]| {
        rt.block_on(h.cards_matching(sel.iter().map(|s| l(s)).collect()))
            .unwrap()
    };
    assert_eq!(m(&["site=lab-2"]), [18, 19]);
    assert_eq!(m(&["operator=acme"]), [18, 20]);
    assert_eq!(m(&["site=lab-2", "operator=acme"]), [18]);
    assert_eq!(m(&["site=lab-2", "site=lab-2"]), [18, 19]);
    assert_eq!(m(&["site=lab-2", "site=lab-1"]), Vec::<u16>::new());
    assert_eq!(m(&["site=nowhere"]), Vec::<u16>::new());
    assert_eq!(m(&[]).len(), 256);
    // Removal (an absent key is no error), change (remove then set), replace.
    let got = rt
        .block_on(h.remove_labels(18, vec!["url".into(), "absent".into()]))
        .unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), ["operator", "site"]);
    let got = rt
        .block_on(h.change_labels(
            18,
            vec![l("site=moved")],
            vec!["operator".into(), "site".into()],
        ))
        .unwrap();
    assert_eq!(
        serde_json::to_value(&got).unwrap(),
        serde_json::json!({"site": "moved"})
    );
    let got = rt
        .block_on(h.replace_labels(19, vec![l("only=this")]))
        .unwrap();
    assert_eq!(
        serde_json::to_value(&got).unwrap(),
        serde_json::json!({"only": "this"})
    );
    let all = rt.block_on(h.all_labels()).unwrap();
    assert_eq!(all.keys().copied().collect::<Vec<_>>(), [18, 19, 20]);
    assert!(rt.block_on(h.labels(21)).unwrap().is_empty());
    // What cannot be a label.
    assert_eq!(
        "site".parse::<Label>(),
        Err(LabelError::NoEquals("site".into()))
    );
    assert!(matches!("=x".parse::<Label>(), Err(LabelError::Key(_))));
    assert!(matches!("a b=x".parse::<Label>(), Err(LabelError::Key(_))));
    assert!(matches!(
        "site=".parse::<Label>(),
        Err(LabelError::EmptyValue { .. })
    ));
    assert!(matches!(
        "site=a\nb".parse::<Label>(),
        Err(LabelError::Value { .. })
    ));
    assert!(Label::new("k".repeat(64), "v".repeat(256)).is_ok());
    assert!(Label::new("k".repeat(65), "v").is_err());
    assert!(Label::new("k", "v".repeat(257)).is_err());
    assert!(serde_json::from_str::<Label>("\"a=b\"").is_ok());
    let e = rt.block_on(h.set_labels(0, vec![l("a=b")])).unwrap_err();
    assert!(matches!(e, HistoryError::NoSuchCard(0)), "{e}");
    let e = rt
        .block_on(h.remove_labels(18, vec!["bad key".into()]))
        .unwrap_err();
    assert!(matches!(e, HistoryError::Label(LabelError::Key(_))), "{e}");
    rt.block_on(h.close());
    drop(h);
    // Kept in the same file.
    let (s, _) = Store::open(&dir.db()).unwrap();
    assert_eq!(s.labels(20).unwrap()["operator"], "acme");
    assert_eq!(s.cards_matching(&[l("site=moved")]).unwrap(), [18]);
}

const DISK_FULL_ENV: &str = "SIMPOOL_HISTORY_DISK_FULL";

/// The child of `a_full_disk_is_logged_once_counted_and_survived`, on a tiny tmpfs.
#[test]
#[ignore = "run by a_full_disk_is_logged_once_counted_and_survived in a child process"]
fn disk_full_child() {
    let dir = PathBuf::from(std::env::var_os(DISK_FULL_ENV).expect("run by the disk-full test"));
    env_logger::Builder::new()
        .parse_filters("simpool=info")
        .is_test(false)
        .init();
    let h = History::open(Options::new(dir.join("history.db"))).unwrap();
    let write = |n: usize| {
        for i in 0..n {
            let mut b = began((i % 256 + 1) as u16, HolderKind::Reader, Timestamp::now());
            b.note = Some("x".repeat(2000));
            let o = h.lease_began(b);
            h.lease_ended(o, LeaseEnded::now(EndReason::Released, Counters::default()));
        }
        h.flush_blocking();
    };
    write(20);
    assert_eq!(h.stats().failed, 0);
    // Fill the disk.
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let mut rounds = 0;
    while h.stats().failed == 0 {
        rounds += 1;
        assert!(rounds < 500, "the disk never filled: {:?}", h.stats());
        write(20);
    }
    // It stays full a while: more failures, still no panic, no new warning.
    for _ in 0..20 {
        write(20);
    }
    let full = h.stats();
    std::fs::remove_file(&filler).unwrap();
    write(20);
    let after = h.stats();
    assert!(after.written >= full.written + 40, "{full:?} → {after:?}");
    assert_eq!(after.failed, full.failed, "{full:?} → {after:?}");
    assert!(h.with_store(|s| s.check()).unwrap());
    println!("stats {}", serde_json::to_string(&after).unwrap());
}

#[test]
fn a_full_disk_is_logged_once_counted_and_survived() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: a_full_disk_is_logged_once_counted_and_survived needs root (a tmpfs in a mount namespace)");
        return;
    }
    let dir = Dir::new("disk-full");
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m simpool-history "$1" && exec "$2" --exact disk_full_child --ignored --nocapture --test-threads=1"#)
        .arg("sh")
        .arg(&dir.0)
        .arg(&exe)
        .env(DISK_FULL_ENV, &dir.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    let stats: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.find("stats {").map(|i| l[i + 6..].to_string()))
        .map(|j| serde_json::from_str(&j).unwrap())
        .unwrap_or_else(|| panic!("no stats:\n{stdout}\n{stderr}"));
    assert!(stats["failed"].as_u64().unwrap() > 20, "{stats}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    let full: Vec<&&str> = warnings
        .iter()
        .filter(|l| l.contains("disk full"))
        .collect();
    assert_eq!(
        full.len(),
        1,
        "disk full logged {} times:\n{stderr}",
        full.len()
    );
    assert!(warnings.len() <= 3, "one warning per cause:\n{stderr}");
    assert_eq!(
        stderr.matches("writing again").count(),
        1,
        "the recovery is logged:\n{stderr}"
    );
    eprintln!("disk full: {stats}; warnings: {warnings:?}");
}
