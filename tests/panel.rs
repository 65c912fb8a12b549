//! The live front-panel page in a real browser: headless Chromium (Debian's `chromium`, driven
//! through `chromium-driver`, installed on demand by `driver/ensure-watch-deps`) against a
//! `simpool serve --pool sim` daemon with a bearer token. The page loads without the token,
//! takes it from the user, shows 256 slots with card 18 held by reader 0 and live activity, and
//! a bind and an unbind done by clicks on the page show up in `GET /api/v1/readers`.
//! The layout is measured: on a 1280×900 desktop the whole page fits, footer included; the
//! legend's "working" and "exchanging" differ; on a 390×844 phone every slot is a tap target of
//! 32 px or more with its number, and the reader tags are readable. A daemon whose pool refuses
//! shows the cause on the page. A click on a slot shows the card's labels and last holders
//! (the daemon keeps a history). Screenshots go to target/screenshots/ (with
//! SIMPOOL_UPDATE_DOCS=1 the 1280×900 one also to docs/panel.png).

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
    let history = dir.join("history.sqlite").display().to_string();
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
            "--history",
            &history,
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
    let b = Browser::start(1280, 1100);
    // A 1280×900 desktop screen.
    b.set_viewport(1280, 900);
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
    // The simulated pool by its name, not the simulator's loopback port.
    b.wait_for(
        "the pool's name in the header",
        Duration::from_secs(5),
        "return document.getElementById('pool-info').textContent.startsWith('built-in simulated pool')",
    );
    assert!(b.find("#pool-cause").attr("hidden").is_some());

    // 1280×900: the whole page on the screen, footer included; the panel whole.
    let fit = b.script(
        "const r = (id) => document.querySelector(id).getBoundingClientRect(); \
         return {inner: window.innerHeight, width: window.innerWidth, \
                 scroll: document.documentElement.scrollHeight, \
                 footer: r('footer').bottom, panel: r('#panel').bottom, \
                 slot: r('#slot-1').width};",
        json!([]),
    );
    eprintln!("1280×900: {fit}");
    let inner = fit["inner"].as_f64().unwrap();
    assert_eq!(fit["width"], 1280, "{fit}");
    assert!(
        fit["footer"].as_f64().unwrap() <= inner && fit["scroll"].as_f64().unwrap() <= inner,
        "footer cut off at 1280×900: {fit}"
    );
    assert!(fit["panel"].as_f64().unwrap() <= inner, "{fit}");
    assert!(fit["slot"].as_f64().unwrap() >= 32.0, "{fit}");
    // Every reader can be brought into view (the reader list scrolls in its own box).
    let seen = b.script(
        "const e = document.getElementById('reader-3'); e.scrollIntoView({block: 'nearest'}); \
         const r = e.getBoundingClientRect(); \
         return r.top >= 0 && r.bottom <= window.innerHeight && \
                document.documentElement.scrollHeight <= window.innerHeight;",
        json!([]),
    );
    assert_eq!(seen, json!(true), "reader 3 out of reach at 1280×900");

    // "working" and "exchanging" look different in the legend, and a slot that exchanges
    // shows the legend's exchanging colour.
    let colours = b.script(
        "const c = (e) => getComputedStyle(e).backgroundColor; \
         return [c(document.querySelector('.legend .sw.st-working')), \
                 c(document.querySelector('.legend .sw.busy')), \
                 getComputedStyle(document.getElementById('slot-18')).boxShadow];",
        json!([]),
    );
    let rgb = |v: &Value| -> [i64; 3] {
        let s = v.as_str().unwrap();
        let n: Vec<i64> = s
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .split(|c: char| !c.is_ascii_digit())
            .filter(|x| !x.is_empty())
            .take(3)
            .map(|x| x.parse().unwrap())
            .collect();
        [n[0], n[1], n[2]]
    };
    let (working, busy) = (rgb(&colours[0]), rgb(&colours[1]));
    let distance: i64 = working.iter().zip(&busy).map(|(a, b)| (a - b).abs()).sum();
    assert!(
        distance >= 150,
        "legend: working {working:?} and exchanging {busy:?} look alike: {colours}"
    );
    let busy_css = format!("rgb({}, {}, {})", busy[0], busy[1], busy[2]);
    assert!(
        colours[2].as_str().unwrap().contains(&busy_css),
        "slot 18 exchanges without the legend's colour {busy_css}: {colours}"
    );

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
    // What the daemon read when it bound card 100 (issue 20 §2): a USIM, PIN1 disabled.
    b.wait_for(
        "card 100's type and PIN1 in the detail",
        Duration::from_secs(10),
        "return document.getElementById('d-type').textContent === 'usim' && \
         document.getElementById('d-pin1').textContent === 'disabled · PUK1 10 tries' && \
         document.getElementById('d-spn').textContent === 'simpool 100'",
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
    b.script(
        "window.scrollTo(0, 0); document.querySelector('.reader-list').scrollTop = 0",
        json!([]),
    );
    b.wait_for(
        "the page at the top",
        Duration::from_secs(5),
        "return window.scrollY === 0 && document.querySelector('.reader-list').scrollTop === 0",
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

    // A card's last holders and labels when its slot is clicked: card 5's lease by reader 3,
    // ended by that unbind; card 18's, still held by reader 0.
    let (status, v) = api(
        &control,
        "PUT",
        "/api/v1/cards/5/labels",
        Some(r#"{"set":{"site":"lab"}}"#),
    );
    assert_eq!(status, 200, "{v}");
    b.find("#slot-5").click();
    let li = b.wait_for(
        "card 5's last holders",
        Duration::from_secs(10),
        "const li = document.querySelector('#d-history-box[data-card=\"5\"] li[data-why=\"released\"]'); \
         return !!li && !document.getElementById('d-history-box').hidden && li.textContent",
    );
    assert!(li.as_str().unwrap().contains("reader 3"), "{li}");
    b.wait_for(
        "card 5's labels",
        Duration::from_secs(5),
        "return document.getElementById('d-labels').textContent === 'site=lab'",
    );
    b.find("#slot-18").click();
    let li = b.wait_for(
        "card 18's open lease",
        Duration::from_secs(10),
        "const li = document.querySelector('#d-history-box[data-card=\"18\"] li[data-why=\"\"]'); \
         return !!li && !document.getElementById('d-history-box').hidden && li.textContent",
    );
    let li = li.as_str().unwrap();
    assert!(li.contains("reader 0") && li.contains("held"), "{li}");

    // A phone, 390×844: no sideways scrolling; slots one can tap (≥ 32 px), each with its
    // number; holder tags one can read.
    b.set_viewport(390, 844);
    b.wait_for(
        "the narrow layout",
        Duration::from_secs(5),
        "return window.innerWidth === 390",
    );
    let phone = b.script(
        "const slots = [...document.querySelectorAll('#panel .slot')]; \
         const p = document.getElementById('panel').getBoundingClientRect(); \
         const sizes = slots.map((e) => e.getBoundingClientRect()); \
         const numbered = slots.filter((e) => { \
           const n = e.querySelector('.n'); const r = n.getBoundingClientRect(); \
           const s = e.getBoundingClientRect(); \
           return getComputedStyle(n).display !== 'none' && n.textContent === e.dataset.card && \
                  r.width > 0 && r.left >= s.left && r.right <= s.right + 0.5 && \
                  r.top >= s.top && r.bottom <= s.bottom + 0.5; }).length; \
         const tag = document.querySelector('#slot-18 .h'); \
         return {scroll: document.documentElement.scrollWidth, inner: window.innerWidth, \
                 right: p.right, \
                 minW: Math.min(...sizes.map((r) => r.width)), \
                 minH: Math.min(...sizes.map((r) => r.height)), \
                 columns: new Set(sizes.map((r) => Math.round(r.left))).size, numbered, \
                 tagFont: parseFloat(getComputedStyle(tag).fontSize), tag: tag.textContent, \
                 tagClipped: tag.scrollWidth > tag.clientWidth};",
        json!([]),
    );
    eprintln!("390×844: {phone}");
    let f = |k: &str| phone[k].as_f64().unwrap();
    assert!(
        f("scroll") <= f("inner") && f("right") <= f("inner"),
        "page overflows a phone: {phone}"
    );
    assert!(
        f("minW") >= 32.0 && f("minH") >= 32.0,
        "slots too small to tap: {phone}"
    );
    assert_eq!(
        phone["numbered"], 256,
        "slots without their number: {phone}"
    );
    assert_eq!(phone["tag"], "R0", "{phone}");
    assert!(
        f("tagFont") >= 11.0 && phone["tagClipped"] == json!(false),
        "reader tag unreadable: {phone}"
    );
    // A tap on a slot near the bottom selects it.
    b.find("#slot-250").click();
    b.wait_for(
        "the detail of card 250 after a tap",
        Duration::from_secs(5),
        "return document.getElementById('d-card').textContent === '250'",
    );
    b.script("window.scrollTo(0, 0)", json!([]));
    std::fs::write(shots.join("panel-phone.png"), b.screenshot()).unwrap();

    // A pool that refuses: the page says so and why, in the log's words, not just
    // "connecting".
    let refused = format!("127.0.0.1:{}", common::free_port());
    let control2 = format!("127.0.0.1:{}", common::free_port());
    let vpcd2 = format!("127.0.0.1:{}", common::free_port());
    let serve2 = Serve::start(
        &[
            "--pool",
            &refused,
            "--readers",
            "1",
            "--vpcd",
            &vpcd2,
            "--control",
            &control2,
        ],
        "panel-refused",
    );
    common::wait_for(
        "the second daemon's control API",
        Duration::from_secs(15),
        || http(&control2, "GET", "/healthz", &[], None).0 == 503,
    );
    b.set_viewport(1280, 900);
    b.goto(&format!("http://{control2}/"));
    let cause = b.wait_for(
        "the cause on the page",
        Duration::from_secs(10),
        "const e = document.getElementById('pool-cause'); return !e.hidden && e.textContent",
    );
    let cause = cause.as_str().unwrap();
    assert!(
        cause.contains(&refused) && cause.contains("nothing listens there"),
        "{cause}"
    );
    assert!(
        serve2.log_text().contains(cause),
        "the page's cause is not the log's: {cause}\n{}",
        serve2.log_text()
    );
    assert_eq!(b.find("#link").text(), "pool connecting");
    assert_eq!(b.find("#pool-info").text(), refused);
    std::fs::write(shots.join("panel-refused.png"), b.screenshot()).unwrap();
    drop(serve2);

    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        assert!(t.join().unwrap() > 10);
    }
    drop(b);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}
