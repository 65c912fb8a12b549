//! simpool's bank with the real osmo-remsim 1.0.0: osmo-remsim-server, simpool as the bank
//! (simulated pool), two osmo-remsim-client-shell, slot maps through the server's REST API.
//!
//! Needs the osmo-remsim build directory in `SIMPOOL_REMSIM_BUILD` (what `driver/remsim-build`
//! prints; driver/test sets it). Without it the test says loudly that it is skipped. osmo-remsim
//! hard-codes its ports (9997 REST, 9998 RSPRO, 9999 bank), so the test re-runs itself in a
//! private network namespace (`unshare -n`, loopback up) where nothing else listens.

mod common;

use common::proc::Tied;
use common::vectors as cards;
use common::wait_for;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NETNS_MARK: &str = "SIMPOOL_REMSIM_NETNS";
/// The ATR the client shows its modem before the bank's arrives (client-shell prints it as a
/// SET_ATR line of its own); distinct from every card's.
const CLIENT_ATR: &str = "3B00";

fn build_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("SIMPOOL_REMSIM_BUILD")?);
    let ok = [
        "src/server/osmo-remsim-server",
        "src/client/osmo-remsim-client-shell",
    ]
    .iter()
    .all(|b| dir.join(b).exists());
    assert!(
        ok,
        "SIMPOOL_REMSIM_BUILD={} has no osmo-remsim-server/client-shell (run driver/remsim-build)",
        dir.display()
    );
    Some(dir)
}

