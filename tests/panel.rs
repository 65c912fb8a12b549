//! The live front-panel page in a real browser: headless Chromium (Debian's `chromium`, driven
//! through `chromium-driver`, installed on demand by `driver/ensure-watch-deps`) against a
//! `simpool serve --pool sim` daemon with a bearer token. The page loads without the token,
//! takes it from the user, shows 256 slots with card 18 held by reader 0 and live activity, and
//! a bind and an unbind done by clicks on the page show up in `GET /api/v1/readers`.
//! Screenshots go to target/screenshots/ (with SIMPOOL_UPDATE_DOCS=1 also to docs/panel.png).

mod common;
mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::{header, http};
use common::stack::Serve;
use serde_json::{json, Value};
use watch::webdriver::Browser;
use watch::FakeVpcd;

const TOKEN: &str = "panel-test-token-5f2c";

fn api(control: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, _, text) = http(control, method, path, &[("Authorization", &auth)], body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn panel_in_headless_chromium() {
    watch::ensure_tools();
    let dir = std::env::temp_dir().join(format!("simpool-panel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();

    let vpcd = FakeVpcd::start(4);
    let control = format!("127.0.0.1:{}", common::free_port());
    let token_path = token_file.display().to_string();
    let serve = Serve::start(
        &[
            "--pool",
            "sim",
            "--card",
            "18",
            "--card",
            "256",
            "--readers",
            "4",
            "--vpcd",
            &vpcd.addr(),
            "--control",
            &control,
            "--control-token",
            &token_path,
        ],
        "panel",
    );
    common::wait_for("the control API", Duration::from_secs(15), || {
        api(&control, "GET", "/healthz", None).0 == 200
    });

    // The page and its files come without the token and hold no data; the API needs it.
    let (status, head, html) = http(&control, "GET", "/", &[], None);
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(header(&head, "content-security-policy").is_some());
    assert!(html.contains("/ui/panel.js") && !html.contains("ICCID 89"));
    for f in ["/ui/panel.js", "/ui/panel.css", "/ui/icon.svg"] {
        assert_eq!(http(&control, "GET", f, &[], None).0, 200, "{f}");
    }
    for p in ["/api/v1/readers", "/api/v1/cards", "/healthz", "/metrics"] {
        assert_eq!(
            http(&control, "GET", p, &[], None).0,
            401,
            "{p} without the token"
        );
    }
    assert_eq!(http(&control, "GET", "/ui/nothing", &[], None).0, 404);
    // With the token, metrics; without --gsmtap, no GSMTAP series.
    let auth = format!("Bearer {TOKEN}");
    let (status, _, metrics) = http(
        &control,
        "GET",
        "/metrics",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(status, 200);
    assert!(metrics.contains("simpool_pool_link_up 1") && !metrics.contains("simpool_gsmtap"));
    assert_eq!(http(&control, "POST", "/", &[], None).0, 405);

    // Both bound readers show their cards (the fake vpcd accepted them); scan for identities.
    let mut reader0 = vpcd.reader(0, Duration::from_secs(15));
    let mut reader1 = vpcd.reader(1, Duration::from_secs(15));
    reader0.power_on();
    reader1.power_on();
    assert_eq!(api(&control, "POST", "/api/v1/scan", None).0, 200);

    // Live traffic through both readers while the page watches.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = [(reader0, 25u64), (reader1, 60u64)]
        .into_iter()
        .map(|(mut r, every)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) && n < 3000 {
                    let sw = r.transmit(&common::hex("A0A4000002 3F00"));
                    assert_eq!(sw[0], 0x9F);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(every));
                }
                n
            })
        })
        .collect();

    let t0 = std::time::Instant::now();
    let b = Browser::start(1280, 1230);
    eprintln!("browser up in {:?}", t0.elapsed());
    b.goto(&format!("http://{control}/"));
    // No token yet: the page asks for it.
    b.wait_for(
        "the token box",
        Duration::from_secs(10),
        "return !document.getElementById('token-box').hidden",
    );
    b.find("#token-input").type_text(TOKEN);
    b.find("#token-box button[type=submit]").click();
    b.wait_for(
        "the first poll",
        Duration::from_secs(10),
        "return document.body.dataset.ready === '1'",
    );

    let slots = b.script(
        "return document.querySelectorAll('#panel .slot').length",
        json!([]),
    );
    assert_eq!(slots, json!(256));
    let s18 = b.find("#slot-18");
    assert_eq!(s18.attr("data-holder").as_deref(), Some("reader 0"));
    assert_eq!(s18.attr("data-state").as_deref(), Some("working"));
    assert!(s18.text().contains("R0"), "slot 18 shows {:?}", s18.text());
    assert_eq!(
        b.find("#slot-256").attr("data-holder").as_deref(),
        Some("reader 1")
    );
    assert_eq!(
        b.find("#slot-40").attr("data-state").as_deref(),
        Some("empty")
    );
    assert_eq!(
        b.find("#slot-7").attr("data-state").as_deref(),
        Some("inserted")
    );
    // Live activity: exchanges per second computed between polls.
    b.wait_for(
        "card 18 to show activity",
        Duration::from_secs(10),
        "return document.getElementById('slot-18').classList.contains('busy')",
    );
    assert_eq!(
        b.find("#reader-0").attr("data-state").as_deref(),
        Some("present")
    );
    assert!(b.find("#link").text().contains("up"));

    // Bind by clicks: slot 100, reader 2, Bind.
    b.find("#slot-100").click();
    b.wait_for(
        "the detail of card 100",
        Duration::from_secs(5),
        "return document.getElementById('d-card').textContent === '100'",
    );
    b.find("#d-reader option[value='2']").click();
    b.find("#d-bind").click();
    common::wait_for(
        "reader 2 bound to card 100 in the API",
        Duration::from_secs(15),
        || {
            let (_, r) = api(&control, "GET", "/api/v1/readers/2", None);
            r["binding"] == json!({"card": 100})
        },
    );
    b.wait_for(
        "slot 100 held by reader 2 on the page",
        Duration::from_secs(10),
        "return document.getElementById('slot-100').dataset.holder === 'reader 2'",
    );
    b.wait_for(
        "the Bind button back",
        Duration::from_secs(10),
        "return !document.getElementById('d-bind').disabled",
    );
    // Bind through a reader's own form: reader 3 to card 5.
    b.find("#reader-3 input").type_text("5");
    b.find("#reader-3 button[type=submit]").click();
    common::wait_for(
        "reader 3 bound to card 5 in the API",
        Duration::from_secs(15),
        || api(&control, "GET", "/api/v1/readers/3", None).1["binding"] == json!({"card": 5}),
    );
    // The picture: card 18 selected, traffic running.
    b.find("#slot-18").click();
    b.wait_for(
        "the last message to go",
        Duration::from_secs(8),
        "return document.getElementById('banner').hidden",
    );
    b.wait_for(
        "activity after the clicks",
        Duration::from_secs(5),
        "return document.getElementById('slot-18').classList.contains('busy')",
    );
    b.script("window.scrollTo(0, 0)", json!([]));
    b.wait_for(
        "the page at the top",
        Duration::from_secs(5),
        "return window.scrollY === 0",
    );
    let png = b.screenshot();
    assert_eq!(&png[1..4], b"PNG");
    let shots = watch::screenshot_dir();
    std::fs::write(shots.join("panel.png"), &png).unwrap();
    if std::env::var_os("SIMPOOL_UPDATE_DOCS").is_some() {
        std::fs::write(watch::repo().join("docs/panel.png"), &png).unwrap();
    }

    // A refused bind is shown, not swallowed: card 18 is reader 0's.
    b.find("#slot-18").click();
    b.find("#d-reader option[value='3']").click();
    b.find("#d-bind").click();
    let msg = b.wait_for(
        "the refusal",
        Duration::from_secs(10),
        "const e = document.getElementById('banner'); \
         return !e.hidden && !e.classList.contains('ok') && e.textContent",
    );
    assert!(msg.as_str().unwrap().contains("held by reader 0"), "{msg}");
    assert_eq!(
        api(&control, "GET", "/api/v1/readers/3", None).1["binding"],
        json!({"card": 5})
    );

    // Unbind by click.
    b.find("#reader-3 button.danger").click();
    common::wait_for(
        "reader 3 unbound in the API",
        Duration::from_secs(15),
        || api(&control, "GET", "/api/v1/readers/3", None).1["binding"].is_null(),
    );

    // A phone: no sideways scrolling, all 256 slots on screen.
    b.set_window(390, 844);
    b.wait_for(
        "the narrow layout",
        Duration::from_secs(5),
        "return window.innerWidth <= 420",
    );
    let fits = b.script(
        "const p = document.getElementById('panel').getBoundingClientRect(); \
         return [document.documentElement.scrollWidth, window.innerWidth, p.right];",
        json!([]),
    );
    let (scroll, inner, right) = (
        fits[0].as_f64().unwrap(),
        fits[1].as_f64().unwrap(),
        fits[2].as_f64().unwrap(),
    );
    assert!(
        scroll <= inner && right <= inner,
        "page overflows a phone: {fits}"
    );
    std::fs::write(shots.join("panel-phone.png"), b.screenshot()).unwrap();

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        assert!(t.join().unwrap() > 10);
    }
    drop(b);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
