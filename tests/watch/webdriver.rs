//! Headless Chromium driven through Debian's chromedriver (W3C WebDriver: JSON over HTTP on
//! loopback). Just what the page test needs: open a page, find, click, type, run a script,
//! take a screenshot. `SIMPOOL_WEBDRIVER_DEBUG=1` logs every WebDriver command and its time.

use crate::common::proc::Tied;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::free_port;
use crate::common::http::http;

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A chromedriver process with one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a new, empty profile.
    pub fn start(width: u32, height: u32) -> Browser {
        let port = free_port();
        // In a PID namespace of its own: the browser it starts dies with it, and it with the
        // test, however that ends.
        let driver = crate::common::proc::tree(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn_tied()
            .expect("start chromedriver (Debian package chromium-driver)");
        let addr = format!("127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) = http(&addr, "GET", "/status", &[], None);
            if status == 200 && body.contains("\"ready\":true") {
                break;
            }
            assert!(Instant::now() < end, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile =
            std::env::temp_dir().join(format!("simpool-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    "--disable-dev-shm-usage", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ],
            },
        }}});
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
            profile,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    /// One WebDriver command; answers its `value`, panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let t0 = Instant::now();
        let (status, _, text) = http(&self.addr, method, path, &[], body.as_deref());
        if std::env::var_os("SIMPOOL_WEBDRIVER_DEBUG").is_some() {
            eprintln!("webdriver: {method} {path}: {status} in {:?}", t0.elapsed());
        }
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {status}: {e}: {text:?}"));
        if status != 200 {
            panic!("WebDriver {method} {path}: {status}: {}", v["value"]);
        }
        v["value"].clone()
    }

    fn s(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        self.call("POST", &self.s("/url"), Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and answers its result.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            &self.s("/execute/sync"),
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Waits (bounded) until `script` returns something truthy; answers it.
    pub fn wait_for(&self, what: &str, within: Duration, script: &str) -> Value {
        let end = Instant::now() + within;
        loop {
            let v = self.script(script, json!([]));
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() >= end {
                let shot = super::screenshot_dir().join("failure.png");
                let _ = std::fs::write(&shot, self.screenshot());
                panic!(
                    "timed out waiting for {what} (screenshot: {})",
                    shot.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn find(&self, css: &str) -> Element<'_> {
        let v = self.call(
            "POST",
            &self.s("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        Element {
            b: self,
            id: v[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element {css}: {v}"))
                .to_string(),
        }
    }

    pub fn set_window(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &self.s("/window/rect"),
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Sizes the window so that the page's viewport (`innerWidth` × `innerHeight`) is
    /// `width` × `height` CSS pixels: the window's frame takes some of the window's size.
    pub fn set_viewport(&self, width: u32, height: u32) {
        let (width, height) = (i64::from(width), i64::from(height));
        self.set_window(width as u32, height as u32);
        for _ in 0..5 {
            let v = self.script("return [window.innerWidth, window.innerHeight]", json!([]));
            let (w, h) = (v[0].as_i64().unwrap(), v[1].as_i64().unwrap());
            if (w, h) == (width, height) {
                return;
            }
            let r = self.call("GET", &self.s("/window/rect"), None);
            let (ww, wh) = (r["width"].as_i64().unwrap(), r["height"].as_i64().unwrap());
            self.set_window((ww + width - w) as u32, (wh + height - h) as u32);
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("cannot make the viewport {width}×{height}");
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", &self.s("/screenshot"), None);
        base64_decode(v.as_str().expect("base64 PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(&self.addr, "DELETE", &self.s(""), &[], None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub struct Element<'a> {
    b: &'a Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, rest: &str) -> String {
        self.b.s(&format!("/element/{}{rest}", self.id))
    }

    pub fn click(&self) {
        self.b.call("POST", &self.path("/click"), Some(json!({})));
    }

    pub fn type_text(&self, text: &str) {
        self.b
            .call("POST", &self.path("/value"), Some(json!({ "text": text })));
    }

    pub fn text(&self) -> String {
        self.b
            .call("GET", &self.path("/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn attr(&self, name: &str) -> Option<String> {
        self.b
            .call("GET", &self.path(&format!("/attribute/{name}")), None)
            .as_str()
            .map(str::to_string)
    }
}

/// Standard base64 (screenshots).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut acc = 0u32;
        for (i, c) in data.iter().enumerate() {
            acc |= val(*c) << (18 - 6 * i);
        }
        let n = data.len().saturating_sub(1);
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    out
}

#[test]
fn base64() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8h"), b"hello!");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("aA=="), b"h");
}
