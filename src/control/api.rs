//! The control API's endpoints (v1). Tools rely on these paths and keys: keep them.
//!
//! - `GET /healthz` — 200 when the pool link is up, 503 otherwise
//! - `GET /api/v1/pool` — address, link state, ID and firmware version
//! - `GET /api/v1/readers`, `GET|PUT|DELETE /api/v1/readers/{i}`
//! - `GET /api/v1/cards`, `GET /api/v1/cards/{n}`, `POST /api/v1/cards/{n}/apdu`
//! - `POST /api/v1/scan`
//! - `POST /api/v1/cards/{n}/stop`, `POST /api/v1/stop-all` with optional `{"force":true}`
//! - `GET /metrics` — Prometheus metrics (see [`crate::metrics`])
//! - `GET /`, `GET /ui/…` — the front-panel page (static, served without the token: it holds no
//!   data, and reads everything through the endpoints above)
//!
//! Errors are `{"error": "…"}` with the fitting status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bridge::{BindError, Binding, ReaderHandle};
use crate::cards::{Front, Holder, LeaseError};
use crate::daemon::Daemon;
use crate::pool::{LinkState, Slot, SlotState};

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// A client must send its body within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a bind waits for the card to show before answering "waiting".
pub const BIND_SETTLE: Duration = Duration::from_secs(5);
/// Most TPDUs in one `apdu` request.
pub const MAX_TPDUS: usize = 256;

/// The peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// An error answer: status and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl std::fmt::Display) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": msg.to_string() }),
        }
    }

    fn with(mut self, key: &str, v: Value) -> ApiError {
        self.body[key] = v;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

pub fn router(daemon: Arc<Daemon>, token: Option<Arc<str>>) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/pool", get(pool))
        .route("/api/v1/readers", get(readers))
        .route("/api/v1/readers/{i}", get(reader).put(bind).delete(unbind))
        .route("/api/v1/cards", get(cards))
        .route("/api/v1/cards/{n}", get(card))
        .route("/api/v1/cards/{n}/apdu", post(apdu))
        .route("/api/v1/scan", post(scan))
        .route("/api/v1/cards/{n}/stop", post(stop_card))
        .route("/api/v1/stop-all", post(stop_all))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let token = token.clone();
                async move {
                    if let Some(t) = token {
                        if !authorized(&req, &t) {
                            return ApiError::new(
                                StatusCode::UNAUTHORIZED,
                                "missing or wrong bearer token",
                            )
                            .into_response();
                        }
                    }
                    next.run(req).await
                }
            },
        ))
        .with_state(daemon);
    // The page's routes sit outside the token check: it is static and must load before the
    // user has given the token.
    super::panel::router()
        .method_not_allowed_fallback(method_not_allowed)
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}

async fn metrics(State(d): State<Arc<Daemon>>, req: Request) -> Response {
    let format = crate::metrics::Format::from_accept(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let text = crate::metrics::render(d, format);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

/// Compares the bearer token in constant time (no early exit on the first wrong byte).
fn authorized(req: &Request, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a JSON body: bounded in size and time.
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ))
        }
        Ok(Err(e)) => {
            let too_big = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return Err(if too_big {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over {MAX_BODY} bytes"),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))
            });
        }
        Ok(Ok(b)) => b,
    };
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("bad body: {e}"))
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    })
}

fn link_state(s: LinkState) -> &'static str {
    match s {
        LinkState::Connecting => "connecting",
        LinkState::Up { .. } => "up",
        LinkState::Down { .. } => "down",
        LinkState::Closed => "closed",
    }
}

