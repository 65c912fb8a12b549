//! The control API's endpoints (v1). Tools rely on these paths and keys: keep them.
//!
//! - `GET /healthz` — 200 when the pool link is up, 503 otherwise
//! - `GET /api/v1/pool` — address, name, link state and why it is not up, ID and firmware version
//! - `GET /api/v1/readers`, `GET|PUT|DELETE /api/v1/readers/{i}`
//! - `GET /api/v1/cards`, `GET /api/v1/cards/{n}`, `POST /api/v1/cards/{n}/apdu`
//! - `POST /api/v1/cards/{n}/authenticate` — 3G (`{"rand","autn"}`) or 2G (`{"rand"}`)
//! - `POST /api/v1/scan`
//! - `POST /api/v1/cards/{n}/stop`, `POST /api/v1/stop-all` with optional `{"force":true}`
//! - `GET /api/v1/history`, `GET|PUT /api/v1/cards/{n}/labels` (see [`super::records`])
//! - `GET|POST /api/v1/reservations`, `GET|DELETE /api/v1/reservations/{id}`,
//!   `POST /api/v1/reservations/{id}/renew` (see [`super::reservations`])
//! - `GET /metrics` — Prometheus metrics (see [`crate::metrics`])
//! - `GET /`, `GET /ui/…` — the front-panel page (static, served without the token: it holds no
//!   data, and reads everything through the endpoints above)
//!
//! Requests and answers are the typed rows of [`crate::rows`]; the operations behind them are
//! the card layer's ([`crate::cards::ops`]), which the command line runs too. Errors are
//! `{"error": "…"}` ([`ErrorBody`]) with the fitting status; a body that is not JSON is 400
//! with the parser's reason, JSON of the wrong shape 422.

use std::sync::Arc;
use std::time::Duration;

#[cfg(test)]
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::auth::{Auth, Denied, Local};
use crate::bridge::{BindError, Binding, ReaderHandle};
use crate::cards::auth;
use crate::cards::ops::{self, ApduError};
use crate::cards::{Holder, LeaseError, StartError};
use crate::daemon::Daemon;
use crate::pool::SlotState;
use crate::rows::{
    ApduRequest, AuthRequest, CardRow, ErrorBody, Health, LinkWord, PoolInfo, ReaderRow,
    StopRequest,
};
use crate::users::{Action, Who};
use crate::values::CardNo;

/// Largest request body.
pub const MAX_BODY: usize = 64 * 1024;
/// A client must send its body within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a bind waits for the card to show before answering "waiting".
pub const BIND_SETTLE: Duration = Duration::from_secs(5);
/// Most TPDUs in one `apdu` request.
pub const MAX_TPDUS: usize = ops::MAX_COMMANDS;

/// The peer of the connection a request came on: `127.0.0.1:40710`, or `uid 1000 pid 42`
/// on the Unix socket.
#[derive(Debug, Clone)]
pub struct Peer(pub String);

/// The holder an API request takes a card as: named by its user, or by its peer when the
/// caller is anonymous (a daemon without tokens).
pub fn api_holder(who: &Who, peer: &str) -> Holder {
    if *who == Who::anonymous() {
        Holder::Api(peer.to_string())
    } else {
        Holder::Api(who.user.clone())
    }
}

