//! The sim-rest API (`serve --sim-rest ADDR`): what osmocom pySim's `contrib/sim-rest-server.py`
//! answers, for every card of the pool at once, so that its `sim-rest-client.py` and the core
//! network tools written against it work unchanged.
//!
//! - `POST /sim-auth-api/v1/slot/{slot}` with `{"rand":"…","autn":"…"}` (hex): AUTHENTICATE in
//!   the 3G context on ADF.USIM → `{"successful_3g_authentication":{"res","ck","ik","kc"}}` or
//!   `{"synchronisation_failure":{"auts"}}` (lowercase hex, as pySim prints it);
//! - `GET /sim-info-api/v1/slot/{slot}` → `{"imsi","iccid"}`;
//! - errors `{"error":{"message","status_word"}}` (`status_word` lowercase hex or `null`):
//!   400 malformed request, 404 no such slot, 410 no card in the slot, 409 the card is held
//!   (then `"holder"` names who), 503 the pool is away or the card is marked bad, 500 what the
//!   card answered instead (`98 62` MAC failure, `69 82` PIN needed, …).
//!
//! Slot *k* is card *k*+1, as for the osmo-remsim bank. The work is the card layer's
//! ([`crate::cards::auth`]): each request takes the card's lease, bounded in time, refused
//! while someone else holds it, counted in the metrics (`via="sim-rest"`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cards::auth::{self, AuthError, Challenge, Outcome, Via};
use crate::cards::ops::ApduError;
use crate::cards::{Holder, LeaseError, ReadError, StartError};
use crate::control::api::Peer;
use crate::daemon::Daemon;
use crate::values::CardNo;

/// pySim's server and client use port 8000.
pub const DEFAULT_PORT: u16 = 8000;
/// Largest request body (a RAND and an AUTN are 100 bytes of JSON).
const MAX_BODY: usize = 4096;
const BODY_TIMEOUT: Duration = Duration::from_secs(1);

/// An error answer in pySim's shape.
#[derive(Debug)]
pub struct SimRestError {
    status: StatusCode,
    message: String,
    sw: Option<[u8; 2]>,
    holder: Option<String>,
}

impl SimRestError {
    fn new(status: StatusCode, message: impl std::fmt::Display) -> SimRestError {
        SimRestError {
            status,
            message: message.to_string(),
            sw: None,
            holder: None,
        }
    }
}

#[derive(Serialize)]
struct ErrorInner {
    message: String,
    status_word: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
}

