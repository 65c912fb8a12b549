//! What an application and an operator see when things go away: a PC/SC application in a tight
//! loop sees the card removed quickly (not a flood of `6F 00`), a card that stays mute is marked
//! bad on the pool once and tried again after re-insertion, and every unreachable address is
//! named with its cause at the default log level.

mod common;

use common::proc::Tied;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::get_json as get;
use common::stack::{self, Serve};
use common::wait_for;
use pcsc::{Disposition, Protocols, ShareMode};
use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

const BASE_PORT: u16 = 27500;

#[test]
fn a_tight_loop_sees_the_card_removed_soon_after_the_pool_goes_away() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let pcscd = stack::pcscd(BASE_PORT);
    let serve = Serve::start(
        &[
            "--pool",
            &sim.addr().to_string(),
            "--vpcd",
            &pcscd.vpcd_addr(0),
            "--card",
            "5",
        ],
        "removal",
    );
    let ctx = stack::context();
    let name = pcscd.reader_name(0);
    assert!(
        stack::wait_card(&ctx, &name, true, Duration::from_secs(15)),
        "{}",
        serve.log_text()
    );
    let card = ctx
        .connect(&name, ShareMode::Shared, Protocols::ANY)
        .unwrap();
    let mut buf = [0u8; 300];
    let status = common::hex("A0F2000016");
    // Warm up, then pull the plug while the loop runs.
    let start = Instant::now();
    let mut before = 0u64;
    while start.elapsed() < Duration::from_millis(500) {
        let r = card.transmit(&status, &mut buf).expect("a working card");
        assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
        before += 1;
    }
    sim.go_down();
    let gone = Instant::now();
    let (mut sw6f00, mut other_errors, mut answers) = (0u32, 0u32, 0u32);
    let removed = loop {
        match card.transmit(&status, &mut buf) {
            Ok(r) if r == [0x6F, 0x00] => sw6f00 += 1,
            Ok(r) => {
                eprintln!("answer after the pool went away: {}", hex::encode_upper(r));
                answers += 1
            }
            Err(
                e @ (pcsc::Error::RemovedCard
                | pcsc::Error::ResetCard
                | pcsc::Error::NoSmartcard
                | pcsc::Error::ReaderUnavailable),
            ) => break e,
            Err(_) => other_errors += 1,
        }
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "no removal after 5 s: {sw6f00}× 6F00, {other_errors} other errors"
        );
    };
    let took = gone.elapsed();
    eprintln!(
        "{before} exchanges before; after the pool went away: {answers} answers, {sw6f00}× 6F00, \
         {other_errors} transmit errors, then {removed:?} after {took:?}"
    );
    assert!(took < Duration::from_secs(1), "removal seen after {took:?}");
    assert!(sw6f00 <= 8, "{sw6f00}× 6F00 before the removal");
    assert_eq!(answers, 0, "no answer other than 6F00 (never an empty one)");
    let _ = card.disconnect(Disposition::LeaveCard);
    sim.come_back();
    assert!(
        stack::wait_card(&ctx, &name, true, Duration::from_secs(15)),
        "back once the pool is"
    );
}