/// Runs test `name` of this binary again inside a private network namespace; true if this
/// process is already the one inside (and should do the work).
fn in_private_netns(name: &str) -> bool {
    if std::env::var_os(NETNS_MARK).is_some() {
        return true;
    }
    // One namespace at a time: the tests measure latencies and should not compete.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().unwrap();
    let root = nix::unistd::Uid::effective().is_root();
    // The test process in there dies with this one (and its helpers with it).
    let status = common::proc::status(
        Command::new("unshare")
            .args(if root { &["-n"][..] } else { &["-rn"][..] })
            .args(["sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
            .arg(&exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(NETNS_MARK, "1"),
    )
    .expect("unshare runs");
    assert!(
        status.success(),
        "{name} in a private network namespace failed"
    );
    false
}

/// A child process killed when the test ends.
struct Proc {
    child: Child,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
    // Killed with the test process even if it aborts (no Drop then).
    let err = std::fs::File::create(log).unwrap();
    let child = common::proc::spawn(cmd.stderr(err)).unwrap_or_else(|e| panic!("{name}: {e}"));
    Proc {
        child,
        name: name.into(),
    }
}

/// An osmo-remsim-client-shell: hex TPDUs in, `SET_ATR:`/`R-APDU:` lines out.
struct Shell {
    proc: Proc,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Shell {
    fn start(build: &Path, client: u16, logdir: &Path) -> Shell {
        let bin = build.join("src/client/osmo-remsim-client-shell");
        let mut cmd = Command::new(bin);
        cmd.args([
            "-i",
            "127.0.0.1",
            "-p",
            "9998",
            "-c",
            &client.to_string(),
            "-n",
            "0",
        ])
        .args(["-a", CLIENT_ATR])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        let mut proc = spawn(
            &format!("client-shell {client}"),
            &mut cmd,
            &logdir.join(format!("client-{client}.log")),
        );
        let stdin = proc.child.stdin.take().unwrap();
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Shell { proc, stdin, lines }
    }

    /// The payload of the next stdout line starting with `prefix` within `wait`.
    fn expect(&self, prefix: &str, wait: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Some(common::hex(rest));
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The next ATR from the bank (skipping the client's own placeholder).
    fn card_atr(&self, wait: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + wait;
        loop {
            let atr = self.expect("SET_ATR: ", end.saturating_duration_since(Instant::now()))?;
            if hex::encode_upper(&atr) != CLIENT_ATR {
                return Some(atr);
            }
        }
    }

    fn send(&mut self, line: &str) {
        // One write: client-shell 1.0.0 parses only the bytes of the read() that brought the
        // newline, so a line arriving in two pieces becomes an empty TPDU.
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    /// One TPDU; answers data ‖ SW and the round trip.
    fn transmit(&mut self, tpdu: &str) -> (Vec<u8>, Duration) {
        let t = Instant::now();
        self.send(tpdu);
        let r = self
            .expect("R-APDU: ", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{}: no answer to {tpdu}", self.proc.name));
        (r, t.elapsed())
    }

    fn select(&mut self, fid: &str) -> u8 {
        let r = self.transmit(&format!("A0A4000002{fid}")).0;
        r[r.len() - 2]
    }

    fn read_binary(&mut self, len: u8) -> Vec<u8> {
        let mut r = self.transmit(&format!("A0B00000{len:02X}")).0;
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        r.truncate(r.len() - 2);
        r
    }

    fn iccid(&mut self) -> String {
        assert_eq!(self.select("3F00"), 0x9F);
        assert_eq!(self.select("2FE2"), 0x9F);
        simpool::sim::profile::decode_iccid(&self.read_binary(10))
    }

    fn imsi(&mut self) -> Option<String> {
        assert_eq!(self.select("3F00"), 0x9F);
        assert_eq!(self.select("7F20"), 0x9F);
        assert_eq!(self.select("6F07"), 0x9F);
        simpool::sim::profile::decode_imsi(&self.read_binary(9))
    }
}

/// A minimal HTTP/1.1 request to the server's REST API; answers (status, body).
fn rest(method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    http(
        "127.0.0.1:9997",
        method,
        &format!("/api/backend/v1{path}"),
        body,
    )
}

fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    common::http::request(addr, method, path, &[], body).map(|r| (r.status, r.body))
}

fn post_map(bank_slot: u16, client: u16) {
    post_map_on(1, bank_slot, client)
}

fn post_map_on(bank: u16, bank_slot: u16, client: u16) {
    let body = format!(
        r#"{{"bank":{{"bankId":{bank},"slotNr":{bank_slot}}},"client":{{"clientId":{client},"slotNr":0}}}}"#
    );
    let (code, resp) = rest("POST", "/slotmaps", Some(&body)).unwrap();
    assert!((200..300).contains(&code), "POST slotmap: {code} {resp}");
}

/// The README's slot-map examples: the lines of the `sh` block that sets `S=`, continuation
/// lines joined, as (command, what its comment promises); and the `S=` line, pointed at this
/// namespace's server instead of 10.0.0.5.
fn readme_rest_examples() -> (String, Vec<(String, String)>) {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let mut block = None;
    let mut cur: Option<Vec<String>> = None;
    for line in readme.lines() {
        let t = line.trim();
        if let Some(c) = cur.as_mut() {
            if t.starts_with("```") {
                let done = cur.take().unwrap();
                if done.iter().any(|l| l.starts_with("S=http")) {
                    block = Some(done);
                    break;
                }
            } else {
                c.push(t.to_string());
            }
        } else if t == "```sh" {
            cur = Some(Vec::new());
        }
    }
    let block = block.expect("the README's slot-map block (S=http://…)");
    let mut lines = Vec::new();
    let mut pending = String::new();
    for l in block {
        match l.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                lines.push(format!("{pending}{l}"));
                pending.clear();
            }
        }
    }
    let set = lines.remove(0).replace("10.0.0.5", "127.0.0.1");
    let lines = lines
        .into_iter()
        .map(|l| match l.split_once("  # ") {
            Some((c, why)) => (c.trim().to_string(), why.trim().to_string()),
            None => (l, String::new()),
        })
        .collect();
    (set, lines)
}

/// Runs one README line as a user would, after its `S=` line; answers stdout, fails the test
/// on a non-zero exit (`curl -f`: an HTTP error).
fn run_readme_line(set: &str, line: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("{set}\n{line}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "README example `{line}` failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn slotmap_state(bank_slot: u16) -> Option<String> {
    slotmap_state_on(1, bank_slot)
}

fn slotmap_state_on(bank: u16, bank_slot: u16) -> Option<String> {
    let (_, body) = rest("GET", "/slotmaps", None).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["slotmaps"].as_array()?.iter().find_map(|m| {
        (m["bank"]["bankId"] == bank && m["bank"]["slotNr"] == bank_slot)
            .then(|| m["state"].as_str().unwrap_or("").to_string())
    })
}

/// Whether the server lists bank `id` with `slots` slots.
fn bank_listed(id: u16, slots: u16) -> bool {
    rest("GET", "/banks", None).is_ok_and(|(_, b)| {
        serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|v| {
            v["banks"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|b| b["bankId"] == id && b["numberOfSlots"] == slots)
            })
        })
    })
}

fn bank_registered() -> bool {
    rest("GET", "/banks", None).is_ok_and(|(_, b)| {
        serde_json::from_str::<serde_json::Value>(&b).is_ok_and(|v| {
            v["banks"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|b| b["bankId"] == 1 && b["numberOfSlots"] == 256)
            })
        })
    })
}

fn start_server(build: &Path, logdir: &Path, n: u32) -> Proc {
    let mut cmd = Command::new(build.join("src/server/osmo-remsim-server"));
    cmd.current_dir(logdir).stdout(Stdio::null());
    let p = spawn(
        "osmo-remsim-server",
        &mut cmd,
        &logdir.join(format!("server-{n}.log")),
    );
    wait_for("server REST up", Duration::from_secs(10), || {
        rest("GET", "/banks", None).is_ok()
    });
    p
}

fn median_and_p99(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}

#[test]
fn real_osmo_remsim_server_and_clients_use_simpool_as_bank() {
    let Some(build) = build_dir() else {
        eprintln!(
            "\n*** SKIPPED remsim interop: SIMPOOL_REMSIM_BUILD is not set \
             (driver/remsim-build ../shared/vendor/osmo-remsim-1.0.0.tar.gz prints it) ***\n"
        );
        return;
    };
    if !in_private_netns("real_osmo_remsim_server_and_clients_use_simpool_as_bank") {
        return;
    }
    let logdir = std::env::temp_dir().join(format!("simpool-remsim-{}", std::process::id()));
    std::fs::create_dir_all(&logdir).unwrap();
    eprintln!("logs in {}", logdir.display());

    let server = start_server(&build, &logdir, 1);
    let mut bank = Command::new(env!("CARGO_BIN_EXE_simpool"));
    bank.args([
        "serve",
        "--pool",
        "sim",
        "--remsim",
        "127.0.0.1",
        "--bank-id",
        "1",
    ])
    .env("RUST_LOG", "info")
    .stdout(Stdio::null());
    let _bank = spawn("simpool", &mut bank, &logdir.join("simpool.log"));
    wait_for(
        "bank 1 with 256 slots registered",
        Duration::from_secs(10),
        bank_registered,
    );

    // The README's map for card 18, verbatim; then one for card 256 beside it.
    let (set, readme) = readme_rest_examples();
    assert_eq!(readme.len(), 3, "{readme:?}");
    assert!(readme[0].1.contains("card 18 → client 23:0"), "{readme:?}");
    run_readme_line(&set, &readme[0].0);
    post_map(255, 24);
    wait_for("maps ACTIVE", Duration::from_secs(10), || {
        slotmap_state(17).as_deref() == Some("ACTIVE")
            && slotmap_state(255).as_deref() == Some("ACTIVE")
    });
    let mut a = Shell::start(&build, 23, &logdir);
    let mut b = Shell::start(&build, 24, &logdir);
    let atr = a
        .card_atr(Duration::from_secs(15))
        .expect("SET_ATR for client 23");
    assert_eq!(hex::encode_upper(atr), cards::atr(18));
    b.card_atr(Duration::from_secs(15))
        .expect("SET_ATR for client 24");

    // First exchange of each session, then steady state.
    let (first_a, t_first_a) = a.transmit("A0F2000016");
    let (_, t_first_b) = b.transmit("A0F2000016");
    assert_eq!(first_a.len(), 0x16 + 2, "{}", hex::encode_upper(&first_a));
    let mut steady = Vec::new();
    for _ in 0..100 {
        let (r, t) = a.transmit("A0F2000016");
        assert_eq!(r.len(), 0x16 + 2, "{}", hex::encode_upper(&r));
        steady.push(t);
    }
    let (p50, p99) = median_and_p99(steady);
    eprintln!(
        "STATUS via client-shell -> simpool bank: first exchange {:.2} ms / {:.2} ms, \
         steady p50 {:.3} ms p99 {:.3} ms",
        t_first_a.as_secs_f64() * 1e3,
        t_first_b.as_secs_f64() * 1e3,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    assert!(
        t_first_a < Duration::from_millis(30) && t_first_b < Duration::from_millis(30),
        "first exchange stalled (delayed ACK?): {t_first_a:?} {t_first_b:?}"
    );

    // simpool's control API shows the remote holder.
    let (_, card18) = http("127.0.0.1:6680", "GET", "/api/v1/cards/18", None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&card18).expect("JSON from /api/v1/cards/18");
    assert_eq!(v["holder"], "bank 1:17 → client 23:0", "{card18}");

    // Both at the same time.
    let (iccid, imsi) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.iccid());
        let tb = s.spawn(|| b.imsi());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(iccid, cards::iccid(18));
    assert_eq!(imsi.as_deref(), Some(cards::imsi(256).as_str()));

    // RESET restarts the card: a new SET_ATR, and the card is back at the MF.
    assert_eq!(a.select("7F20"), 0x9F);
    a.send("RESET");
    let atr = a
        .card_atr(Duration::from_secs(5))
        .expect("SET_ATR after RESET");
    assert_eq!(hex::encode_upper(atr), cards::atr(18));
    assert_ne!(
        a.select("6F07"),
        0x9F,
        "EF.IMSI not reachable from the MF: card restarted"
    );
    assert_eq!(a.iccid(), cards::iccid(18));

    // Removing client 24's map through REST ends its session: no answers any more.
    let (code, body) = rest("DELETE", &format!("/slotmaps/{}", 65536 + 255), None).unwrap();
    assert!((200..300).contains(&code), "DELETE: {code} {body}");
    wait_for("map 255 gone", Duration::from_secs(10), || {
        slotmap_state(255).is_none()
    });
    // The bank ends that session and frees card 256.
    wait_for(
        "card 256 freed by the bank",
        Duration::from_secs(10),
        || common::http::get_json("127.0.0.1:6680", "/api/v1/cards/256")["holder"].is_null(),
    );
    b.send("A0F2000016");
    assert!(
        b.expect("R-APDU: ", Duration::from_secs(2)).is_none(),
        "client 24 still served after its map was removed"
    );
    // Client 23 is not disturbed.
    assert_eq!(a.iccid(), cards::iccid(18));

    // The server restarts (and forgets its maps): the bank registers again by itself; the
    // back-end installs the maps again and both clients are served.
    drop(server);
    let _server = start_server(&build, &logdir, 2);
    wait_for(
        "bank registered again",
        Duration::from_secs(20),
        bank_registered,
    );
    post_map(17, 23);
    post_map(255, 24);
    wait_for("maps ACTIVE again", Duration::from_secs(15), || {
        slotmap_state(17).as_deref() == Some("ACTIVE")
            && slotmap_state(255).as_deref() == Some("ACTIVE")
    });
    b.card_atr(Duration::from_secs(30))
        .expect("client 24 gets card 256 again");
    assert_eq!(b.imsi().as_deref(), Some(cards::imsi(256).as_str()));
    assert_eq!(a.iccid(), cards::iccid(18));

    // The README's listing line: three JSON answers, naming the bank.
    let listed = run_readme_line(&set, &readme[1].0);
    for key in [r#""slotmaps""#, r#""banks""#, r#""clients""#] {
        assert!(listed.contains(key), "{listed}");
    }
    // The README's DELETE: "ends client 23:0's session, card 18 is stopped and freed".
    assert!(
        readme[2].1.contains("card 18 is stopped and freed"),
        "{readme:?}"
    );
    run_readme_line(&set, &readme[2].0);
    wait_for("map 17 gone", Duration::from_secs(10), || {
        slotmap_state(17).is_none()
    });
    wait_for("card 18 stopped and freed", Duration::from_secs(10), || {
        http("127.0.0.1:6680", "GET", "/api/v1/cards/18", None).is_ok_and(|(_, b)| {
            serde_json::from_str::<serde_json::Value>(&b)
                .is_ok_and(|v| v["holder"].is_null() && v["state"] != "working")
        })
    });
    a.send("A0F2000016");
    assert!(
        a.expect("R-APDU: ", Duration::from_secs(2)).is_none(),
        "client 23 still served after the README's DELETE"
    );
    let _ = std::fs::remove_dir_all(&logdir);
}

fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .args(["-c", cmd])
        .status_tied()
        .unwrap()
        .success();
    assert!(ok, "{cmd}");
}

/// The acceptance comparison, in one run: client-shell → simpool's bank (card 18) against
/// client-shell → osmo-remsim-bankd → pcscd → vpcd → simpool's PC/SC reader (card 2), the
/// exchanges of both interleaved. Both banks must be on port 9999 (the server hard-codes it)
/// at different addresses: osmo-remsim-bankd talks to the server from 127.0.0.2 and listens
/// there, so the server, seeing it connect from there, sends its clients there.
#[test]
fn simpool_bank_vs_osmo_remsim_bankd_over_pcsc() {
    let Some(build) = build_dir() else {
        eprintln!("\n*** SKIPPED remsim side-by-side: SIMPOOL_REMSIM_BUILD is not set ***\n");
        return;
    };
    if !in_private_netns("simpool_bank_vs_osmo_remsim_bankd_over_pcsc") {
        return;
    }
    // Its own /32 on lo gives 127.0.0.2 a local route whose source is 127.0.0.2.
    sh("ip addr add 127.0.0.2/32 dev lo");
    let logdir = std::env::temp_dir().join(format!("simpool-remsim-sbs-{}", std::process::id()));
    std::fs::create_dir_all(&logdir).unwrap();
    eprintln!("logs in {}", logdir.display());
    let pcscd = common::stack::Pcscd::start(logdir.join("pcscd"), 2, 35963);
    let _server = start_server(&build, &logdir, 1);

    // One daemon: reader 0 (card 2) on vpcd for osmo-remsim-bankd, and the bank (card 18).
    let mut serve = Command::new(env!("CARGO_BIN_EXE_simpool"));
    serve
        .args([
            "serve",
            "--pool",
            "sim",
            "--card",
            "2",
            "--vpcd",
            "127.0.0.1:35963",
        ])
        .args(["--remsim", "127.0.0.1", "--bank-id", "1"])
        .args(["--remsim-listen", "127.0.0.1:9999", "--control", "off"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
    let _serve = spawn("simpool", &mut serve, &logdir.join("simpool.log"));

    std::fs::write(
        logdir.join("bankd_pcsc_slots.csv"),
        "\"2\",\"0\",\"Virtual PCD 00 00\"\n",
    )
    .unwrap();
    let mut bankd = Command::new(build.join("src/bankd/osmo-remsim-bankd"));
    bankd
        .args([
            "-i",
            "127.0.0.2",
            "-b",
            "2",
            "-n",
            "1",
            "-I",
            "127.0.0.2",
            "-P",
            "9999",
        ])
        .current_dir(&logdir)
        .env("PCSCLITE_CSOCK_NAME", pcscd.socket())
        .stdout(Stdio::null());
    let _bankd = spawn("osmo-remsim-bankd", &mut bankd, &logdir.join("bankd.log"));

    wait_for("both banks registered", Duration::from_secs(15), || {
        bank_listed(1, 256) && bank_listed(2, 1)
    });
    post_map_on(1, 17, 23);
    post_map_on(2, 0, 25);
    wait_for("maps ACTIVE", Duration::from_secs(15), || {
        slotmap_state_on(1, 17).as_deref() == Some("ACTIVE")
            && slotmap_state_on(2, 0).as_deref() == Some("ACTIVE")
    });
    let mut ours = Shell::start(&build, 23, &logdir);
    let mut theirs = Shell::start(&build, 25, &logdir);
    ours.card_atr(Duration::from_secs(15))
        .expect("SET_ATR from simpool's bank");
    theirs
        .card_atr(Duration::from_secs(30))
        .expect("SET_ATR from osmo-remsim-bankd");

    let (r, first_ours) = ours.transmit("A0F2000016");
    assert_eq!(r.len(), 0x16 + 2);
    let (r, first_theirs) = theirs.transmit("A0F2000016");
    assert_eq!(r.len(), 0x16 + 2);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        let (r, t) = ours.transmit("A0F2000016");
        assert_eq!(r.len(), 0x16 + 2);
        a.push(t);
        let (r, t) = theirs.transmit("A0F2000016");
        assert_eq!(r.len(), 0x16 + 2);
        b.push(t);
    }
    let (a50, a99) = median_and_p99(a);
    let (b50, b99) = median_and_p99(b);
    eprintln!(
        "STATUS round trip through client-shell, interleaved, 300 each:\n  \
         simpool bank:                         first {:.2} ms, p50 {:.3} ms, p99 {:.3} ms\n  \
         osmo-remsim-bankd + pcscd + vpcd:     first {:.2} ms, p50 {:.3} ms, p99 {:.3} ms",
        first_ours.as_secs_f64() * 1e3,
        a50.as_secs_f64() * 1e3,
        a99.as_secs_f64() * 1e3,
        first_theirs.as_secs_f64() * 1e3,
        b50.as_secs_f64() * 1e3,
        b99.as_secs_f64() * 1e3,
    );
    assert!(
        first_ours < Duration::from_millis(30),
        "first exchange through simpool's bank stalled: {first_ours:?}"
    );
    // Interleaved medians on a shared, noisy machine: 10 % slack against flakiness.
    assert!(
        a50 <= b50.mul_f64(1.1),
        "simpool's bank slower than osmo-remsim-bankd over PC/SC: p50 {a50:?} vs {b50:?}"
    );
    // serve --check names osmo-remsim-bankd as the holder of its address (its RSPRO probe),
    // once its one worker is free of client 25.
    drop(theirs);
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_simpool"))
            .args(["serve", "--check", "--pool", "sim", "--control", "off"])
            .args(["--remsim", "127.0.0.1", "--bank-id", "3"])
            .args(["--remsim-listen", "127.0.0.2:9999"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let want = "FAILED remsim bank listen 127.0.0.2:9999: in use: an osmo-remsim bank \
                (remsim-bankd 1.0.0, \"fixme-name\") listens on 127.0.0.2:9999";
    let end = Instant::now() + Duration::from_secs(20);
    let mut text = check();
    while !text.contains(want) && Instant::now() < end {
        text = check();
    }
    assert!(text.contains(want), "{text}");
    drop((ours, _bankd, _serve, _server, pcscd));
    let _ = std::fs::remove_dir_all(&logdir);
}

/// `simpool serve` as bank `id` on its own simulated pool, listening on `listen`.
fn start_bank(id: u16, listen: &str, control: &str, cards: Option<&Path>, logdir: &Path) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_simpool"));
    cmd.args(["serve", "--pool", "sim", "--remsim", "127.0.0.1"])
        .args(["--bank-id", &id.to_string(), "--remsim-listen", listen])
        .args(["--control", control]);
    if let Some(c) = cards {
        cmd.arg("--cards").arg(c);
    }
    cmd.env("RUST_LOG", "info").stdout(Stdio::null());
    let n = std::fs::read_dir(logdir).map_or(0, |d| d.count());
    spawn(
        &format!("simpool bank {id}"),
        &mut cmd,
        &logdir.join(format!("bank-{id}-{n}.log")),
    )
}

/// The holder of card `card` in the daemon whose control API is `control`.
fn holder(control: &str, card: u16) -> serde_json::Value {
    let (_, b) = http(control, "GET", &format!("/api/v1/cards/{card}"), None).unwrap();
    serde_json::from_str::<serde_json::Value>(&b).unwrap()["holder"].clone()
}

/// Issue 23: two pools on one host under one osmo-remsim-server. Bank 1 (the built-in cards)
/// listens on 127.0.0.1:9999, bank 2 (a cards file with identities of its own) on
/// 127.0.0.2:9999; the server sends each bank's clients to the address that bank's control
/// connection comes from. A client mapped to each bank reads its own pool's card; a map moved
/// from bank 1 to bank 2 follows; bank 1 restarts while bank 2 serves on.
#[test]
fn two_pools_two_banks_under_one_server() {
    let Some(build) = build_dir() else {
        eprintln!("\n*** SKIPPED remsim two banks: SIMPOOL_REMSIM_BUILD is not set ***\n");
        return;
    };
    if !in_private_netns("two_pools_two_banks_under_one_server") {
        return;
    }
    let logdir = std::env::temp_dir().join(format!("simpool-remsim-2b-{}", std::process::id()));
    std::fs::create_dir_all(&logdir).unwrap();
    eprintln!("logs in {}", logdir.display());
    let _server = start_server(&build, &logdir, 1);

    // Pool B: cards 18 and 30 with IMSIs of their own (pool A's card 18 is the manual's).
    let cards_b = logdir.join("pool-b.toml");
    std::fs::write(
        &cards_b,
        "[[card]]\nslot = 18\nimsi = \"001019900000018\"\n\
         [[card]]\nslot = 30\nimsi = \"001019900000030\"\n",
    )
    .unwrap();
    let a18 = simpool::sim::profile::CardsFile::default_set()
        .get(18)
        .unwrap()
        .profile
        .imsi
        .clone();
    assert_ne!(a18, "001019900000018");
    let (ctl1, ctl2) = ("127.0.0.1:6680", "127.0.0.1:6681");
    let bank1 = start_bank(1, "127.0.0.1:9999", ctl1, None, &logdir);
    let _bank2 = start_bank(2, "127.0.0.2:9999", ctl2, Some(&cards_b), &logdir);
    wait_for("both banks registered", Duration::from_secs(15), || {
        bank_listed(1, 256) && bank_listed(2, 256)
    });
    // The server lists each by the name that carries its bank id.
    let (_, banks) = rest("GET", "/banks", None).unwrap();
    assert!(
        banks.contains("\"simpool bank 1\"") && banks.contains("\"simpool bank 2\""),
        "{banks}"
    );

    // Card 18 of each pool, to two clients: each reads its own pool's card.
    post_map_on(1, 17, 23);
    post_map_on(2, 17, 24);
    wait_for("maps ACTIVE", Duration::from_secs(15), || {
        slotmap_state_on(1, 17).as_deref() == Some("ACTIVE")
            && slotmap_state_on(2, 17).as_deref() == Some("ACTIVE")
    });
    let mut c23 = Shell::start(&build, 23, &logdir);
    let mut c24 = Shell::start(&build, 24, &logdir);
    c23.card_atr(Duration::from_secs(15))
        .expect("client 23 gets card 18 of bank 1");
    c24.card_atr(Duration::from_secs(15))
        .expect("client 24 gets card 18 of bank 2 (the server sends it to 127.0.0.2:9999)");
    assert_eq!(
        c23.imsi().as_deref(),
        Some(a18.as_str()),
        "pool A's card 18"
    );
    assert_eq!(
        c24.imsi().as_deref(),
        Some("001019900000018"),
        "pool B's card 18"
    );
    assert_eq!(holder(ctl1, 18), "bank 1:17 → client 23:0");
    assert_eq!(holder(ctl2, 18), "bank 2:17 → client 24:0");

    // Client 23's map moves from bank 1 (card 18) to bank 2 (card 30): it follows.
    let (code, body) = rest("DELETE", &format!("/slotmaps/{}", 65536 + 17), None).unwrap();
    assert!((200..300).contains(&code), "DELETE: {code} {body}");
    wait_for("bank 1's map gone", Duration::from_secs(10), || {
        slotmap_state_on(1, 17).is_none()
    });
    let moved = Instant::now();
    post_map_on(2, 29, 23);
    wait_for("the new map ACTIVE", Duration::from_secs(15), || {
        slotmap_state_on(2, 29).as_deref() == Some("ACTIVE")
    });
    c23.card_atr(Duration::from_secs(30))
        .expect("client 23 gets card 30 of bank 2");
    let moved = moved.elapsed();
    assert_eq!(
        c23.imsi().as_deref(),
        Some("001019900000030"),
        "pool B's card 30"
    );
    wait_for("bank 1's card 18 freed", Duration::from_secs(10), || {
        holder(ctl1, 18).is_null()
    });
    assert_eq!(holder(ctl2, 30), "bank 2:29 → client 23:0");

    // Card 256 of bank 1 to a third client.
    post_map_on(1, 255, 25);
    wait_for("map 1:255 ACTIVE", Duration::from_secs(15), || {
        slotmap_state_on(1, 255).as_deref() == Some("ACTIVE")
    });
    let mut c25 = Shell::start(&build, 25, &logdir);
    c25.card_atr(Duration::from_secs(15))
        .expect("client 25 gets card 256 of bank 1");
    assert_eq!(c25.imsi().as_deref(), Some("460019894013615"));

    // Bank 1 restarts; bank 2's clients are served throughout, and client 25 comes back.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (served, bank1, back) = std::thread::scope(|s| {
        let serving = s.spawn(|| {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(c24.imsi().as_deref(), Some("001019900000018"));
                assert_eq!(c23.imsi().as_deref(), Some("001019900000030"));
                n += 1;
            }
            n
        });
        let down = Instant::now();
        drop(bank1);
        wait_for(
            "bank 1 gone from the server",
            Duration::from_secs(15),
            || !bank_listed(1, 256),
        );
        let bank1 = start_bank(1, "127.0.0.1:9999", ctl1, None, &logdir);
        let atr = c25.card_atr(Duration::from_secs(60));
        let back = down.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = serving.join().expect("bank 2 served on");
        atr.expect("client 25 gets card 256 again after bank 1's restart");
        (n, bank1, back)
    });
    assert!(served > 0);
    eprintln!(
        "map moved to bank 2: client 23 on its new card {:.2} s after the POST; bank 1 \
         restarted: client 25 on its card again {:.2} s after the kill, bank 2 answered \
         {served} IMSI reads per client meanwhile",
        moved.as_secs_f64(),
        back.as_secs_f64()
    );
    assert_eq!(c25.imsi().as_deref(), Some("460019894013615"));
    assert_eq!(c24.imsi().as_deref(), Some("001019900000018"));
    drop((c23, c24, c25, bank1));
    let _ = std::fs::remove_dir_all(&logdir);
}
