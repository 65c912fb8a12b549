//! Which daemon a client command talks to, and `simpool status --all-instances`.
//!
//! A host runs one daemon per pool: `simpool.service` reads `/etc/simpool/simpool.toml`, the
//! template `simpool@NAME.service` reads `/etc/simpool/NAME.toml` (driver/systemd). A command
//! addresses one of them per call: `--control HOST:PORT`, or `--instance NAME`, which is the
//! control address (and token file) NAME.toml names; the same from the environment
//! (`SIMPOOL_CONTROL`, `SIMPOOL_INSTANCE`), where giving both is refused. The directory is
//! `SIMPOOL_CONFIG_DIR` when set (tests, a packaging of one's own), else `/etc/simpool`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use simpool::config::{FileConfig, DEFAULT_CONTROL};
use simpool::control::client::{Control, Probe};
use simpool::rows::InstanceRow;

use super::{out, out_json, CliError, EXIT_PARTIAL};

/// The configuration directory of the instances.
pub fn config_dir() -> PathBuf {
    match std::env::var_os("SIMPOOL_CONFIG_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/etc/simpool"),
    }
}

/// Where a command finds its daemon: the control address, and the token file the instance's
/// configuration names (if it was an instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: String,
    pub token: Option<PathBuf>,
    pub instance: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The daemon a command addresses: flag > environment > default, `--control` and
/// `--instance` (clap refuses both flags at once; both variables at once are refused here).
pub fn target(control: Option<&str>, instance: Option<&str>) -> Result<Target, CliError> {
    let direct = |addr: String| Target {
        addr,
        token: None,
        instance: None,
    };
    match (control, instance) {
        (Some(c), _) => return Ok(direct(c.to_string())),
        (None, Some(i)) => return of_instance(i),
        (None, None) => {}
    }
    match (env("SIMPOOL_CONTROL"), env("SIMPOOL_INSTANCE")) {
        (Some(c), Some(i)) => Err(CliError::Usage(format!(
            "SIMPOOL_CONTROL={c} and SIMPOOL_INSTANCE={i} both name a daemon: unset one (or \
             give --control or --instance)"
        ))),
        (Some(c), None) => Ok(direct(c)),
        (None, Some(i)) => of_instance(&i),
        (None, None) => Ok(direct(DEFAULT_CONTROL.into())),
    }
}

/// The configuration file of instance `name`.
pub fn config_of(name: &str) -> Result<PathBuf, CliError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c));
    if !ok {
        return Err(CliError::Usage(format!(
            "instance {name:?}: a name as in simpool@NAME.service (letters, digits, - _ . @ :)"
        )));
    }
    Ok(config_dir().join(format!("{name}.toml")))
}

/// Instance `name`'s control address and token file, from its configuration.
pub fn of_instance(name: &str) -> Result<Target, CliError> {
    let file = config_of(name)?;
    let cfg = FileConfig::load(&file).map_err(|e| {
        CliError::Usage(format!(
            "instance {name}: {e} (instances are the NAME.toml files in {}; \
             `simpool status --all-instances` lists them)",
            config_dir().display()
        ))
    })?;
    let addr = control_of(&cfg);
    if addr == "off" {
        return Err(CliError::Usage(format!(
            "instance {name}: its control API is off (control = \"off\" in {})",
            file.display()
        )));
    }
    Ok(Target {
        addr,
        token: cfg.control_token,
        instance: Some(name.to_string()),
    })
}

fn control_of(cfg: &FileConfig) -> String {
    cfg.control
        .clone()
        .unwrap_or_else(|| DEFAULT_CONTROL.into())
}

/// Reads a token file; `whose` says where its name came from, for the error.
pub fn read_token(p: &Path, whose: Option<&str>) -> Result<String, CliError> {
    std::fs::read_to_string(p)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            let hint = match whose {
                Some(i) => format!(
                    " (the token file of instance {i}: read it as a member of its group, e.g. \
                     simpool, or give --control-token)"
                ),
                None => String::new(),
            };
            CliError::Usage(format!("cannot read {}: {e}{hint}", p.display()))
        })
}

