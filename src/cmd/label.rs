//! `simpool label CARD [KEY=VALUE…] [--remove KEY]…`: a card's labels, kept by the running
//! daemon in its history database (`PUT /api/v1/cards/{n}/labels`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use hyper::Method;

use simpool::history::{check_key, Label, Labels};
use simpool::rows::LabelsRequest;
use simpool::values::CardNo;

use super::{out, out_json, CliError, ControlArgs};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Card number 1-256.
    pub card: CardNo,
    /// Labels to set (a value may contain `=`: it splits at the first). None and no --remove:
    /// print the card's labels.
    #[arg(value_name = "KEY=VALUE")]
    pub labels: Vec<Label>,
    /// Remove this label (repeatable; done before the settings).
    #[arg(long, value_name = "KEY", value_parser = parse_key)]
    pub remove: Vec<String>,
    /// Print JSON: the card's labels after the change, {"KEY": "VALUE", ...}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

fn parse_key(s: &str) -> Result<String, String> {
    check_key(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// Labels as people read them: `site=lab, slot=a` (`-` for none).
pub fn text(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Labels after a table row: `  [site=lab]`, nothing when there are none.
pub fn suffix(labels: &Labels) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("  [{}]", text(labels))
    }
}

pub async fn run(args: LabelArgs) -> Result<ExitCode, CliError> {
    let c = args.control.client()?;
    let path = format!("/api/v1/cards/{}/labels", args.card);
    let labels: Labels = if args.labels.is_empty() && args.remove.is_empty() {
        c.call(Method::GET, &path, None::<&()>, CALL_TIMEOUT)
            .await?
    } else {
        let body = LabelsRequest {
            set: args
                .labels
                .iter()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect(),
            remove: args.remove.clone(),
            replace: false,
        };
        c.call(Method::PUT, &path, Some(&body), CALL_TIMEOUT)
            .await?
    };
    if args.json {
        out_json(&labels)?;
    } else {
        out(format!("card {}: {}", args.card, text(&labels)))?;
    }
    Ok(ExitCode::SUCCESS)
}
