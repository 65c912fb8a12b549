//! `simpool readers`, `bind`, `unbind`: the running daemon's readers.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;
use serde_json::{json, Value};

use super::{cell, CliError, ControlArgs};

/// A bind or unbind waits for the card to show (up to 5 s in the daemon) and a little more.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Card number 1-256 as on the front panel.
    #[arg(long)]
    pub card: Option<u16>,
    /// The card with this ICCID (wherever it is inserted).
    #[arg(long)]
    pub iccid: Option<String>,
    /// The card with this IMSI.
    #[arg(long)]
    pub imsi: Option<String>,
}

pub async fn readers(control: ControlArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let v = c
        .call(Method::GET, "/api/v1/readers", None, CALL_TIMEOUT)
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<20} {:<16} {:<8} {:<28} {:<20} IMSI",
        "reader", "PC/SC name", "vpcd", "state", "binding", "ICCID"
    );
    for r in v.as_array().into_iter().flatten() {
        print_reader(r);
    }
    Ok(ExitCode::SUCCESS)
}

fn binding_text(r: &Value) -> String {
    let b = &r["binding"];
    let base = if let Some(n) = b.get("card") {
        format!("card {n}")
    } else if let Some(s) = b.get("iccid").and_then(Value::as_str) {
        format!("ICCID {s}")
    } else if let Some(s) = b.get("imsi").and_then(Value::as_str) {
        format!("IMSI {s}")
    } else {
        return "-".into();
    };
    match (&r["card"], b.get("card")) {
        (Value::Number(n), None) => format!("{base} (card {n})"),
        _ => base,
    }
}

fn print_reader(r: &Value) {
    println!(
        "{:>6}  {:<20} {:<16} {:<8} {:<28} {:<20} {}",
        cell(&r["reader"]),
        cell(&r["name"]),
        cell(&r["vpcd"]),
        cell(&r["state"]),
        binding_text(r),
        cell(&r["iccid"]),
        cell(&r["imsi"]),
    );
    if let Some(d) = r["detail"].as_str() {
        println!("{:>6}  ({d})", "");
    }
}

pub async fn bind(
    control: ControlArgs,
    reader: String,
    target: Target,
    json_out: bool,
) -> Result<ExitCode, CliError> {
    let body = match (target.card, target.iccid, target.imsi) {
        (Some(n), _, _) => json!({ "card": n }),
        (_, Some(s), _) => json!({ "iccid": s }),
        (_, _, Some(s)) => json!({ "imsi": s }),
        _ => return Err(CliError::Usage("give --card, --iccid or --imsi".into())),
    };
    let c = control.client()?;
    let v = c
        .call(
            Method::PUT,
            &format!("/api/v1/readers/{reader}"),
            Some(&body),
            CALL_TIMEOUT,
        )
        .await?;
    show(&v, json_out);
    Ok(ExitCode::SUCCESS)
}

pub async fn unbind(
    control: ControlArgs,
    reader: String,
    json_out: bool,
) -> Result<ExitCode, CliError> {
    let c = control.client()?;
    let v = c
        .call(
            Method::DELETE,
            &format!("/api/v1/readers/{reader}"),
            None,
            CALL_TIMEOUT,
        )
        .await?;
    show(&v, json_out);
    Ok(ExitCode::SUCCESS)
}

fn show(v: &Value, json_out: bool) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print_reader(v);
    }
}
