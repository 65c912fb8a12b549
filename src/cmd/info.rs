//! `simpool info`: the pool's ID and firmware version.

use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;

use simpool::rows::{InfoRow, PoolInfo};

use super::{out, out_json, CliError, PoolArgs, Via};

pub async fn run(pool: PoolArgs, json_out: bool) -> Result<ExitCode, CliError> {
    let info = match pool.via().await? {
        Via::Daemon(c) => {
            let p: PoolInfo = c
                .call(
                    Method::GET,
                    "/api/v1/pool",
                    None::<&()>,
                    Duration::from_secs(5),
                )
                .await?;
            match (p.id, p.version) {
                (Some(id), Some(version)) => InfoRow { id, version },
                _ => {
                    return Err(CliError::Card(format!(
                        "the daemon's pool {} does not answer (link {})",
                        p.address, p.link
                    )))
                }
            }
        }
        Via::Pool(p) => InfoRow {
            id: hex::encode_upper(p.link().id().await?),
            version: p.link().version().await?,
        },
    };
    if json_out {
        out_json(&info)?;
    } else {
        out(format!("ID       {}", info.id))?;
        out(format!("version  {}", info.version))?;
    }
    Ok(ExitCode::SUCCESS)
}
