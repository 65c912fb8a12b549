//! `simpool info`: the pool's ID and firmware version.

use std::process::ExitCode;
use std::time::Duration;

use hyper::Method;

use super::{CliError, PoolArgs, Via};

pub async fn run(pool: PoolArgs) -> Result<ExitCode, CliError> {
    let (id, version) = match pool.via().await? {
        Via::Daemon(c) => {
            let v = c
                .call(Method::GET, "/api/v1/pool", None, Duration::from_secs(5))
                .await?;
            match (v["id"].as_str(), v["version"].as_str()) {
                (Some(id), Some(ver)) => (id.to_string(), ver.to_string()),
                _ => {
                    return Err(CliError::Card(format!(
                        "the daemon's pool {} does not answer (link {})",
                        super::cell(&v["address"]),
                        super::cell(&v["link"])
                    )))
                }
            }
        }
        Via::Pool(p) => (
            hex::encode_upper(p.link.id().await?),
            p.link.version().await?,
        ),
    };
    println!("ID       {id}");
    println!("version  {version}");
    Ok(ExitCode::SUCCESS)
}