/// An error answer: status and body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, msg: impl std::fmt::Display) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: msg.to_string(),
                card: None,
                holder: None,
            },
        }
    }

    /// 409 for a card that someone else holds or has reserved.
    pub(super) fn lease(e: &LeaseError) -> ApiError {
        let mut err = ApiError::new(StatusCode::CONFLICT, e);
        err.body.card = Some(e.card());
        err.body.holder = Some(e.holder_text());
        err
    }

    pub(super) fn with_holder(mut self, card: Option<CardNo>, holder: Option<String>) -> ApiError {
        self.body.card = card;
        self.body.holder = holder;
        self
    }

    fn held(card: Option<CardNo>, holder: &Holder, msg: impl std::fmt::Display) -> ApiError {
        let mut e = ApiError::new(StatusCode::CONFLICT, msg);
        e.body.card = card;
        e.body.holder = Some(holder.to_string());
        e
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

pub(super) type ApiResult<T> = Result<Json<T>, ApiError>;

/// The router with a single token (or none).
pub fn router(daemon: Arc<Daemon>, token: Option<Arc<str>>) -> Router {
    let auth = Auth::new(token.as_deref(), None, None).unwrap_or_else(|_| Auth::open());
    router_with(daemon, Arc::new(auth))
}

/// The router: every request is admitted by `auth` (its user and role) before its handler
/// runs, which finds the caller as an `Extension<Who>`.
pub fn router_with(daemon: Arc<Daemon>, auth: Arc<Auth>) -> Router {
    let api = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/pool", get(pool))
        .route("/api/v1/readers", get(readers))
        .route("/api/v1/readers/{i}", get(reader).put(bind).delete(unbind))
        .route("/api/v1/cards", get(cards))
        .route("/api/v1/cards/{n}", get(card))
        .route("/api/v1/cards/{n}/apdu", post(apdu))
        .route("/api/v1/cards/{n}/authenticate", post(authenticate))
        .route("/api/v1/scan", post(scan))
        .route("/api/v1/cards/{n}/stop", post(stop_card))
        .route("/api/v1/stop-all", post(stop_all))
        .route("/api/v1/history", get(super::records::history))
        .route(
            "/api/v1/cards/{n}/labels",
            get(super::records::get_labels).put(super::records::put_labels),
        )
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/reservations",
            get(super::reservations::list).post(super::reservations::reserve),
        )
        .route(
            "/api/v1/reservations/{id}",
            get(super::reservations::one).delete(super::reservations::release),
        )
        .route(
            "/api/v1/reservations/{id}/renew",
            post(super::reservations::renew),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(
            move |mut req: Request, next: axum::middleware::Next| {
                let auth = auth.clone();
                async move {
                    let local = req.extensions().get::<Local>().copied();
                    let admitted = auth.admit(
                        req.method(),
                        req.uri().path(),
                        req.headers(),
                        local.as_ref(),
                    );
                    match admitted {
                        Ok(who) => {
                            req.extensions_mut().insert(who);
                            next.run(req).await
                        }
                        Err(e @ Denied::Token) => {
                            ApiError::new(StatusCode::UNAUTHORIZED, e).into_response()
                        }
                        Err(e @ Denied::Role(_)) => {
                            let peer = req
                                .extensions()
                                .get::<Peer>()
                                .map_or(String::new(), |p| p.0.clone());
                            log::warn!("control API {peer}: refused: {e}");
                            ApiError::new(StatusCode::FORBIDDEN, e).into_response()
                        }
                    }
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

fn too_big() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body over {MAX_BODY} bytes"),
    )
}

/// Reads a request's body: bounded in size (a declared length over the bound is refused
/// before reading; a body that grows past it is recognised by its error type) and in time.
pub(crate) async fn read_body(req: Request) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_big());
    }
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(too_big()),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
        Ok(Ok(b)) => Ok(b.to_bytes()),
    }
}

/// Parses a JSON body: not JSON at all (cut short, a typo) is 400 with the parser's reason;
/// JSON of the wrong shape or with values out of range is 422.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8], want: &str) -> Result<T, ApiError> {
    // In two steps, so that JSON of the wrong shape is never taken for a syntax error.
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
    serde_json::from_value(v).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("want {want}: {e}"),
        )
    })
}

/// A JSON body that may be left out (empty or only white space: the defaults).
pub(super) async fn optional_json<T: DeserializeOwned + Default>(
    req: Request,
    want: &str,
) -> Result<T, ApiError> {
    let bytes = read_body(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes, want)
}

