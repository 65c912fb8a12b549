//! `simpool status`: the 256 slot states (and, through the daemon, who holds which card).

use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};

use simpool::inventory;
use simpool::pool::SlotState;

use super::{CliError, PoolArgs, Via};

pub async fn run(pool: PoolArgs, json: bool) -> Result<ExitCode, CliError> {
    let rows: Vec<(SlotState, Value)> = match pool.via().await? {
        Via::Daemon(c) => {
            let v = c
                .call(Method::GET, "/api/v1/cards", None, Duration::from_secs(5))
                .await?;
            let list = v.as_array().cloned().unwrap_or_default();
            if list.iter().any(|c| c["state"].is_null()) {
                return Err(CliError::Card(
                    "the daemon cannot read the slot states: its pool link is down".into(),
                ));
            }
            list.into_iter()
                .map(|c| (state_of(&c["state"]), c["holder"].clone()))
                .collect()
        }
        Via::Pool(p) => p
            .link
            .states()
            .await?
            .into_iter()
            .map(|s| (s, Value::Null))
            .collect(),
    };
    if json {
        let cards: Vec<_> = rows
            .iter()
            .enumerate()
            .map(|(i, (s, h))| json!({ "card": i + 1, "state": s, "holder": h }))
            .collect();
        println!("{}", json!({ "slots": cards }));
    } else {
        let states: Vec<SlotState> = rows.iter().map(|(s, _)| *s).collect();
        print!("{}", inventory::grid(&states));
        let held: Vec<String> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, (_, h))| h.as_str().map(|h| format!("{} {h}", i + 1)))
            .collect();
        if !held.is_empty() {
            println!("held: {}", held.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn state_of(v: &Value) -> SlotState {
    match v.as_str() {
        Some("empty") => SlotState::Empty,
        Some("inserted") => SlotState::Inserted,
        Some("working") => SlotState::Working,
        Some("abnormal") => SlotState::Abnormal,
        _ => match v.get("unknown").and_then(Value::as_u64) {
            Some(b) => SlotState::Unknown(b as u8),
            None => SlotState::Unknown(0x01),
        },
    }
}
