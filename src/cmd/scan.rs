//! `simpool scan`: number, state, ATR, ICCID and IMSI of every inserted card.

use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use simpool::inventory;

use super::{cell, CliError, PoolArgs, Via};

pub async fn run(pool: PoolArgs, json: bool) -> Result<ExitCode, CliError> {
    let rows: Vec<Value> = match pool.via().await? {
        Via::Daemon(c) => {
            let v = c
                .call(Method::POST, "/api/v1/scan", None, Duration::from_secs(300))
                .await?;
            v.as_array().cloned().unwrap_or_default()
        }
        Via::Pool(p) => {
            let deadline = Duration::from_millis(pool.reply_timeout_ms * 5);
            let reports = inventory::scan(&p.link, deadline).await?;
            reports
                .iter()
                .filter_map(|r| serde_json::to_value(r).ok())
                .collect()
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        println!(
            "{:>4}  {:<9} {:<20} {:<15}  ATR",
            "card", "state", "ICCID", "IMSI"
        );
        for r in &rows {
            let state = cell(&r["state"]);
            match r.get("error").and_then(Value::as_str) {
                Some(e) => println!("{:>4}  {state:<9} error: {e}", cell(&r["card"])),
                None => {
                    let held = match r.get("holder").and_then(Value::as_str) {
                        Some(h) => format!("  (held by {h}; as last read)"),
                        None => String::new(),
                    };
                    println!(
                        "{:>4}  {state:<9} {:<20} {:<15}  {}{held}",
                        cell(&r["card"]),
                        cell(&r["iccid"]),
                        cell(&r["imsi"]),
                        cell(&r["atr"]),
                    )
                }
            }
        }
    }
    let failed = rows
        .iter()
        .filter(|r| r.get("error").is_some_and(|e| !e.is_null()))
        .count();
    Ok(if failed > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