async fn healthz(State(d): State<Arc<Daemon>>) -> Response {
    let link = LinkWord::from(d.link.state());
    let up = d.link_up();
    let cause = if up { None } else { d.link.problem() };
    let body = Health {
        pool: d.pool_name(),
        link,
        cause: cause.clone(),
        readers: d.readers.len(),
        leases: d.cards.leases_held(),
        error: (!up).then(|| match &cause {
            Some(c) => format!("pool link {link}: {c}"),
            None => format!("pool link {link}"),
        }),
    };
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn pool(State(d): State<Arc<Daemon>>) -> Json<PoolInfo> {
    let link = LinkWord::from(d.link.state());
    let (id, version) = if d.link_up() {
        (
            d.link.id().await.ok().map(hex::encode_upper),
            d.link.version().await.ok(),
        )
    } else {
        (None, None)
    };
    Json(PoolInfo {
        address: d.pool_address.to_string(),
        name: d.pool_name(),
        link,
        cause: if d.link_up() { None } else { d.link.problem() },
        id,
        version,
    })
}

/// A reader as the API shows it.
pub fn reader_row(d: &Daemon, r: &ReaderHandle) -> ReaderRow {
    let st = r.status();
    let known = st.card.map(|n| d.cards.known(n)).unwrap_or_default();
    ReaderRow {
        reader: r.index,
        name: crate::vpcd::reader_name(r.index),
        vpcd: r.vpcd.clone(),
        binding: st.binding,
        card: st.card,
        state: st.state,
        detail: st.detail,
        atr: known.atr,
        iccid: known.iccid,
        imsi: known.imsi,
        stats: r.stats().snapshot(),
        reservation: st
            .card
            .and_then(|n| d.cards.reservation_of(n))
            .filter(|res| st.user.as_deref() == Some(res.user.as_str()))
            .map(|res| res.id),
        user: st.user,
    }
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

async fn readers(State(d): State<Arc<Daemon>>) -> Json<Vec<ReaderRow>> {
    Json(d.readers.iter().map(|r| reader_row(&d, r)).collect())
}

async fn reader(State(d): State<Arc<Daemon>>, Path(i): Path<String>) -> ApiResult<ReaderRow> {
    let r = find_reader(&d, &i)?;
    Ok(Json(reader_row(&d, r)))
}

const BINDING_SHAPE: &str = "{\"card\":N}, {\"iccid\":\"…\"}, {\"imsi\":\"…\"} or {\"eid\":\"…\"}";

/// Checks a binding request's body.
pub fn parse_binding(bytes: &[u8]) -> Result<Binding, ApiError> {
    let b: Binding = parse_json(bytes, BINDING_SHAPE)?;
    b.checked()
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))
}

pub(super) fn bind_error(e: BindError) -> ApiError {
    match e {
        BindError::Held(e) => ApiError::lease(&e),
        BindError::IdentityHeld(b, holder) => {
            ApiError::held(None, &holder, format!("{b} is held by {holder}"))
        }
        e @ BindError::Stopped(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn bind(
    State(d): State<Arc<Daemon>>,
    Extension(who): Extension<Who>,
    Path(i): Path<String>,
    req: Request,
) -> ApiResult<ReaderRow> {
    let r = find_reader(&d, &i)?;
    let binding = parse_binding(&read_body(req).await?)?;
    let st = r.status();
    mine_or_admin(&who, st.user.as_deref(), &format!("rebind reader {i}"))?;
    d.bind_as(usize::from(r.index), Some(binding), Some(who))
        .await
        .map_err(bind_error)?;
    r.wait_settled(BIND_SETTLE).await;
    Ok(Json(reader_row(&d, r)))
}

async fn unbind(
    State(d): State<Arc<Daemon>>,
    Extension(who): Extension<Who>,
    Path(i): Path<String>,
) -> ApiResult<ReaderRow> {
    let r = find_reader(&d, &i)?;
    mine_or_admin(
        &who,
        r.status().user.as_deref(),
        &format!("unbind reader {i}"),
    )?;
    d.bind_as(usize::from(r.index), None, None)
        .await
        .map_err(bind_error)?;
    r.wait_settled(BIND_SETTLE).await;
    Ok(Json(reader_row(&d, r)))
}

/// A reader bound for another user is that user's to change (or an admin's).
fn mine_or_admin(who: &Who, owner: Option<&str>, what: &str) -> Result<(), ApiError> {
    match owner {
        Some(u) if u != who.user && !who.is_admin() => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("cannot {what}: it is bound for {u}"),
        )
        .with_holder(None, Some(u.to_string()))),
        _ => Ok(()),
    }
}

fn card_row(d: &Daemon, n: CardNo, state: Option<SlotState>) -> CardRow {
    let v = d.cards.view(n);
    CardRow {
        card: n,
        state,
        holder: d.cards.holder_text(n),
        atr: v.known.atr,
        iccid: v.known.iccid,
        imsi: v.known.imsi,
        facts: v.known.facts,
        exchanges: v.exchanges,
        errors: v.errors,
        bad: v.bad,
        labels: d.cards.labels_of(n),
        refused: v.refused,
    }
}

async fn cards(State(d): State<Arc<Daemon>>) -> Json<Vec<CardRow>> {
    let states = d.link.states().await.ok();
    Json(
        CardNo::all()
            .map(|n| card_row(&d, n, states.as_ref().map(|s| s[n.index()])))
            .collect(),
    )
}

pub(crate) fn card_number(n: &str) -> Result<CardNo, ApiError> {
    n.parse::<CardNo>()
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e))
}

