//! simpool survives pcscd going away and coming back (a restart, or socket-activated pcscd
//! exiting when idle): it keeps retrying vpcd's port and shows the card again, unattended.

mod common;

use common::proc::Tied;
use common::vectors as cards;
use std::process::Command;
use std::time::Duration;

use common::stack::{self, Serve};
use pcsc::{Protocols, ShareMode};
use simpool::sim::profile::CardsFile;
use simpool::sim::Faults;

const BASE_PORT: u16 = 26900;

fn pcscd_private(args: &[&str], dir: &std::path::Path) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("driver/pcscd-private");
    let st = Command::new(script)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .status_tied()
        .unwrap();
    assert!(st.success(), "pcscd-private {args:?}");
}

fn read_iccid(name: &std::ffi::CString) -> Vec<u8> {
    let ctx = stack::context();
    assert!(
        stack::wait_card(&ctx, name, true, Duration::from_secs(20)),
        "card present"
    );
    let card = ctx
        .connect(name, ShareMode::Shared, Protocols::ANY)
        .unwrap();
    for cmd in ["A0A40000023F00", "A0A40000022FE2"] {
        stack::tx(&card, cmd);
    }
    stack::tx(&card, "A0B000000A")
}

#[test]
fn pcscd_restart_is_survived() {
    let sim = common::sim_pool(CardsFile::default_set(), Faults::default());
    let pcscd = stack::pcscd(BASE_PORT);
    let serve_args = [
        "--pool",
        &sim.addr().to_string(),
        "--vpcd",
        &pcscd.vpcd_addr(0),
        "--card",
        "18",
    ];
    let mut serve = Serve::start(&serve_args, "pcscd-restart");
    let name = pcscd.reader_name(0);
    assert_eq!(read_iccid(&name), cards::sw9000(&cards::ef_iccid(18)));

    pcscd_private(&["stop"], &pcscd.dir);
    let _again = stack::Pcscd::start(pcscd.dir.clone(), 16, BASE_PORT);
    // A new pcscd: new contexts; simpool finds vpcd's port again by itself.
    assert_eq!(read_iccid(&name), cards::sw9000(&cards::ef_iccid(18)));
    assert!(serve.is_running());
    assert!(
        serve.log_text().contains("vpcd closed the connection"),
        "{}",
        serve.log_text()
    );
}