impl IntoResponse for SimRestError {
    fn into_response(self) -> Response {
        let body = json!({ "error": ErrorInner {
            message: self.message,
            status_word: self.sw.map(hex::encode),
            holder: self.holder,
        }});
        (self.status, Json(body)).into_response()
    }
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/sim-auth-api/v1/slot/{slot}", post(authenticate))
        .route("/sim-info-api/v1/slot/{slot}", get(info))
        .method_not_allowed_fallback(|| async {
            SimRestError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .fallback(|| async { SimRestError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(daemon)
}

/// Slot *k* (0–255) is card *k*+1; anything else is no slot of this pool (404, as pySim's
/// server answers for a reader that does not exist).
fn card_of(slot: &str) -> Result<CardNo, SimRestError> {
    slot.parse::<u16>()
        .ok()
        .and_then(|k| CardNo::new(k.checked_add(1)?).ok())
        .ok_or_else(|| {
            SimRestError::new(
                StatusCode::NOT_FOUND,
                format!("Reader Error: Specified SIM Slot doesn't exist (slot {slot:?}: the pool has slots 0-255)"),
            )
        })
}

async fn read_body(req: Request) -> Result<axum::body::Bytes, SimRestError> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(SimRestError::new(
            StatusCode::BAD_REQUEST,
            format!("Malformed Request: {e}"),
        )),
        Err(_) => Err(SimRestError::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
    }
}

/// `{"rand","autn"}`, both 16 bytes in hex; anything else is 400 ("Malformed Request", as pySim
/// says, with what is wrong).
fn challenge(bytes: &[u8]) -> Result<Challenge, SimRestError> {
    let bad = |why: String| {
        SimRestError::new(StatusCode::BAD_REQUEST, format!("Malformed Request: {why}"))
    };
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let field = |k: &str| -> Result<&str, SimRestError> {
        v.get(k).and_then(Value::as_str).ok_or_else(|| {
            bad(format!(
                "want {{\"rand\":\"…\",\"autn\":\"…\"}} (hex), no string {k:?}"
            ))
        })
    };
    Challenge::parse(field("rand")?, Some(field("autn")?)).map_err(|e| bad(e.to_string()))
}

/// The lease's holder: "sim-rest request from 127.0.0.1:53124", kind `sim-rest` in the history.
fn holder_of(peer: &Peer) -> Holder {
    Holder::SimRest(peer.0.clone())
}

/// The card layer's refusals and errors in pySim's terms.
fn auth_error(slot: u16, e: AuthError) -> SimRestError {
    match e {
        AuthError::Card(e) => card_error(slot, e),
        AuthError::Refused { refusal, .. } => {
            let sw = refusal.status_word();
            let message = match sw {
                Some([0x98, 0x62]) => {
                    format!("Card Authentication Error - Incorrect MAC ({refusal})")
                }
                Some([0x69, 0x82]) | Some([0x98, 0x04]) => {
                    format!("Security Status not satisfied - Card PIN enabled? ({refusal})")
                }
                _ => format!("Card Communication Error: {refusal}"),
            };
            SimRestError {
                sw,
                ..SimRestError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            }
        }
        AuthError::Exchange { error, .. } => SimRestError {
            sw: Some(error.status()),
            ..SimRestError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Card Communication Error: {error}"),
            )
        },
        e @ AuthError::Deadline { .. } => SimRestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("slot {slot}: {e}"),
        ),
    }
}

fn card_error(slot: u16, e: ApduError) -> SimRestError {
    match e {
        ApduError::Held(LeaseError::Held { card, holder }) => SimRestError {
            holder: Some(holder.to_string()),
            ..SimRestError::new(
                StatusCode::CONFLICT,
                format!("slot {slot} (card {card}) is held by {holder}"),
            )
        },
        ApduError::Held(e @ LeaseError::Reserved(_)) => {
            let (card, holder) = (e.card(), e.holder_text());
            SimRestError {
                holder: Some(format!("reserved by {holder}")),
                ..SimRestError::new(
                    StatusCode::CONFLICT,
                    format!("slot {slot} (card {card}) is reserved by {holder}"),
                )
            }
        }
        ApduError::Refused(StartError::Empty(_)) => SimRestError::new(
            StatusCode::GONE,
            format!("No SIM card inserted in slot {slot}"),
        ),
        e @ (ApduError::Refused(_) | ApduError::LinkDown | ApduError::Pool(_)) => {
            SimRestError::new(StatusCode::SERVICE_UNAVAILABLE, format!("slot {slot}: {e}"))
        }
        e @ ApduError::Start { .. } => SimRestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("slot {slot}: {e}"),
        ),
    }
}

async fn authenticate(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Extension<Peer>,
    Path(slot): Path<String>,
    req: Request,
) -> Result<Json<AuthAnswer>, SimRestError> {
    let n = card_of(&slot)?;
    let c = challenge(&read_body(req).await?)?;
    let slot = n.get() - 1;
    let r = auth::authenticate(
        &d.cards,
        n,
        holder_of(&peer),
        None,
        c,
        d.command_timeout,
        Via::SimRest,
    )
    .await;
    match r {
        Ok(o) => Ok(Json(pysim_shape(&o))),
        Err(e) => {
            let e = auth_error(slot, e);
            log::warn!(
                "sim-rest {}: slot {slot}: {} ({})",
                peer.0,
                e.message,
                e.status
            );
            Err(e)
        }
    }
}

/// The answer as pySim's `authenticate` decodes it (lowercase hex; `kc` `null` when the card
/// gives none), in pySim's key order.
#[derive(Debug, Serialize, PartialEq, Eq)]
enum AuthAnswer {
    #[serde(rename = "successful_3g_authentication")]
    Successful3gAuthentication {
        res: String,
        ck: String,
        ik: String,
        kc: Option<String>,
    },
    #[serde(rename = "synchronisation_failure")]
    SynchronisationFailure { auts: String },
    /// Not asked for on this API (the challenge always has an AUTN); said plainly anyway.
    #[serde(rename = "gsm_authentication")]
    GsmAuthentication { sres: String, kc: String },
}

fn pysim_shape(o: &Outcome) -> AuthAnswer {
    match o {
        Outcome::Umts { res, ck, ik, kc } => AuthAnswer::Successful3gAuthentication {
            res: hex::encode(res),
            ck: hex::encode(ck),
            ik: hex::encode(ik),
            kc: kc.as_ref().map(hex::encode),
        },
        Outcome::SyncFailure { auts } => AuthAnswer::SynchronisationFailure {
            auts: hex::encode(auts),
        },
        Outcome::Gsm { sres, kc } => AuthAnswer::GsmAuthentication {
            sres: hex::encode(sres),
            kc: hex::encode(kc),
        },
    }
}

