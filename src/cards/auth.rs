//! Authentication on a pool card, written once for every front end that offers it: the
//! sim-rest API (pySim's `sim-rest-server.py` interface), the control API's
//! `POST /api/v1/cards/{n}/authenticate` and `simpool auth`.
//!
//! - 3G (RAND and AUTN): SELECT ADF.USIM by its partial AID `A0000000871002` (every USIM's
//!   RID + application code, so no EF.DIR read is needed), AUTHENTICATE in the 3G context
//!   (TS 31.102 §7.1.2.1, P2 `81`), GET RESPONSE: RES, CK, IK (Kc if the card gives it) or the
//!   AUTS of a synchronisation failure.
//! - 2G (RAND only): on a USIM AUTHENTICATE in the GSM context (P2 `80`); on a SIM (the USIM
//!   select is refused) SELECT DF.GSM and RUN GSM ALGORITHM (GSM 11.11 §9.2.16): SRES, Kc.
//!
//! [`Exchange`] is the sans-IO sequence (what to send next, what the card answered);
//! [`authenticate`] drives it under a lease, bounded in time, counted in [`AuthCounts`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ops::{start_error, ApduError};
use super::{Cards, Front, Holder, Lease};
use crate::pool::{ExchangeError, LinkState};
use crate::values::CardNo;

/// The partial AID every USIM answers to (RID `A000000087`, application code `1002`).
pub const USIM_PARTIAL_AID: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x87, 0x10, 0x02];

/// The most one authentication may take, start of the card included: the lease is bounded.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);

/// What is asked: RAND, and AUTN for the 3G context (without it: 2G).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    pub rand: [u8; 16],
    pub autn: Option<[u8; 16]>,
}

/// Why a challenge's text is refused (before any card is touched).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadChallenge {
    #[error("{what} {text:?}: want 16 bytes in hex (32 hex digits)")]
    Value { what: &'static str, text: String },
}

impl Challenge {
    /// From hex text (spaces and colons allowed, either case).
    pub fn parse(rand: &str, autn: Option<&str>) -> Result<Challenge, BadChallenge> {
        fn sixteen(what: &'static str, t: &str) -> Result<[u8; 16], BadChallenge> {
            let clean: String = t
                .chars()
                .filter(|c| !c.is_whitespace() && *c != ':')
                .collect();
            hex::decode(&clean)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or_else(|| BadChallenge::Value {
                    what,
                    text: t.to_string(),
                })
        }
        Ok(Challenge {
            rand: sixteen("RAND", rand)?,
            autn: autn.map(|a| sixteen("AUTN", a)).transpose()?,
        })
    }

    pub fn context(&self) -> Context {
        if self.autn.is_some() {
            Context::Umts
        } else {
            Context::Gsm
        }
    }
}

/// The security context of an authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Context {
    #[serde(rename = "3g")]
    Umts,
    #[serde(rename = "2g")]
    Gsm,
}

/// What the card answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 3G: the AUTN was accepted.
    Umts {
        res: Vec<u8>,
        ck: Vec<u8>,
        ik: Vec<u8>,
        kc: Option<Vec<u8>>,
    },
    /// 3G: the SQN was out of range; the card's AUTS lets the network resynchronise.
    SyncFailure { auts: Vec<u8> },
    /// 2G: SRES and Kc (RUN GSM ALGORITHM, or AUTHENTICATE in the GSM context).
    Gsm { sres: Vec<u8>, kc: Vec<u8> },
}