/// The instances' configurations in the directory: (name, file), sorted by name.
fn instance_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, CliError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CliError::Failed(format!("cannot list {}: {e}", dir.display())))?;
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
        .collect();
    out.sort();
    Ok(out)
}

/// What one instance's daemon says, or why it says nothing.
async fn row_of(name: String, file: PathBuf, cfg: FileConfig) -> InstanceRow {
    let control = control_of(&cfg);
    let mut row = InstanceRow {
        instance: name.clone(),
        config: file.display().to_string(),
        control: (control != "off").then(|| control.clone()),
        pool: cfg.pool.as_ref().map(ToString::to_string),
        bank_id: cfg.remsim.as_ref().and_then(|r| r.bank_id),
        reachable: false,
        link: None,
        error: None,
    };
    if control == "off" {
        row.error = Some("control API off".into());
        return row;
    }
    let token = match &cfg.control_token {
        Some(p) => match read_token(p, Some(&name)) {
            Ok(t) => Some(t),
            Err(e) => {
                row.error = Some(e.to_string());
                return row;
            }
        },
        None => None,
    };
    let c = Control {
        addr: control,
        token,
        socket: None,
    };
    match c.probe().await {
        Probe::Daemon(h) => {
            row.reachable = true;
            // What the daemon runs on (the file may have been edited since it started).
            row.pool = Some(h.pool);
            row.link = Some(h.link);
            row.error = h.cause;
        }
        Probe::NeedsToken(e) => {
            row.reachable = true;
            row.error = Some(e.to_string());
        }
        Probe::Nothing(cause) => row.error = Some(cause),
    }
    row
}

/// `simpool status --all-instances`: each local instance's pool, bank id and state.
pub async fn all(json_out: bool) -> Result<ExitCode, CliError> {
    let dir = config_dir();
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = Vec::new();
    for (name, file) in instance_files(&dir)? {
        match FileConfig::load(&file) {
            Ok(cfg) => {
                names.push(name.clone());
                tasks.spawn(row_of(name, file, cfg));
            }
            // A cards file or anything else that is no daemon's configuration.
            Err(e) => eprintln!("simpool: warning: {e}: not an instance's configuration; left out"),
        }
    }
    if names.is_empty() {
        return Err(CliError::Failed(format!(
            "no instance configurations (NAME.toml) in {}",
            dir.display()
        )));
    }
    let mut rows: Vec<InstanceRow> = tasks.join_all().await;
    rows.sort_by(|a, b| a.instance.cmp(&b.instance));
    if json_out {
        out_json(&rows)?;
    } else {
        let w = rows
            .iter()
            .map(|r| r.instance.len())
            .max()
            .unwrap_or(0)
            .max(8);
        out(format!(
            "{:<w$}  {:<21} {:<24} {:>4}  state",
            "instance", "control", "pool", "bank"
        ))?;
        for r in &rows {
            out(format!(
                "{:<w$}  {:<21} {:<24} {:>4}  {}",
                r.instance,
                r.control.as_deref().unwrap_or("off"),
                r.pool.as_deref().unwrap_or("(not set)"),
                r.bank_id.map_or("-".into(), |b| b.to_string()),
                state_text(r),
            ))?;
        }
    }
    Ok(if rows.iter().all(|r| r.link.is_some()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}

fn state_text(r: &InstanceRow) -> String {
    match (&r.link, &r.error) {
        (Some(l), None) => format!("running, pool link {l}"),
        (Some(l), Some(e)) => format!("running, pool link {l}: {e}"),
        (None, Some(e)) if r.reachable => format!("running, {e}"),
        (None, Some(e)) => format!("not reachable: {e}"),
        (None, None) => "not reachable".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_cannot_leave_the_directory() {
        for bad in ["", ".", "..", "../x", "a/b", "a b"] {
            assert!(config_of(bad).is_err(), "{bad:?}");
        }
        assert!(config_of("pool-b").unwrap().ends_with("pool-b.toml"));
    }
}