async fn info(
    State(d): State<Arc<Daemon>>,
    Extension(peer): Extension<Peer>,
    Path(slot): Path<String>,
) -> Result<Json<InfoAnswer>, SimRestError> {
    let n = card_of(&slot)?;
    let slot = n.get() - 1;
    let work = async {
        let mut lease = d
            .cards
            .lease(n, holder_of(&peer))
            .map_err(|e| card_error(slot, ApduError::Held(e)))?;
        let r = read(&d, &mut lease, slot).await;
        lease.release().await;
        r
    };
    let r = match tokio::time::timeout(auth::AUTH_DEADLINE, work).await {
        Ok(r) => r,
        Err(_) => Err(SimRestError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "slot {slot}: no answer within {} s",
                auth::AUTH_DEADLINE.as_secs()
            ),
        )),
    };
    if let Err(e) = &r {
        log::warn!(
            "sim-rest {}: slot {slot}: {} ({})",
            peer.0,
            e.message,
            e.status
        );
    }
    r
}

#[derive(Serialize)]
struct InfoAnswer {
    imsi: Option<String>,
    iccid: Option<String>,
}

async fn read(
    d: &Daemon,
    lease: &mut crate::cards::Lease,
    slot: u16,
) -> Result<Json<InfoAnswer>, SimRestError> {
    if !d.link_up() {
        return Err(card_error(slot, ApduError::LinkDown));
    }
    lease
        .admit()
        .await
        .map_err(|e| card_error(slot, start_refusal(lease.number(), e)))?;
    match lease.read_identity(d.command_timeout).await {
        // A struct keeps pySim's key order (a JSON map would sort them).
        Ok(id) => Ok(Json(InfoAnswer {
            imsi: id.imsi,
            iccid: id.iccid,
        })),
        Err(ReadError::Start(e)) => Err(card_error(slot, start_refusal(lease.number(), e))),
        Err(ReadError::Read(e)) => {
            let sw = match &e {
                crate::identity::ReadError::Status { sw, .. } => <[u8; 2]>::try_from(&sw[..]).ok(),
                crate::identity::ReadError::Exchange { error, .. } => Some(error.status()),
            };
            let message = match sw {
                Some([0x69, 0x82]) | Some([0x98, 0x04]) => {
                    format!("Security Status not satisfied - Card PIN enabled? ({e})")
                }
                _ => format!("Card Communication Error: {e}"),
            };
            Err(SimRestError {
                sw,
                ..SimRestError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
            })
        }
    }
}

fn start_refusal(n: CardNo, e: StartError) -> ApduError {
    crate::cards::ops::start_error(n)(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_cards_minus_one() {
        assert_eq!(card_of("0").unwrap(), CardNo::of(1));
        assert_eq!(card_of("255").unwrap(), CardNo::of(256));
        for bad in ["256", "-1", "x", "", "65535"] {
            assert_eq!(
                card_of(bad).unwrap_err().status,
                StatusCode::NOT_FOUND,
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_challenges_are_400() {
        for bad in [
            "",
            "{",
            "[]",
            "{\"rand\":\"00\"}",
            "{\"rand\":\"23553cbe9637a89d218ae64dae47bf35\"}",
            "{\"rand\":\"23553cbe9637a89d218ae64dae47bf35\",\"autn\":5}",
            "{\"rand\":\"23553cbe9637a89d218ae64dae47bf3\",\"autn\":\"55f328b43577b9b94a9ffac354dfafb3\"}",
        ] {
            let e = challenge(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.message.starts_with("Malformed Request"), "{bad}: {}", e.message);
        }
        assert!(challenge(
            b"{\"rand\":\"23553cbe9637a89d218ae64dae47bf35\",\"autn\":\"55f328b43577b9b94a9ffac354dfafb3\"}"
        )
        .is_ok());
    }

    #[test]
    fn answers_have_pysims_shape() {
        let v = serde_json::to_string(&pysim_shape(&Outcome::Umts {
            res: vec![0xA5],
            ck: vec![0xB4],
            ik: vec![0xF7],
            kc: None,
        }))
        .unwrap();
        // pySim's key order.
        assert_eq!(
            v,
            r#"{"successful_3g_authentication":{"res":"a5","ck":"b4","ik":"f7","kc":null}}"#
        );
        let v = serde_json::to_string(&pysim_shape(&Outcome::SyncFailure {
            auts: vec![0xBA, 0x85],
        }))
        .unwrap();
        assert_eq!(v, r#"{"synchronisation_failure":{"auts":"ba85"}}"#);
    }
}
