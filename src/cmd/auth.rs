//! `simpool auth`: one authentication on a card — 3G with `--autn` (RES, CK, IK, Kc or the
//! AUTS of a synchronisation failure), 2G without (SRES, Kc) — by the card layer's
//! [`simpool::cards::auth`], through the daemon or over a connection of this command's own.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::cards::auth::{self, Challenge, Via as AuthVia};
use simpool::cards::Holder;
use simpool::rows::{AuthRequest, AuthResult, AuthRow};
use simpool::values::CardNo;

use super::{interruptible, out, out_json, CliError, Interrupt, PoolArgs, Via, EXIT_INTERRUPTED};

#[derive(Args)]
pub struct AuthArgs {
    /// Card number, 1–256 as on the front panel.
    #[arg(long)]
    card: CardNo,
    /// RAND, 16 bytes in hex.
    #[arg(long)]
    rand: String,
    /// AUTN, 16 bytes in hex: AUTHENTICATE in the 3G context on ADF.USIM. Without it: 2G (the
    /// GSM context on a USIM, RUN GSM ALGORITHM on a SIM).
    #[arg(long)]
    autn: Option<String>,
    /// Print JSON: {"card","context","result","res","ck","ik","kc","sres","auts"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

pub async fn run(a: AuthArgs) -> Result<ExitCode, CliError> {
    let card = a.card;
    let challenge =
        Challenge::parse(&a.rand, a.autn.as_deref()).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut interrupt = Interrupt::new();
    let row: AuthRow = match a.pool.via().await? {
        Via::Daemon(c) => {
            let body = AuthRequest {
                rand: hex::encode_upper(challenge.rand),
                autn: challenge.autn.map(hex::encode_upper),
            };
            let path = format!("/api/v1/cards/{card}/authenticate");
            let call = c.call(Method::POST, &path, Some(&body), Duration::from_secs(30));
            match interruptible(&mut interrupt, call).await {
                Some(r) => r?,
                None => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
            }
        }
        Via::Pool(p) => {
            let timeout = Duration::from_millis(a.pool.reply_timeout_ms * 5);
            let run = auth::authenticate(
                &p.cards,
                card,
                Holder::Command("auth"),
                None,
                challenge,
                timeout,
                AuthVia::Command,
            );
            let r = interruptible(&mut interrupt, run).await;
            p.finish().await;
            match r {
                Some(r) => AuthRow::new(card, &r.map_err(|e| CliError::Card(e.to_string()))?),
                None => {
                    eprintln!("simpool: interrupted; card stopped");
                    return Ok(ExitCode::from(EXIT_INTERRUPTED));
                }
            }
        }
    };
    if a.json {
        out_json(&row)?;
        return Ok(ExitCode::SUCCESS);
    }
    let field = |name: &str, v: &Option<simpool::values::Hex>| -> Result<(), CliError> {
        match v {
            Some(v) => out(format!("{name} {v}")),
            None => Ok(()),
        }
    };
    if row.result == AuthResult::SyncFailure {
        eprintln!(
            "card {card}: synchronisation failure (SQN out of range): resynchronise from the AUTS"
        );
    }
    field("RES", &row.res)?;
    field("CK", &row.ck)?;
    field("IK", &row.ik)?;
    field("SRES", &row.sres)?;
    field("Kc", &row.kc)?;
    field("AUTS", &row.auts)?;
    Ok(ExitCode::SUCCESS)
}