/// What the card refused or answered that is no authentication result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardRefusal {
    #[error("not a USIM: SELECT ADF.USIM answered {} (a 2G SIM has no 3G authentication)", sw_hex(*.sw))]
    NotUsim { sw: [u8; 2] },
    #[error("{what}: {}", describe(*.sw))]
    Status { what: &'static str, sw: [u8; 2] },
    #[error("{what}: malformed answer {}", hex::encode_upper(.resp))]
    Malformed { what: &'static str, resp: Vec<u8> },
}

impl CardRefusal {
    /// The card's status word, where there is one.
    pub fn status_word(&self) -> Option<[u8; 2]> {
        match self {
            CardRefusal::NotUsim { sw } | CardRefusal::Status { sw, .. } => Some(*sw),
            CardRefusal::Malformed { .. } => None,
        }
    }
}

fn sw_hex(sw: [u8; 2]) -> String {
    hex::encode_upper(sw)
}

/// A status word said in words (those an authentication meets).
fn describe(sw: [u8; 2]) -> String {
    let what = match sw {
        [0x98, 0x62] => "authentication error, incorrect MAC (AUTN not from this card's key)",
        [0x69, 0x82] | [0x98, 0x04] => {
            "security status not satisfied (PIN1 enabled and not verified?)"
        }
        [0x69, 0x85] => "conditions of use not satisfied",
        [0x6A, 0x82] => "file or application not found",
        [0x6D, 0x00] => "instruction not supported",
        [0x6E, 0x00] => "class not supported",
        [0x67, 0x00] => "wrong length",
        [0x6F, 0x00] => "no precise diagnosis (no answer from the card in time?)",
        _ => "",
    };
    if what.is_empty() {
        format!("card answered {}", sw_hex(sw))
    } else {
        format!("card answered {} ({what})", sw_hex(sw))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    SelectUsim,
    Authenticate,
    GetResponse { len: u8, retried: bool },
    SelectGsm,
    RunGsm,
    GetResponseGsm { len: u8, retried: bool },
    Done,
}

/// The command sequence of one authentication, sans IO: ask [`Exchange::command`] what to
/// send, give the card's answer (`data ‖ SW1 SW2`) to [`Exchange::answer`], until it is done;
/// then [`Exchange::outcome`].
#[derive(Debug, Clone)]
pub struct Exchange {
    challenge: Challenge,
    step: Step,
    outcome: Option<Outcome>,
}

impl Exchange {
    pub fn new(challenge: Challenge) -> Exchange {
        Exchange {
            challenge,
            step: Step::SelectUsim,
            outcome: None,
        }
    }

    /// What to send next, named for errors; `None` when done.
    pub fn command(&self) -> Option<(&'static str, Vec<u8>)> {
        let c = &self.challenge;
        Some(match self.step {
            Step::SelectUsim => {
                let mut v = vec![0x00, 0xA4, 0x04, 0x04, USIM_PARTIAL_AID.len() as u8];
                v.extend(USIM_PARTIAL_AID);
                ("SELECT ADF.USIM", v)
            }
            Step::Authenticate => {
                let (p2, len) = match c.autn {
                    Some(_) => (0x81, 34),
                    None => (0x80, 17),
                };
                let mut v = vec![0x00, 0x88, 0x00, p2, len, 0x10];
                v.extend(c.rand);
                if let Some(autn) = c.autn {
                    v.push(0x10);
                    v.extend(autn);
                }
                ("AUTHENTICATE", v)
            }
            Step::GetResponse { len, .. } => ("GET RESPONSE", vec![0x00, 0xC0, 0x00, 0x00, len]),
            Step::SelectGsm => (
                "SELECT DF.GSM",
                vec![0xA0, 0xA4, 0x00, 0x00, 0x02, 0x7F, 0x20],
            ),
            Step::RunGsm => {
                let mut v = vec![0xA0, 0x88, 0x00, 0x00, 0x10];
                v.extend(c.rand);
                ("RUN GSM ALGORITHM", v)
            }
            Step::GetResponseGsm { len, .. } => ("GET RESPONSE", vec![0xA0, 0xC0, 0x00, 0x00, len]),
            Step::Done => return None,
        })
    }

    /// The card's answer to the last command.
    pub fn answer(&mut self, resp: &[u8]) -> Result<(), CardRefusal> {
        let what = self.command().map_or("", |(w, _)| w);
        let (data, sw) = match resp {
            [data @ .., a, b] => (data, [*a, *b]),
            _ => {
                return Err(CardRefusal::Malformed {
                    what,
                    resp: resp.to_vec(),
                })
            }
        };
        let status = |sw| CardRefusal::Status { what, sw };
        self.step = match self.step {
            Step::SelectUsim => match sw {
                [0x90, 0x00] | [0x61, _] => Step::Authenticate,
                // Only 2G asks again on the GSM face; 3G on a SIM is refused.
                _ if self.challenge.autn.is_none() => Step::SelectGsm,
                _ => return Err(CardRefusal::NotUsim { sw }),
            },
            Step::Authenticate => match sw {
                [0x61, n] => Step::GetResponse {
                    len: n,
                    retried: false,
                },
                _ => return Err(status(sw)),
            },
            Step::GetResponse { retried, .. } => match sw {
                [0x90, 0x00] => {
                    self.outcome = Some(self.parse_usim(data).ok_or(CardRefusal::Malformed {
                        what: "AUTHENTICATE",
                        resp: resp.to_vec(),
                    })?);
                    Step::Done
                }
                [0x6C, n] if !retried => Step::GetResponse {
                    len: n,
                    retried: true,
                },
                _ => return Err(status(sw)),
            },
            Step::SelectGsm => match sw {
                [0x9F, _] | [0x90, 0x00] => Step::RunGsm,
                _ => return Err(status(sw)),
            },
            Step::RunGsm => match sw {
                [0x9F, n] => Step::GetResponseGsm {
                    len: n,
                    retried: false,
                },
                _ => return Err(status(sw)),
            },
            Step::GetResponseGsm { retried, .. } => match (sw, data.len()) {
                ([0x90, 0x00], 12) => {
                    self.outcome = Some(Outcome::Gsm {
                        sres: data[..4].to_vec(),
                        kc: data[4..].to_vec(),
                    });
                    Step::Done
                }
                ([0x6C, n] | [0x67, n], _) if !retried && n != 0 => Step::GetResponseGsm {
                    len: n,
                    retried: true,
                },
                ([0x90, 0x00], _) => {
                    return Err(CardRefusal::Malformed {
                        what: "RUN GSM ALGORITHM",
                        resp: resp.to_vec(),
                    })
                }
                _ => return Err(status(sw)),
            },
            Step::Done => Step::Done,
        };
        Ok(())
    }

    /// The `DB`/`DC` (3G) or `04 SRES 08 Kc` (GSM context) answer of AUTHENTICATE.
    fn parse_usim(&self, data: &[u8]) -> Option<Outcome> {
        // Length-value fields in a row.
        fn lvs(mut d: &[u8]) -> Option<Vec<Vec<u8>>> {
            let mut out = Vec::new();
            while let [len, rest @ ..] = d {
                let len = usize::from(*len);
                if rest.len() < len {
                    return None;
                }
                out.push(rest[..len].to_vec());
                d = &rest[len..];
            }
            Some(out)
        }
        if self.challenge.autn.is_none() {
            return match lvs(data)?.as_slice() {
                [sres, kc] if sres.len() == 4 && kc.len() == 8 => Some(Outcome::Gsm {
                    sres: sres.clone(),
                    kc: kc.clone(),
                }),
                _ => None,
            };
        }
        let (tag, rest) = data.split_first()?;
        let fields = lvs(rest)?;
        match (tag, fields.as_slice()) {
            (0xDB, [res, ck, ik, more @ ..]) if ck.len() == 16 && ik.len() == 16 => {
                Some(Outcome::Umts {
                    res: res.clone(),
                    ck: ck.clone(),
                    ik: ik.clone(),
                    kc: more.first().filter(|kc| kc.len() == 8).cloned(),
                })
            }
            (0xDC, [auts]) if auts.len() == 14 => Some(Outcome::SyncFailure { auts: auts.clone() }),
            _ => None,
        }
    }

    /// The result, once [`Exchange::command`] answers `None`.
    pub fn outcome(self) -> Option<Outcome> {
        self.outcome
    }
}

/// Why an authentication gave no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// The card could not be used (held, empty slot, marked bad, pool away, mute).
    #[error(transparent)]
    Card(#[from] ApduError),
    #[error("card {card}: {what}: {error}")]
    Exchange {
        card: CardNo,
        what: &'static str,
        error: ExchangeError,
    },
    #[error("card {card}: {refusal}")]
    Refused { card: CardNo, refusal: CardRefusal },
    #[error("card {card}: no result within {} s", AUTH_DEADLINE.as_secs())]
    Deadline { card: CardNo },
}

/// Which front end asked (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    SimRest,
    Api,
    Command,
}

impl Via {
    pub const ALL: [Via; 3] = [Via::SimRest, Via::Api, Via::Command];

    pub fn name(self) -> &'static str {
        match self {
            Via::SimRest => "sim-rest",
            Via::Api => "api",
            Via::Command => "command",
        }
    }
}

