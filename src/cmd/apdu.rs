//! `simpool apdu`: start a card and run commands through the T=0 terminal.

use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use simpool::pool::Slot;

use super::{parse_hex, CliError, PoolArgs, Via};

pub async fn run(pool: PoolArgs, card: u16, commands: Vec<String>) -> Result<ExitCode, CliError> {
    let slot = Slot::from_card(card)
        .ok_or_else(|| CliError::Usage(format!("card {card} does not exist: cards are 1-256")))?;
    let cmds = commands
        .iter()
        .map(|c| parse_hex(c))
        .collect::<Result<Vec<_>, _>>()?;
    match pool.via().await? {
        Via::Daemon(c) => {
            let body = json!({ "tpdus": cmds.iter().map(hex::encode_upper).collect::<Vec<_>>() });
            let v = c
                .call(
                    Method::POST,
                    &format!("/api/v1/cards/{card}/apdu"),
                    Some(&body),
                    Duration::from_secs(60),
                )
                .await?;
            eprintln!("ATR {}", super::cell(&v["atr"]));
            let errors = v["errors"].as_array().cloned().unwrap_or_default();
            for (i, r) in v["responses"].as_array().into_iter().flatten().enumerate() {
                if let Some(e) = errors.get(i).and_then(Value::as_str) {
                    return Err(CliError::Card(format!(
                        "card {card}: {} failed: {e}",
                        hex::encode_upper(&cmds[i])
                    )));
                }
                println!("{}", super::cell(r));
            }
        }
        Via::Pool(p) => {
            let handle = p.link.card(slot);
            let atr = handle.start().await.map_err(|e| {
                CliError::Card(format!("card {card} did not start (empty or mute?): {e}"))
            })?;
            eprintln!("ATR {}", hex::encode_upper(&atr));
            let deadline = Duration::from_millis(pool.reply_timeout_ms * 5);
            for cmd in cmds {
                let resp = handle.transmit(&cmd, deadline).await.map_err(|e| {
                    CliError::Card(format!(
                        "card {card}: {} failed: {e}",
                        hex::encode_upper(&cmd)
                    ))
                })?;
                println!("{}", hex::encode_upper(resp));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