async fn card(State(d): State<Arc<Daemon>>, Path(n): Path<String>) -> ApiResult<CardRow> {
    let n = card_number(&n)?;
    let states = d.link.states().await.ok();
    Ok(Json(card_row(&d, n, states.map(|s| s[n.index()]))))
}

fn apdu_error(e: ApduError) -> ApiError {
    match e {
        ApduError::Held(e) => ApiError::lease(&e),
        e @ (ApduError::LinkDown | ApduError::Pool(_)) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        ApduError::Refused(e @ (StartError::Bad { card, .. } | StartError::Empty(card))) => {
            let mut err = ApiError::new(StatusCode::CONFLICT, &e);
            err.body.card = Some(card);
            err
        }
        e => ApiError::new(StatusCode::BAD_GATEWAY, e),
    }
}

/// Runs the commands on card `n` under a lease held by this request (see [`ops::apdu`]). The
/// lease dies with the request: a client that disconnects mid-way frees the card.
async fn apdu(
    State(d): State<Arc<Daemon>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(who): Extension<Who>,
    Path(n): Path<String>,
    req: Request,
) -> ApiResult<crate::rows::ApduReply> {
    let n = card_number(&n)?;
    let body: ApduRequest = parse_json(
        &read_body(req).await?,
        "{\"tpdus\":[\"A0A40000023F00\",…],\"keep\":false,\"auto\":false,\"allow_last_try\":false}",
    )?;
    let cmds = ops::parse_commands(&body.tpdus)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let holder = api_holder(&who, &peer);
    let mode = ops::ApduMode {
        keep: body.keep,
        auto: body.auto,
        allow_last_try: body.allow_last_try,
    };
    let reply = ops::apdu_as(
        &d.cards,
        n,
        holder,
        Some(&who),
        &cmds,
        mode,
        d.command_timeout,
    )
    .await
    .map_err(apdu_error)?;
    for (cmd, e) in cmds.iter().zip(&reply.errors) {
        if let Some(e) = e {
            log::warn!(
                "API {peer}: card {n}: {} failed: {e}",
                hex::encode_upper(cmd)
            );
        }
    }
    Ok(Json(reply))
}

const AUTH_SHAPE: &str =
    "{\"rand\":\"…\",\"autn\":\"…\"} (3G) or {\"rand\":\"…\"} (2G), 16 bytes each in hex";

/// Runs an authentication on card `n` under a lease of this request ([`auth::authenticate`]).
/// What the card refused is 502 with its status word in the message.
async fn authenticate(
    State(d): State<Arc<Daemon>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(who): Extension<Who>,
    Path(n): Path<String>,
    req: Request,
) -> ApiResult<crate::rows::AuthRow> {
    let n = card_number(&n)?;
    let body: AuthRequest = parse_json(&read_body(req).await?, AUTH_SHAPE)?;
    let challenge = auth::Challenge::parse(&body.rand, body.autn.as_deref())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e))?;
    let holder = api_holder(&who, &peer);
    match auth::authenticate(
        &d.cards,
        n,
        holder,
        Some(&who),
        challenge,
        d.command_timeout,
        auth::Via::Api,
    )
    .await
    {
        Ok(o) => Ok(Json(crate::rows::AuthRow::new(n, &o))),
        Err(auth::AuthError::Card(e)) => Err(apdu_error(e)),
        Err(e) => {
            log::warn!("API {peer}: card {n}: authentication: {e}");
            Err(ApiError::new(StatusCode::BAD_GATEWAY, e))
        }
    }
}

async fn scan(State(d): State<Arc<Daemon>>, req: Request) -> ApiResult<Vec<crate::rows::ScanRow>> {
    let body: crate::rows::ScanRequest =
        optional_json(req, "{\"cards\":[18,256],\"free\":true}").await?;
    let scope = ops::ScanScope {
        cards: body.cards,
        free: body.free,
        details: false,
    };
    let rows = d
        .cards
        .scan_in(scope, d.command_timeout)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))?;
    // SPN, MSISDN and EID of the cards read for the first time: after the scan, so that it
    // answers as fast as the identity read of before did (issue 20 §2).
    d.cards.read_details_soon(d.command_timeout);
    Ok(Json(rows))
}

const STOP_SHAPE: &str = "{\"force\":true|false}";

