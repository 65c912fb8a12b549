// simpool front panel: a plain client of the control API. Polls /healthz, /api/v1/cards and
// /api/v1/readers every second; binds readers with PUT/DELETE /api/v1/readers/{i}; shows the
// selected card's last holders from /api/v1/history?card=N (when the daemon keeps a history).
"use strict";
(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 10000;
  const TOKEN_KEY = "simpool.token";
  const $ = (id) => document.getElementById(id);

  let token = localStorage.getItem(TOKEN_KEY) || "";
  let selected = null;            // card number shown in the detail pane
  let cards = [];                 // last GET /api/v1/cards
  let readers = [];               // last GET /api/v1/readers
  let last = null;                // {t, cards: [{x, e}], readers: [{c, e}]} of the last poll
  const rate = new Map();         // card -> {perSec, newErrors}
  const readerRate = new Map();   // reader -> commands per second
  let poolKnown = false;          // /api/v1/pool read since the link came up
  let bannerTimer = null;
  const HISTORY_ROWS = 5;
  const HISTORY_EVERY_MS = 5000;
  let historyAt = 0;              // when the selected card's history was last asked for

  // ---- the API -----------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    let r;
    try {
      r = await fetch(path, {
        method, headers, cache: "no-store", signal: abort.signal,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, e.name === "AbortError" ? "the daemon did not answer in time"
                                                   : "the daemon cannot be reached");
    } finally {
      clearTimeout(timer);
    }
    let data = null;
    try { data = await r.json(); } catch (_) { /* not JSON */ }
    if (r.status === 401) {
      showTokenBox(true);
      throw new ApiError(401, "this daemon needs its bearer token (Token, top right)");
    }
    // /healthz answers 503 with its body while the pool link is down: that is data too.
    if (!r.ok && !(path === "/healthz" && r.status === 503)) {
      throw new ApiError(r.status, (data && data.error) || (r.status + " " + r.statusText));
    }
    return data;
  }

  // ---- small DOM helpers -------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  const setText = (e, t) => { if (e.textContent !== t) e.textContent = t; };
  const fmtRate = (r) => (r >= 10 ? r.toFixed(0) : r.toFixed(1));

  function banner(text, ok) {
    const b = $("banner");
    b.textContent = text;
    b.className = ok ? "banner ok" : "banner";
    b.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { b.hidden = true; }, ok ? 4000 : 8000);
  }

  /// Short holder tag for a slot, and its class.
  function holderKind(h) {
    if (!h) return null;
    // "reader 3", or "reader 3 (alice, reservation 17)": holders name their user.
    let m = /^reader (\d+)(?: \(|$)/.exec(h);
    if (m) return { cls: "h-reader", tag: "R" + m[1] };
    if (h.startsWith("reserved by")) return { cls: "h-api", tag: "Rs" };
    if (h.startsWith("API")) return { cls: "h-api", tag: "API" };
    if (h === "scan") return { cls: "h-scan", tag: "S" };
    if (h.startsWith("bank")) return { cls: "h-bank", tag: "B" };
    return { cls: "h-api", tag: "?" };
  }

  // ---- the 16 × 16 panel -------------------------------------------------------------------
  const slots = [];
  function buildPanel() {
    const panel = $("panel");
    for (let n = 1; n <= 256; n++) {
      const b = el("button", { class: "slot st-empty", type: "button", id: "slot-" + n,
                               "data-card": String(n), "aria-label": "card " + n },
                   el("span", { class: "n", text: String(n) }), el("span", { class: "h" }));
      b.addEventListener("click", () => select(n));
      panel.append(b);
      slots[n] = b;
    }
  }

  function renderCards() {
    let inserted = 0, working = 0, held = 0, perSec = 0;
    for (const c of cards) {
      const b = slots[c.card];
      if (!b) continue;
      // No state while the pool link is down; an object for a state byte the manual lacks.
      const st = c.state == null ? "none" : typeof c.state === "string" ? c.state : "unknown";
      if (st !== "empty" && st !== "none") inserted++;
      if (st === "working") working++;
      if (c.holder) held++;
      const r = rate.get(c.card) || { perSec: 0, newErrors: 0 };
      perSec += r.perSec;
      const hk = holderKind(c.holder);
      let cls = "slot st-" + st;
      if (r.perSec > 0) cls += " busy";
      if (r.newErrors > 0) cls += " err";
      if (selected === c.card) cls += " sel";
      if (b.className !== cls) b.className = cls;
      b.dataset.state = st;
      b.dataset.holder = c.holder || "";
      const h = b.querySelector(".h");
      setText(h, hk ? hk.tag : "");
      h.className = "h" + (hk ? " " + hk.cls : "");
      const tip = ["card " + c.card, st];
      if (c.holder) tip.push("held by " + c.holder);
      if (c.iccid) tip.push("ICCID " + c.iccid);
      if (c.imsi) tip.push("IMSI " + c.imsi);
      if (c.type) tip.push(c.type);
      if (c.eid) tip.push("EID " + c.eid);
      if (r.perSec > 0) tip.push(fmtRate(r.perSec) + " exchanges/s");
      if (c.errors) tip.push(c.errors + " errors");
      const lt = labelsText(c.labels);
      if (lt) tip.push(lt);
      b.title = tip.join(" · ");
    }
    const known = cards.some((c) => c.state != null);
    setText($("summary"), (known ? `${inserted} cards · ${working} working` : "slot states not known") +
                          ` · ${held} held · ${fmtRate(perSec)} exchanges/s`);
  }

  // ---- the detail pane of the selected card ------------------------------------------------
  function labelsText(labels) {
    return Object.entries(labels || {}).map(([k, v]) => k + "=" + v).join(", ");
  }

  /// `12-02 06:41:13` of an RFC 3339 time (UTC, as the history keeps it).
  const when = (t) => (t ? t.slice(5, 19).replace("T", " ") : "?");

  async function loadHistory(n) {
    historyAt = performance.now();
    const box = $("d-history-box");
    let h;
    try {
      h = await api("GET", `/api/v1/history?card=${n}&limit=${HISTORY_ROWS}`);
    } catch (e) {
      if (selected !== n) return;
      box.dataset.card = String(n);
      box.hidden = false;
      $("d-history").replaceChildren(el("li", { class: "muted",
        text: e.status === 409 ? "this daemon keeps no history" : "history: " + e.message }));
      return;
    }
    if (selected !== n) return;
    const items = h.leases.map((l) => {
      let who = l.front_end + (l.user ? ` (${l.user})` : "");
      const span = `${when(l.start)} – ${l.end ? when(l.end) : l.why ? "?" : "now"}`;
      const li = el("li", { "data-lease": String(l.id), "data-why": l.why || "" },
                    el("span", { text: `${span} · ${who} · ` }),
                    // A lease's counters are written when it ends (the card's own are above).
                    el("span", { class: "why", text: l.why ? `${l.why} · ${l.exchanges} exchanges` : "held" }));
      li.title = [l.iccid && "ICCID " + l.iccid, l.errors && l.errors + " errors",
                  l.authentications && l.authentications + " authentications",
                  l.pin_failures && l.pin_failures + " failed PINs",
                  l.note && "note: " + l.note].filter(Boolean).join(" · ");
      return li;
    });
    $("d-history").replaceChildren(...(items.length ? items
      : [el("li", { class: "muted", text: "no leases recorded" })]));
    box.dataset.card = String(n);
    box.hidden = false;
  }

  function select(n) {
    selected = n;
    $("d-history-box").hidden = true;
    loadHistory(n);
    renderCards();
    renderDetail();
    $("detail").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function renderDetail() {
    const c = cards.find((x) => x.card === selected);
    $("d-fields").hidden = !c;
    $("d-bind-form").hidden = !c || readers.length === 0;
    $("d-hint").hidden = !!c;
    if (!c) return;
    setText($("d-card"), String(c.card));
    setText($("d-state"), c.state == null ? "not known (pool link down)"
                          : typeof c.state === "string" ? c.state : "unknown " + JSON.stringify(c.state));
    setText($("d-holder"), c.holder || "nobody");
    setText($("d-iccid"), c.iccid || "–");
    const hidden = c.hidden || [];
    setText($("d-imsi"), c.imsi || (hidden.includes("imsi") ? "hidden by PIN1" : "–"));
    setText($("d-type"), c.type || "–");
    setText($("d-eid"), c.eid || "–");
    setText($("d-spn"), c.spn || "–");
    setText($("d-msisdn"), c.msisdn || (hidden.includes("msisdn") ? "hidden by PIN1" : "–"));
    setText($("d-pin1"), describePin(c.pin1, c.puk1));
    setText($("d-atr"), c.atr || "–");
    const r = rate.get(c.card);
    setText($("d-exchanges"), c.exchanges + (r && r.perSec > 0 ? ` (${fmtRate(r.perSec)}/s)` : ""));
    setText($("d-errors"), String(c.errors));
    setText($("d-labels"), labelsText(c.labels) || "–");
    if (performance.now() - historyAt > HISTORY_EVERY_MS) loadHistory(c.card);
    const sel = $("d-reader");
    const want = readers.map((x) => `${x.reader}|reader ${x.reader} — ${describeBinding(x.binding)}`);
    const have = [...sel.options].map((o) => `${o.value}|${o.textContent}`);
    if (want.join("\n") !== have.join("\n")) {
      const keep = sel.value;
      sel.replaceChildren(...readers.map((x) =>
        el("option", { value: String(x.reader), text: `reader ${x.reader} — ${describeBinding(x.binding)}` })));
      if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
    }
  }

  function describePin(p, k) {
    if (!p || p.enabled == null) return "–";
    const tries = p.tries == null ? "" : `, ${p.tries} tries`;
    const puk = k && k.tries != null ? ` · PUK1 ${k.tries} tries` : "";
    if (!p.enabled) return "disabled" + tries + puk;
    return (p.verified ? "enabled, verified" : "enabled, not verified") + tries + puk;
  }

  function describeBinding(b) {
    if (!b) return "no binding";
    if (b.card !== undefined) return "card " + b.card;
    if (b.iccid !== undefined) return "ICCID " + b.iccid;
    if (b.imsi !== undefined) return "IMSI " + b.imsi;
    if (b.eid !== undefined) return "EID " + b.eid;
    return JSON.stringify(b);
  }

  // ---- readers -----------------------------------------------------------------------------
  const readerViews = new Map();
  function readerView(i) {
    let v = readerViews.get(i);
    if (v) return v;
    v = {
      root: el("article", { class: "reader", id: "reader-" + i }),
      title: el("b"), name: el("span", { class: "muted" }), state: el("span", { class: "state" }),
      binding: el("div", { class: "line" }), card: el("div", { class: "line mono" }),
      detail: el("div", { class: "line muted" }), counters: el("div", { class: "counters" }),
      kind: el("select", { "aria-label": "bind by" },
               el("option", { value: "card", text: "card" }),
               el("option", { value: "iccid", text: "ICCID" }),
               el("option", { value: "imsi", text: "IMSI" }),
               el("option", { value: "eid", text: "EID" })),
      value: el("input", { inputmode: "numeric", placeholder: "1-256", "aria-label": "card, ICCID or IMSI" }),
      bind: el("button", { type: "submit", text: "Bind" }),
      unbind: el("button", { type: "button", class: "danger", text: "Unbind" }),
    };
    v.kind.addEventListener("change", () => {
      v.value.placeholder = { card: "1-256", iccid: "89…", imsi: "IMSI", eid: "EID" }[v.kind.value];
    });
    const form = el("form", {}, v.kind, v.value, v.bind, v.unbind);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const s = v.value.value.trim();
      if (!s) { v.value.focus(); return; }
      const body = v.kind.value === "card" ? { card: Number(s) } : { [v.kind.value]: s };
      bind(i, body, v);
    });
    v.unbind.addEventListener("click", () => bind(i, null, v));
    v.root.append(el("div", { class: "title" }, el("div", {}, v.title, " ", v.name), v.state),
                  v.binding, v.card, v.detail, v.counters, form);
    readerViews.set(i, v);
    $("readers").append(v.root);
    return v;
  }

  function renderReaders() {
    for (const r of readers) {
      const v = readerView(r.reader);
      setText(v.title, "Reader " + r.reader);
      setText(v.name, r.name + " · " + r.vpcd);
      setText(v.state, r.state);
      v.state.className = "state " + r.state;
      v.root.dataset.state = r.state;
      v.root.dataset.card = r.card == null ? "" : String(r.card);
      setText(v.binding, r.binding ? "Bound to " + describeBinding(r.binding) : "No binding");
      const ids = [];
      if (r.card != null) ids.push("card " + r.card);
      if (r.iccid) ids.push("ICCID " + r.iccid);
      if (r.imsi) ids.push("IMSI " + r.imsi);
      setText(v.card, ids.join(" · "));
      v.card.hidden = ids.length === 0;
      setText(v.detail, r.detail || "");
      v.detail.hidden = !r.detail;
      const s = r.stats || {};
      const per = readerRate.get(r.reader) || 0;
      const items = [["commands", s.commands], ["/s", fmtRate(per)], ["errors", s.errors],
                     ["resets", s.resets], ["sessions", s.sessions], ["connects", s.vpcd_connects]];
      const text = items.map(([k, x]) => k + " " + x).join("|");
      if (v.counters.dataset.text !== text) {
        v.counters.dataset.text = text;
        v.counters.replaceChildren(...items.map(([k, x]) =>
          el("span", {}, el("b", { text: String(x ?? "–") }), " " + k)));
      }
      v.unbind.disabled = !r.binding;
    }
  }

  async function bind(i, body, view) {
    const buttons = view ? [view.bind, view.unbind] : [$("d-bind")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const r = body ? await api("PUT", "/api/v1/readers/" + i, body)
                     : await api("DELETE", "/api/v1/readers/" + i);
      banner(body ? `reader ${i}: bound to ${describeBinding(r.binding)} (${r.state})`
                  : `reader ${i}: unbound`, true);
      if (view) view.value.value = "";
    } catch (e) {
      banner(`reader ${i}: ${e.message}`);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
      poll(true);
    }
  }

  $("d-bind-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (selected == null) return;
    bind(Number($("d-reader").value), { card: selected }, null);
  });

  // ---- pool link and health ----------------------------------------------------------------
  function renderHealth(h) {
    const link = $("link");
    const up = h && h.link === "up";
    setText(link, "pool " + (h ? h.link : "?"));
    link.className = "pill " + (up ? "up" : "down");
    link.title = h ? `${h.pool}: link ${h.link}, ${h.leases} cards held, ${h.readers} readers`
                   : "";
    // Why the link is not up, in the log's words (refused, no answer to ID, …).
    const cause = $("pool-cause");
    setText(cause, h && !up && h.cause ? h.cause : "");
    cause.hidden = !(h && !up && h.cause);
    if (up && !poolKnown) {
      poolKnown = true;
      api("GET", "/api/v1/pool").then((p) => {
        const bits = [p.name];
        if (p.id) bits.push("ID " + p.id);
        if (p.version) bits.push("firmware " + p.version);
        setText($("pool-info"), bits.join(" · "));
      }).catch(() => { poolKnown = false; });
    } else if (!up) {
      poolKnown = false;
      if (h) setText($("pool-info"), h.pool);
    }
  }

  // ---- polling -----------------------------------------------------------------------------
  function updateRates(t) {
    if (last) {
      const dt = (t - last.t) / 1000;
      for (const c of cards) {
        const p = last.cards.get(c.card);
        const dx = p ? c.exchanges - p.x : 0;
        const de = p ? c.errors - p.e : 0;
        rate.set(c.card, { perSec: dt > 0 && dx > 0 ? dx / dt : 0, newErrors: Math.max(de, 0) });
      }
      for (const r of readers) {
        const p = last.readers.get(r.reader);
        const dc = p !== undefined && r.stats ? r.stats.commands - p : 0;
        readerRate.set(r.reader, dt > 0 && dc > 0 ? dc / dt : 0);
      }
    }
    last = {
      t,
      cards: new Map(cards.map((c) => [c.card, { x: c.exchanges, e: c.errors }])),
      readers: new Map(readers.map((r) => [r.reader, r.stats ? r.stats.commands : 0])),
    };
  }

  let timer = null, busy = false;
  async function poll(now) {
    clearTimeout(timer);
    if (busy) { if (now) timer = setTimeout(() => poll(true), 100); return; }
    busy = true;
    const started = performance.now();
    try {
      const [h, c, r] = await Promise.all([
        api("GET", "/healthz"), api("GET", "/api/v1/cards"), api("GET", "/api/v1/readers")]);
      cards = c; readers = r;
      updateRates(performance.now());
      renderHealth(h);
      renderCards();
      renderReaders();
      renderDetail();
      setText($("updated"), "updated " + new Date().toLocaleTimeString());
      document.body.dataset.ready = "1";
    } catch (e) {
      renderHealth(null);
      setText($("updated"), "not updated: " + e.message);
    } finally {
      busy = false;
      // One poll per second, whatever a poll takes (never two at once).
      timer = setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
    }
  }

  // ---- token -------------------------------------------------------------------------------
  function showTokenBox(show) {
    const box = $("token-box");
    // Focus only when it opens: polls keep answering 401 until the token is given.
    if (show && box.hidden) {
      box.hidden = false;
      $("token-input").focus();
    } else if (!show) {
      box.hidden = true;
    }
  }
  $("token-toggle").addEventListener("click", () => showTokenBox($("token-box").hidden));
  $("token-box").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token-input").value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
    $("token-input").value = "";
    showTokenBox(false);
    poll(true);
  });
  $("token-forget").addEventListener("click", () => {
    token = "";
    localStorage.removeItem(TOKEN_KEY);
    $("token-input").value = "";
    banner("token forgotten", true);
  });

  buildPanel();
  poll(true);
})();
