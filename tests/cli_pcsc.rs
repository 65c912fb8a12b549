//! `simpool read` against a private pcscd with vpcd readers (run it in a private network
//! namespace: `unshare -n bash -c 'ip link set lo up && cargo test --test cli_pcsc'`).

mod common;

use common::proc::Tied;
use common::vectors as cards;
use std::process::Command;

use common::stack;
use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

const BASE_PORT: u16 = 28100;

fn read(args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_simpool"))
        .arg("read")
        .args(args)
        .env_remove("RUST_LOG")
        .output_tied()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn read_names_the_readers_when_none_matches_and_keeps_its_json_keys() {
    let pcscd = stack::pcscd(BASE_PORT);
    let (code, out, err) = read(&["--reader", "nomatch"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("no reader matches \"nomatch\""), "{err}");
    assert!(err.contains("\"Virtual PCD 00 00\""), "{err}");
    assert!(!err.contains("no PC/SC readers"), "{err}");

    // An empty reader: its row has every key, the error says why; some failed: exit 3.
    let (code, out, err) = read(&["--reader", "Virtual PCD 00 01", "--json"]);
    assert_eq!(code, Some(3), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = &v[0];
    let mut keys: Vec<&str> = row
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["atr", "error", "iccid", "imsi", "reader"], "{row}");
    assert!(row["error"].is_string() && row["iccid"].is_null(), "{row}");

    // A served card reads back with the same keys.
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let _serve = stack::Serve::start(
        &[
            "--pool",
            &sim.addr().to_string(),
            "--vpcd",
            &pcscd.vpcd_addr(0),
            "--card",
            "18",
        ],
        "cli-read",
    );
    let (code, out, err) = read(&["--reader", "Virtual PCD 00 00", "--json", "--wait", "15"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["iccid"], cards::iccid(18), "{v}");
    assert!(v[0]["error"].is_null(), "{v}");
}