/// Stops card `n` under a lease of this request; a card someone holds is left alone (409,
/// naming the holder) unless `force`.
async fn stop_card(
    State(d): State<Arc<Daemon>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(who): Extension<Who>,
    Path(n): Path<String>,
    req: Request,
) -> ApiResult<crate::rows::StopRow> {
    let n = card_number(&n)?;
    let body: StopRequest = optional_json(req, STOP_SHAPE).await?;
    if body.force {
        who.may(Action::Admin, "stop cards by force")
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e))?;
    }
    if !d.link_up() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no connection to the pool",
        ));
    }
    let state = d.link.states().await.ok().map(|s| s[n.index()]);
    let by = api_holder(&who, &peer);
    let row = ops::stop_as(&d.cards, n, state, body.force, &by, Some(&who)).await;
    if row.stopped {
        return Ok(Json(row));
    }
    let msg = row.error.clone().unwrap_or_else(|| "not stopped".into());
    Err(match &row.holder {
        Some(h) => {
            let mut e = ApiError::new(StatusCode::CONFLICT, msg);
            e.body.holder = Some(h.clone());
            e
        }
        None => ApiError::new(StatusCode::BAD_GATEWAY, msg),
    })
}

/// Stops every card the pool reports working (held ones only with `force`); one row each.
async fn stop_all(
    State(d): State<Arc<Daemon>>,
    Extension(Peer(peer)): Extension<Peer>,
    Extension(who): Extension<Who>,
    req: Request,
) -> ApiResult<Vec<crate::rows::StopRow>> {
    let body: StopRequest = optional_json(req, STOP_SHAPE).await?;
    if body.force {
        who.may(Action::Admin, "stop cards by force")
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e))?;
    }
    let by = api_holder(&who, &peer);
    ops::stop_all_as(&d.cards, body.force, &by, Some(&who))
        .await
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e))
}

/// An empty body stream, for tests.
#[cfg(test)]
fn request(body: &'static str) -> Request {
    Request::builder().body(Body::from(body)).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_bodies() {
        assert_eq!(
            parse_binding(b"{\"card\": 18}").unwrap(),
            Binding::Card(CardNo::of(18))
        );
        assert_eq!(
            parse_binding(b"{\"iccid\": \"89860043191482190636\"}").unwrap(),
            Binding::Iccid("89860043191482190636".into())
        );
        for bad in [
            "{\"card\": 0}",
            "{\"card\": 257}",
            "{\"card\": \"18\"}",
            "{\"card\": -1}",
            "{\"imsi\": \"46001x\"}",
            "{\"iccid\": 8986}",
            "{\"card\": 1, \"imsi\": \"460019894013615\"}",
            "{}",
            "{\"slot\": 3}",
            "[1]",
        ] {
            let e = parse_binding(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {e:?}");
        }
        let e = parse_binding(b"{\"card\": 18").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "cut short: {e:?}");
    }

    #[tokio::test]
    async fn a_malformed_stop_body_is_a_400_with_the_parsers_reason_not_no_force() {
        let e = optional_json::<StopRequest>(request("{\"force\":tru"), STOP_SHAPE)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.body.error.starts_with("malformed JSON: "), "{e:?}");
        assert!(e.body.error.contains("line 1 column"), "{e:?}");
        let e = optional_json::<StopRequest>(request("{\"force\":1}"), STOP_SHAPE)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        for empty in ["", " \n"] {
            let b = optional_json::<StopRequest>(request(empty), STOP_SHAPE)
                .await
                .unwrap();
            assert!(!b.force);
        }
        let b = optional_json::<StopRequest>(request("{\"force\":true}"), STOP_SHAPE)
            .await
            .unwrap();
        assert!(b.force);
    }

    #[tokio::test]
    async fn an_oversized_body_is_recognised_by_its_error_type() {
        // Without a declared length: the limit's own error type says so.
        let req = Request::builder()
            .body(Body::from("x".repeat(MAX_BODY + 1)))
            .unwrap();
        assert_eq!(
            read_body(req).await.unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        // A declared length over the bound is refused before anything is read.
        let req = Request::builder()
            .header(header::CONTENT_LENGTH, (MAX_BODY + 1).to_string())
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            read_body(req).await.unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let ok = Request::builder()
            .body(Body::from("x".repeat(MAX_BODY)))
            .unwrap();
        assert_eq!(read_body(ok).await.unwrap().len(), MAX_BODY);
    }
}