/// How an authentication ended (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Success,
    SyncFailure,
    /// The card refused it or failed (MAC, PIN, not a USIM, no answer).
    CardError,
    /// The card was not used (held, empty, bad, pool away).
    NotRun,
}

impl Ended {
    pub const ALL: [Ended; 4] = [
        Ended::Success,
        Ended::SyncFailure,
        Ended::CardError,
        Ended::NotRun,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Ended::Success => "success",
            Ended::SyncFailure => "sync_failure",
            Ended::CardError => "card_error",
            Ended::NotRun => "not_run",
        }
    }

    fn of(r: &Result<Outcome, AuthError>) -> Ended {
        match r {
            Ok(Outcome::SyncFailure { .. }) => Ended::SyncFailure,
            Ok(_) => Ended::Success,
            Err(AuthError::Card(_)) => Ended::NotRun,
            Err(_) => Ended::CardError,
        }
    }
}

/// Authentications by front end and result (atomics: no lock).
#[derive(Debug, Default)]
pub struct AuthCounts {
    counts: [[AtomicU64; 4]; 3],
}

impl AuthCounts {
    fn count(&self, via: Via, ended: Ended) {
        self.counts[via as usize][ended as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, via: Via, ended: Ended) -> u64 {
        self.counts[via as usize][ended as usize].load(Ordering::Relaxed)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode_upper;
        match self {
            Outcome::Umts { res, ck, ik, kc } => {
                write!(f, "RES {} CK {} IK {}", h(res), h(ck), h(ik))?;
                if let Some(kc) = kc {
                    write!(f, " Kc {}", h(kc))?;
                }
                Ok(())
            }
            Outcome::SyncFailure { auts } => write!(f, "synchronisation failure: AUTS {}", h(auts)),
            Outcome::Gsm { sres, kc } => write!(f, "SRES {} Kc {}", h(sres), h(kc)),
        }
    }
}

/// Starts card `n` under a lease of `holder`, runs the authentication, stops the card again
/// (the lease ends with the call; dropping the future frees the card). Each exchange is
/// bounded by `timeout`, the whole by [`AUTH_DEADLINE`].
pub async fn authenticate(
    cards: &Cards,
    n: CardNo,
    holder: Holder,
    who: Option<&crate::users::Who>,
    challenge: Challenge,
    timeout: Duration,
    via: Via,
) -> Result<Outcome, AuthError> {
    let r = match tokio::time::timeout(
        AUTH_DEADLINE,
        run(cards, n, holder, who, challenge, timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(AuthError::Deadline { card: n }),
    };
    cards.inner.auth.count(via, Ended::of(&r));
    match &r {
        Ok(o) => log::debug!("card {n}: authentication ({}): {o}", via.name()),
        Err(e) => log::debug!("card {n}: authentication ({}): {e}", via.name()),
    }
    r
}

async fn run(
    cards: &Cards,
    n: CardNo,
    holder: Holder,
    who: Option<&crate::users::Who>,
    challenge: Challenge,
    timeout: Duration,
) -> Result<Outcome, AuthError> {
    // A card reserved by another user (or by anyone, for sim-rest, which names nobody) is
    // refused here, as on every front end.
    let mut lease = cards.lease_as(n, holder, who).map_err(ApduError::Held)?;
    let r = run_on(&mut lease, challenge, timeout).await;
    lease.release().await;
    r
}

async fn run_on(
    lease: &mut Lease,
    challenge: Challenge,
    timeout: Duration,
) -> Result<Outcome, AuthError> {
    let n = lease.number();
    if !matches!(lease.cards.link().state(), LinkState::Up { .. }) {
        return Err(ApduError::LinkDown.into());
    }
    lease.start_admitted().await.map_err(start_error(n))?;
    let mut x = Exchange::new(challenge);
    while let Some((what, cmd)) = x.command() {
        let resp = lease
            .transmit(&cmd, timeout, Front::Api)
            .await
            .map_err(|error| AuthError::Exchange {
                card: n,
                what,
                error,
            })?;
        x.answer(&resp)
            .map_err(|refusal| AuthError::Refused { card: n, refusal })?;
    }
    x.outcome().ok_or(AuthError::Refused {
        card: n,
        refusal: CardRefusal::Malformed {
            what: "AUTHENTICATE",
            resp: Vec::new(),
        },
    })
}

impl Cards {
    /// Authentications by front end and result, for the metrics.
    pub fn auth_counts(&self) -> &AuthCounts {
        &self.inner.auth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_against(x: &mut Exchange, answers: &[&str]) -> Result<(), CardRefusal> {
        for a in answers {
            assert!(x.command().is_some(), "more answers than commands");
            x.answer(&hex::decode(a).unwrap())?;
        }
        Ok(())
    }

    const RAND: &str = "23553cbe9637a89d218ae64dae47bf35";
    const AUTN: &str = "55f328b43577b9b94a9ffac354dfafb3";

    #[test]
    fn umts_success_on_a_usim() {
        let c = Challenge::parse(RAND, Some(AUTN)).unwrap();
        let mut x = Exchange::new(c);
        assert_eq!(
            hex::encode_upper(x.command().unwrap().1),
            "00A4040407A0000000871002"
        );
        x.answer(&hex::decode("6134").unwrap()).unwrap();
        let (what, cmd) = x.command().unwrap();
        assert_eq!(what, "AUTHENTICATE");
        assert_eq!(
            hex::encode(&cmd),
            format!("0088008122 10{RAND}10{AUTN}").replace(' ', "")
        );
        x.answer(&hex::decode("6135").unwrap()).unwrap();
        assert_eq!(x.command().unwrap().1, hex::decode("00C0000035").unwrap());
        x.answer(&hex::decode("DB08A54211D5E3BA50BF10B40BA9A3C58B2A05BBF0D987B21BF8CB10F769BCD751044604127672711C6D344108EAE4BE823AF9A08B9000").unwrap())
            .unwrap();
        assert!(x.command().is_none());
        let Some(Outcome::Umts { res, ck, ik, kc }) = x.outcome() else {
            panic!()
        };
        assert_eq!(hex::encode(res), "a54211d5e3ba50bf");
        assert_eq!(hex::encode(ck), "b40ba9a3c58b2a05bbf0d987b21bf8cb");
        assert_eq!(hex::encode(ik), "f769bcd751044604127672711c6d3441");
        assert_eq!(hex::encode(kc.unwrap()), "eae4be823af9a08b");
    }

    #[test]
    fn sync_failure_and_mac_failure() {
        let c = Challenge::parse(RAND, Some(AUTN)).unwrap();
        let mut x = Exchange::new(c);
        run_against(
            &mut x,
            &["9000", "6110", "DC0EBA853F3C123CCF44E93596E355C69000"],
        )
        .unwrap();
        assert_eq!(
            x.outcome(),
            Some(Outcome::SyncFailure {
                auts: hex::decode("BA853F3C123CCF44E93596E355C6").unwrap()
            })
        );
        let mut x = Exchange::new(c);
        let e = run_against(&mut x, &["6134", "9862"]).unwrap_err();
        assert_eq!(e.status_word(), Some([0x98, 0x62]));
        assert!(e.to_string().contains("incorrect MAC"), "{e}");
        let mut x = Exchange::new(c);
        let e = run_against(&mut x, &["6134", "6982"]).unwrap_err();
        assert!(e.to_string().contains("PIN1"), "{e}");
        // A GET RESPONSE of the wrong length is asked again once.
        let mut x = Exchange::new(c);
        run_against(&mut x, &["9000", "6110", "6C10"]).unwrap();
        assert_eq!(x.command().unwrap().1, hex::decode("00C0000010").unwrap());
        // A truncated answer is no result.
        let mut x = Exchange::new(c);
        let e = run_against(&mut x, &["9000", "6110", "DB08A5429000"]).unwrap_err();
        assert!(matches!(e, CardRefusal::Malformed { .. }), "{e}");
    }

    #[test]
    fn umts_on_a_sim_is_refused_gsm_falls_back_to_run_gsm_algorithm() {
        let c = Challenge::parse(RAND, Some(AUTN)).unwrap();
        let mut x = Exchange::new(c);
        let e = run_against(&mut x, &["6E00"]).unwrap_err();
        assert_eq!(e, CardRefusal::NotUsim { sw: [0x6E, 0x00] });
        assert!(e.to_string().contains("not a USIM"), "{e}");

        let c = Challenge::parse(RAND, None).unwrap();
        assert_eq!(c.context(), Context::Gsm);
        let mut x = Exchange::new(c);
        run_against(&mut x, &["6E00"]).unwrap();
        assert_eq!(
            x.command().unwrap().1,
            hex::decode("A0A40000027F20").unwrap()
        );
        run_against(&mut x, &["9F17"]).unwrap();
        assert_eq!(
            x.command().unwrap().1,
            hex::decode(format!("A088000010{RAND}")).unwrap()
        );
        run_against(&mut x, &["9F0C", "0102030405060708090A0B0C9000"]).unwrap();
        assert_eq!(
            x.outcome(),
            Some(Outcome::Gsm {
                sres: vec![1, 2, 3, 4],
                kc: (5..=12).collect()
            })
        );
        // CHV1 enabled and not verified.
        let mut x = Exchange::new(c);
        let e = run_against(&mut x, &["6E00", "9F17", "9804"]).unwrap_err();
        assert_eq!(e.status_word(), Some([0x98, 0x04]));
    }

    #[test]
    fn gsm_context_on_a_usim() {
        let c = Challenge::parse(RAND, None).unwrap();
        let mut x = Exchange::new(c);
        run_against(&mut x, &["9000"]).unwrap();
        assert_eq!(
            x.command().unwrap().1,
            hex::decode(format!("0088008011 10{RAND}").replace(' ', "")).unwrap()
        );
        run_against(
            &mut x,
            &[
                "610E",
                "04AABBCCDD081122334455667788 9000"
                    .replace(' ', "")
                    .as_str(),
            ],
        )
        .unwrap();
        assert_eq!(
            x.outcome(),
            Some(Outcome::Gsm {
                sres: hex::decode("AABBCCDD").unwrap(),
                kc: hex::decode("1122334455667788").unwrap()
            })
        );
    }

    #[test]
    fn challenges_are_checked() {
        assert!(Challenge::parse("00", None).is_err());
        assert!(Challenge::parse(RAND, Some("zz")).is_err());
        let e = Challenge::parse(&RAND[..30], None).unwrap_err();
        assert!(e.to_string().contains("RAND"), "{e}");
        assert!(Challenge::parse(&RAND.to_uppercase(), Some(AUTN)).is_ok());
    }
}
