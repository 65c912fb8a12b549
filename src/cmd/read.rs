//! `simpool read`: ATR, ICCID and IMSI through PC/SC, as any application sees them.

use std::process::ExitCode;
use std::time::Duration;

use simpool::client;

use super::{out, out_json, CliError, EXIT_PARTIAL};

pub async fn run(filter: Option<String>, json_out: bool, wait: u64) -> Result<ExitCode, CliError> {
    // pcsc calls block: keep them off the async workers.
    let (all, reports) = tokio::task::spawn_blocking(move || -> Result<_, CliError> {
        let ctx = client::context().map_err(|e| CliError::Card(e.to_string()))?;
        let listed = client::readers(&ctx).map_err(|e| CliError::Card(e.to_string()))?;
        let all: Vec<String> = listed
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        let names: Vec<_> = listed
            .into_iter()
            .filter(|n| {
                filter
                    .as_deref()
                    .is_none_or(|f| n.to_string_lossy().contains(f))
            })
            .collect();
        if wait > 0 && !names.is_empty() {
            client::wait_for_cards(&ctx, &names, Duration::from_secs(wait))
                .map_err(|e| CliError::Card(e.to_string()))?;
        }
        let reports: Vec<_> = names.iter().map(|n| client::report(&ctx, n)).collect();
        Ok((all, (filter, reports)))
    })
    .await
    .map_err(|e| CliError::Failed(e.to_string()))??;
    let (filter, reports) = reports;
    if reports.is_empty() {
        return Err(CliError::Card(match filter {
            Some(f) if !all.is_empty() => format!(
                "no reader matches {f:?}; the readers are: {}",
                all.iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "no PC/SC readers (is pcscd running with the vpcd readers? for a \
                          private one set PCSCLITE_CSOCK_NAME)"
                .into(),
        }));
    }
    if json_out {
        out_json(&reports)?;
    } else {
        for r in &reports {
            out(&r.reader)?;
            match &r.error {
                Some(e) => out(format!("  error  {e}"))?,
                None => {
                    out(format!("  ATR    {}", super::cell(r.atr.as_ref())))?;
                    out(format!("  ICCID  {}", super::cell(r.iccid.as_ref())))?;
                    out(format!("  IMSI   {}", super::cell(r.imsi.as_ref())))?;
                }
            }
        }
    }
    Ok(if reports.iter().any(|r| r.error.is_some()) {
        ExitCode::from(EXIT_PARTIAL)
    } else {
        ExitCode::SUCCESS
    })
}