async fn healthz(State(d): State<Arc<Daemon>>) -> Response {
    let st = d.link.state();
    let body = json!({
        "pool": d.link.addr(),
        "link": link_state(st),
        "readers": d.readers.len(),
        "leases": d.cards.leases_held(),
    });
    if d.link_up() {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        let mut body = body;
        body["error"] = json!(format!("pool link {}", link_state(st)));
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn pool(State(d): State<Arc<Daemon>>) -> ApiResult {
    let st = d.link.state();
    let (id, version) = if d.link_up() {
        (
            d.link.id().await.ok().map(hex::encode_upper),
            d.link.version().await.ok(),
        )
    } else {
        (None, None)
    };
    Ok(Json(json!({
        "address": d.link.addr(),
        "link": link_state(st),
        "id": id,
        "version": version,
    }))
    .into_response())
}

/// A reader as the API shows it.
pub fn reader_json(d: &Daemon, r: &ReaderHandle) -> Value {
    let st = r.status();
    let known = st.card.map(|n| d.cards.known(n)).unwrap_or_default();
    json!({
        "reader": r.index,
        "name": crate::vpcd::reader_name(r.index),
        "vpcd": r.vpcd,
        "binding": st.binding,
        "card": st.card,
        "state": st.state,
        "detail": st.detail,
        "atr": known.atr,
        "iccid": known.iccid,
        "imsi": known.imsi,
        "stats": r.stats().snapshot(),
    })
}

fn find_reader<'a>(d: &'a Daemon, i: &str) -> Result<&'a ReaderHandle, ApiError> {
    i.parse::<usize>()
        .ok()
        .and_then(|i| d.reader(i))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no reader {i:?}: this daemon has readers 0-{}",
                    d.readers.len().saturating_sub(1)
                ),
            )
        })
}

async fn readers(State(d): State<Arc<Daemon>>) -> Json<Value> {
    Json(Value::Array(
        d.readers.iter().map(|r| reader_json(&d, r)).collect(),
    ))
}

async fn reader(State(d): State<Arc<Daemon>>, Path(i): Path<String>) -> ApiResult {
    let r = find_reader(&d, &i)?;
    Ok(Json(reader_json(&d, r)).into_response())
}

/// `{"card":N}` | `{"iccid":"…"}` | `{"imsi":"…"}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    card: Option<Value>,
    iccid: Option<Value>,
    imsi: Option<Value>,
}

fn digits(
    v: &Value,
    what: &str,
    lens: std::ops::RangeInclusive<usize>,
) -> Result<String, ApiError> {
    let s = v.as_str().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} must be a string of digits"),
        )
    })?;
    if !s.bytes().all(|b| b.is_ascii_digit()) || !lens.contains(&s.len()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what} {s:?} is not {}-{} digits", lens.start(), lens.end()),
        ));
    }
    Ok(s.to_string())
}

/// Checks a binding request's body.
pub fn parse_binding(v: Value) -> Result<Binding, ApiError> {
    let b: BindBody = serde_json::from_value(v).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("want {{\"card\":N}}, {{\"iccid\":\"…\"}} or {{\"imsi\":\"…\"}}: {e}"),
        )
    })?;
    match (b.card, b.iccid, b.imsi) {
        (Some(c), None, None) => match c.as_u64() {
            Some(n @ 1..=256) => Ok(Binding::Card(n as u16)),
            _ => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("card {c} does not exist: cards are 1-256"),
            )),
        },
        (None, Some(i), None) => Ok(Binding::Iccid(digits(&i, "iccid", 10..=20)?)),
        (None, None, Some(i)) => Ok(Binding::Imsi(digits(&i, "imsi", 6..=15)?)),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "want exactly one of card, iccid, imsi",
        )),
    }
}

fn bind_error(e: BindError) -> ApiError {
    match e {
        BindError::Held(LeaseError::Held { card, holder }) => ApiError::new(
            StatusCode::CONFLICT,
            format!("card {card} is held by {holder}"),
        )
        .with("card", json!(card))
        .with("holder", json!(holder.to_string())),
        BindError::Held(e @ LeaseError::NoSuchCard(_)) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)
        }
        BindError::IdentityHeld(b, holder) => {
            ApiError::new(StatusCode::CONFLICT, format!("{b} is held by {holder}"))
                .with("holder", json!(holder.to_string()))
        }
        e @ BindError::Stopped(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn bind(State(d): State<Arc<Daemon>>, Path(i): Path<String>, req: Request) -> ApiResult {
    let r = find_reader(&d, &i)?;
    let v: Value = json_body(req.into_body()).await?;
    let binding = parse_binding(v)?;
    d.bind(usize::from(r.index), Some(binding))
        .await
        .map_err(bind_error)?;
    r.wait_settled(BIND_SETTLE).await;
    Ok(Json(reader_json(&d, r)).into_response())
}

async fn unbind(State(d): State<Arc<Daemon>>, Path(i): Path<String>) -> ApiResult {
    let r = find_reader(&d, &i)?;
    d.bind(usize::from(r.index), None)
        .await
        .map_err(bind_error)?;
    r.wait_settled(BIND_SETTLE).await;
    Ok(Json(reader_json(&d, r)).into_response())
}

fn card_json(v: &crate::cards::CardView, state: Option<crate::pool::SlotState>) -> Value {
    json!({
        "card": v.card,
        "state": state,
        "holder": v.holder.as_ref().map(ToString::to_string),
        "atr": v.known.atr,
        "iccid": v.known.iccid,
        "imsi": v.known.imsi,
        "exchanges": v.exchanges,
        "errors": v.errors,
        "bad": v.bad,
    })
}

async fn cards(State(d): State<Arc<Daemon>>) -> Json<Value> {
    let states = d.link.states().await.ok();
    Json(Value::Array(
        d.cards
            .views()
            .iter()
            .map(|v| card_json(v, states.as_ref().map(|s| s[usize::from(v.card - 1)])))
            .collect(),
    ))
}

fn card_number(n: &str) -> Result<u16, ApiError> {
    match n.parse::<u16>() {
        Ok(n @ 1..=256) => Ok(n),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("card {n:?} does not exist: cards are 1-256"),
        )),
    }
}