#[test]
fn a_mute_card_is_marked_bad_once_and_tried_again_after_reinsertion() {
    let sim = common::sim_pool(
        CardsFile::default_set(),
        Faults {
            mute: [7].into(),
            ..Faults::default()
        },
    );
    // Nothing listens on the vpcd port: the card is started before vpcd is dialled.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let vpcd = closed.local_addr().unwrap().to_string();
    drop(closed);
    let control = "127.0.0.1:27591";
    let serve = Serve::start(
        &[
            "--pool",
            &sim.addr().to_string(),
            "--vpcd",
            &vpcd,
            "--card",
            "7",
            "--reply-timeout-ms",
            "300",
            "--control",
            control,
        ],
        "badcard",
    );
    wait_for("error indication sent", Duration::from_secs(10), || {
        sim.error_indications(7) >= 1
    });
    assert_eq!(
        sim.slot_state(7),
        Some(simpool::pool::SlotState::Abnormal),
        "the slot shows abnormal (LED blinks)"
    );
    let c = get(control, "/api/v1/cards/7");
    assert!(c["bad"].is_string(), "{c}");
    assert!(serve.log_text().contains("marked bad"));
    // Sent once, not on every retry: while the card is marked bad the reader looks at the slot
    // states (each second) and leaves the card alone. A reader that tried it again after a look
    // would have failed twice and indicated again before its third look.
    let looks = || {
        sim.stats()
            .state_queries
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let seen = looks();
    wait_for(
        "three more looks at the slots",
        Duration::from_secs(10),
        || looks() >= seen + 3,
    );
    assert_eq!(sim.error_indications(7), 1, "error indication sent once");
    // Pulled and put back, and no longer mute: tried again, and works.
    sim.update_faults(|f| {
        f.mute.clear();
    });
    sim.reinsert(7);
    wait_for("card restarted", Duration::from_secs(10), || {
        sim.slot_state(7) == Some(simpool::pool::SlotState::Working)
    });
    assert_eq!(sim.error_indications(7), 1);
    let c = get(control, "/api/v1/cards/7");
    assert!(c["bad"].is_null(), "{c}");
}

/// Runs `simpool serve ARGS` in a private network namespace (nothing it resolves or dials can
/// leave this machine) for `secs`; answers its stderr. `before` runs first inside the namespace.
fn serve_stderr(before: &str, args: &str, secs: u64) -> String {
    let bin = env!("CARGO_BIN_EXE_simpool");
    let script = format!(
        "ip link set lo up; {before} timeout -s INT {secs} {bin} serve --control off {args}; \
         kill $(jobs -p) 2>/dev/null; true"
    );
    // A PID namespace too: the listener started in the background dies with the test.
    let out = Command::new("unshare")
        .args(common::proc::OWN_PIDS)
        .args(["-n", "sh", "-c", &script])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .output_tied()
        .expect("unshare (root needed)");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_operator_mistake_is_named_with_its_cause_at_the_default_level() {
    let err = serve_stderr(
        "",
        "--pool nosuchhost.invalid:6666 --card 3 --vpcd 127.0.0.1:35963",
        4,
    );
    assert!(
        err.contains("nosuchhost.invalid:6666") && err.contains("lookup"),
        "{err}"
    );

    let err = serve_stderr("", "--pool 127.0.0.1:9 --card 3 --vpcd 127.0.0.1:35963", 4);
    assert!(
        err.contains("127.0.0.1:9") && err.contains("refused"),
        "{err}"
    );

    // Something listens but is no pool: it never answers ID.
    let err = serve_stderr(
        "python3 -c 'import socket,time; s=socket.socket(); s.bind((\"127.0.0.1\",6666)); s.listen(8); c=[s.accept() for _ in range(8)]; time.sleep(30)' </dev/null >/dev/null 2>&1 & \
         for i in $(seq 200); do ss -Hltn 'sport = :6666' | grep -q . && break; sleep 0.05; done;",
        "--pool 127.0.0.1:6666 --card 3 --vpcd 127.0.0.1:35963",
        4,
    );
    assert!(err.contains("is this a pool?"), "{err}");

    // The pool is fine, vpcd is not there.
    let err = serve_stderr("", "--pool sim --card 3 --vpcd 127.0.0.1:35999", 4);
    assert!(
        err.contains("127.0.0.1:35999")
            && err.contains("is pcscd running with a vpcd reader on port 35999?"),
        "{err}"
    );
    let err = serve_stderr("", "--pool sim --card 3 --vpcd nosuchhost.invalid:35963", 4);
    assert!(err.contains("nosuchhost.invalid:35963"), "{err}");
}
