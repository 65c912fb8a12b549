//! `simpool read`: ATR, ICCID and IMSI through PC/SC, as any application sees them.

use std::process::ExitCode;
use std::time::Duration;

use simpool::client;

use super::CliError;

pub async fn run(filter: Option<String>, json: bool, wait: u64) -> Result<ExitCode, CliError> {
    // pcsc calls block: keep them off the async workers.
    let reports = tokio::task::spawn_blocking(move || -> Result<_, client::ClientError> {
        let ctx = client::context()?;
        let names: Vec<_> = client::readers(&ctx)?
            .into_iter()
            .filter(|n| {
                filter
                    .as_deref()
                    .is_none_or(|f| n.to_string_lossy().contains(f))
            })
            .collect();
        if wait > 0 {
            client::wait_for_cards(&ctx, &names, Duration::from_secs(wait))?;
        }
        Ok(names
            .iter()
            .map(|n| client::report(&ctx, n))
            .collect::<Vec<_>>())
    })
    .await
    .map_err(|e| CliError::Card(e.to_string()))?
    .map_err(|e| CliError::Card(e.to_string()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
    } else if reports.is_empty() {
        println!("no PC/SC readers");
    } else {
        for r in &reports {
            println!("{}", r.reader);
            match &r.error {
                Some(e) => println!("  error  {e}"),
                None => {
                    println!("  ATR    {}", r.atr.as_deref().unwrap_or("-"));
                    println!("  ICCID  {}", r.iccid.as_deref().unwrap_or("-"));
                    println!("  IMSI   {}", r.imsi.as_deref().unwrap_or("-"));
                }
            }
        }
    }
    let ok = !reports.is_empty() && reports.iter().any(|r| r.error.is_none());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