async fn card(State(d): State<Arc<Daemon>>, Path(n): Path<String>) -> ApiResult {
    let n = card_number(&n)?;
    let states = d.link.states().await.ok();
    let v = &d.cards.views()[usize::from(n - 1)];
    Ok(Json(card_json(v, states.map(|s| s[usize::from(n - 1)]))).into_response())
}

#[derive(Deserialize)]
struct ApduBody {
    tpdus: Vec<String>,
    /// Leave the card running after the request (default: stopped).
    #[serde(default)]
    keep: bool,
}

fn parse_tpdu(s: &str) -> Result<Vec<u8>, ApiError> {
    let clean: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    match hex::decode(&clean) {
        Ok(b) if !b.is_empty() => Ok(b),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("bad TPDU {s:?}: want hex bytes"),
        )),
    }
}

/// Starts the card under a lease held by this request, runs the TPDUs, stops it. The lease
/// dies with the request: a client that disconnects mid-way frees the card.
async fn apdu(
    State(d): State<Arc<Daemon>>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(n): Path<String>,
    req: Request,
) -> ApiResult {
    let n = card_number(&n)?;
    let body: ApduBody = json_body(req.into_body()).await?;
    if body.tpdus.is_empty() || body.tpdus.len() > MAX_TPDUS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("want 1-{MAX_TPDUS} TPDUs"),
        ));
    }
    let cmds = body
        .tpdus
        .iter()
        .map(|t| parse_tpdu(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut lease = d
        .cards
        .lease(n, Holder::Api(peer.to_string()))
        .map_err(|e| match e {
            LeaseError::Held { card, holder } => ApiError::new(
                StatusCode::CONFLICT,
                format!("card {card} is held by {holder}"),
            )
            .with("holder", json!(holder.to_string())),
            e => ApiError::new(StatusCode::NOT_FOUND, e),
        })?;
    if !d.link_up() {
        lease.release().await;
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no connection to the pool",
        ));
    }
    let atr = match lease.start().await {
        Ok(a) => a,
        Err(e) => {
            lease.release().await;
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("card {n} did not start (empty or mute?): {e}"),
            ));
        }
    };
    let mut responses = Vec::with_capacity(cmds.len());
    let mut errors = Vec::with_capacity(cmds.len());
    for cmd in &cmds {
        match lease.transmit(cmd, d.command_timeout, Front::Api).await {
            Ok(r) => {
                responses.push(hex::encode_upper(r));
                errors.push(Value::Null);
            }
            Err(e) => {
                log::warn!(
                    "API {peer}: card {n}: {} failed: {e}",
                    hex::encode_upper(cmd)
                );
                responses.push(hex::encode_upper(e.status()));
                errors.push(json!(e.to_string()));
                if e.card_touched() {
                    // The card's T=0 state is unknown: the rest would be meaningless.
                    break;
                }
            }
        }
    }
    if body.keep {
        lease.keep_running();
    }
    lease.release().await;
    Ok(Json(json!({
        "card": n,
        "atr": hex::encode_upper(&atr),
        "responses": responses,
        "errors": errors,
    }))
    .into_response())
}

async fn scan(State(d): State<Arc<Daemon>>) -> ApiResult {
    let rows = d
        .cards
        .scan(d.command_timeout)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(Json(json!(rows)).into_response())
}

/// `{"force": bool}`; an empty body means no force.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopBody {
    #[serde(default)]
    force: bool,
}

async fn stop_body(body: Body) -> Result<StopBody, ApiError> {
    let v: Value = match json_body::<Value>(body).await {
        Ok(v) => v,
        // No body at all: the defaults.
        Err(e) if e.status == StatusCode::BAD_REQUEST => Value::Null,
        Err(e) => return Err(e),
    };
    if v.is_null() {
        return Ok(StopBody::default());
    }
    serde_json::from_value(v).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("want {{\"force\":true|false}}: {e}"),
        )
    })
}

/// Stops card `n` under a lease of this request; a card someone holds is left alone unless
/// `force` (then it is stopped under its holder, whose session breaks). One row:
/// `{"card","state","stopped","holder","error"}`.
async fn stop_one(d: &Daemon, n: u16, state: Option<SlotState>, force: bool, peer: &str) -> Value {
    let row = |stopped: bool, holder: Option<String>, error: Option<String>| {
        json!({
            "card": n,
            "state": state,
            "stopped": stopped,
            "holder": holder,
            "error": error,
        })
    };
    match d.cards.lease(n, Holder::Api(peer.to_string())) {
        Ok(mut lease) => {
            let r = lease.stop().await;
            lease.release().await;
            row(r.is_ok(), None, r.err().map(|e| e.to_string()))
        }
        Err(LeaseError::Held { holder, .. }) if force => {
            log::warn!("API {peer}: card {n} stopped under its holder {holder} (forced)");
            let card = d.link.card(Slot::from_card(n).expect("checked 1..=256"));
            let r = card.stop().await;
            row(
                r.is_ok(),
                Some(holder.to_string()),
                r.err().map(|e| e.to_string()),
            )
        }
        Err(LeaseError::Held { holder, .. }) => row(
            false,
            Some(holder.to_string()),
            Some(format!("card {n} is held by {holder}")),
        ),
        Err(e) => row(false, None, Some(e.to_string())),
    }
}

async fn stop_card(
    State(d): State<Arc<Daemon>>,
    Extension(Peer(peer)): Extension<Peer>,
    Path(n): Path<String>,
    req: Request,
) -> ApiResult {
    let n = card_number(&n)?;
    let body = stop_body(req.into_body()).await?;
    if !d.link_up() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no connection to the pool",
        ));
    }
    let state = d.link.states().await.ok().map(|s| s[usize::from(n - 1)]);
    let row = stop_one(&d, n, state, body.force, &peer.to_string()).await;
    if row["stopped"] == true {
        return Ok(Json(row).into_response());
    }
    let msg = cell_str(&row["error"]);
    Err(if row["holder"].is_string() {
        ApiError::new(StatusCode::CONFLICT, msg).with("holder", row["holder"].clone())
    } else {
        ApiError::new(StatusCode::BAD_GATEWAY, msg)
    })
}

/// Stops every card the pool reports working (held ones only with `force`); one row each.
async fn stop_all(
    State(d): State<Arc<Daemon>>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
) -> ApiResult {
    let body = stop_body(req.into_body()).await?;
    let states = d
        .link
        .states()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    let peer = peer.to_string();
    let mut rows = Vec::new();
    for (i, st) in states.iter().enumerate() {
        if *st == SlotState::Working {
            rows.push(stop_one(&d, i as u16 + 1, Some(*st), body.force, &peer).await);
        }
    }
    Ok(Json(Value::Array(rows)).into_response())
}

fn cell_str(v: &Value) -> String {
    v.as_str().unwrap_or("not stopped").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_bodies() {
        assert_eq!(
            parse_binding(json!({"card": 18})).unwrap(),
            Binding::Card(18)
        );
        assert_eq!(
            parse_binding(json!({"iccid": "89860043191482190636"})).unwrap(),
            Binding::Iccid("89860043191482190636".into())
        );
        for bad in [
            json!({"card": 0}),
            json!({"card": 257}),
            json!({"card": "18"}),
            json!({"card": -1}),
            json!({"imsi": "46001x"}),
            json!({"iccid": 8986}),
            json!({"card": 1, "imsi": "460019894013615"}),
            json!({}),
            json!({"slot": 3}),
            json!([1]),
        ] {
            let e = parse_binding(bad.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        }
    }
}
