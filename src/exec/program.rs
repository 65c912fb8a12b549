//! One run of the user's program: placeholders, environment, its own process group, output
//! kept (in memory, bounded, and in files), a timeout and an interruption that kill the whole
//! group.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::values::CardNo;

use super::guard::Guard;

/// Most bytes of each output stream kept in memory (for `--json` and the terminal); the files
/// of `--output-dir` get everything.
pub const KEEP: usize = 4 << 20;

/// How long the output pipes may stay open after the program's group is gone (a process that
/// left the group can hold them).
const DRAIN: Duration = Duration::from_secs(2);

/// What a run's program learns about its card and reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    /// The reader's index in pcscd's reader list.
    pub reader: usize,
    pub reader_name: String,
    pub card: CardNo,
    pub iccid: Option<String>,
    pub imsi: Option<String>,
}

impl Vars {
    /// `(placeholder, environment variable, value)`; an unknown ICCID or IMSI is empty.
    fn table(&self) -> [(&'static str, &'static str, String); 5] {
        [
            ("{reader}", "SIMPOOL_READER", self.reader.to_string()),
            (
                "{reader_name}",
                "SIMPOOL_READER_NAME",
                self.reader_name.clone(),
            ),
            ("{card}", "SIMPOOL_CARD", self.card.to_string()),
            (
                "{iccid}",
                "SIMPOOL_ICCID",
                self.iccid.clone().unwrap_or_default(),
            ),
            (
                "{imsi}",
                "SIMPOOL_IMSI",
                self.imsi.clone().unwrap_or_default(),
            ),
        ]
    }

    /// `arg` with every placeholder replaced (in one pass: a value is never expanded again).
    pub fn expand(&self, arg: &str) -> String {
        let table = self.table();
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg;
        'scan: while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            for (ph, _, v) in &table {
                if let Some(after) = rest.strip_prefix(ph) {
                    out.push_str(v);
                    rest = after;
                    continue 'scan;
                }
            }
            out.push('{');
            rest = &rest[1..];
        }
        out.push_str(rest);
        out
    }

    /// The environment variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.table().into_iter().map(|(_, k, v)| (k, v)).collect()
    }
}

/// `card-018.out` and `card-018.err` in `dir`.
pub fn output_files(dir: &std::path::Path, card: CardNo) -> (PathBuf, PathBuf) {
    let stem = format!("card-{:03}", card.get());
    (
        dir.join(format!("{stem}.out")),
        dir.join(format!("{stem}.err")),
    )
}

/// How a program's run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Ran {
    pub exit: Option<i32>,
    pub seconds: f64,
    pub stdout: String,
    pub stderr: String,
    /// Why it did not end by itself with an exit code (timed out, interrupted, a signal,
    /// could not start, an output file not written).
    pub error: Option<String>,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.exit == Some(0) && self.error.is_none()
    }
}

/// Runs `argv` (expanded) with the run's environment in a process group of its own, until it
/// exits, `timeout` passes or `cancel` turns true; then kills whatever is left of its group.
pub async fn run(
    argv: &[String],
    vars: &Vars,
    timeout: Option<Duration>,
    files: Option<(PathBuf, PathBuf)>,
    mut cancel: watch::Receiver<bool>,
    guard: Option<&Guard>,
) -> Ran {
    let argv: Vec<String> = argv.iter().map(|a| vars.expand(a)).collect();
    let started = Instant::now();
    let failed = |error: String| Ran {
        exit: None,
        seconds: 0.0,
        stdout: String::new(),
        stderr: String::new(),
        error: Some(error),
    };
    let Some((prog, args)) = argv.split_first() else {
        return failed("no program given".into());
    };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .envs(vars.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: a timeout or Ctrl-C ends the program and everything it started, and the
        // terminal's Ctrl-C reaches exec alone, which then ends the runs in order.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run {prog}: {e}")),
    };
    let pgid = child.id().map(|p| Pid::from_raw(p as i32));
    if let (Some(g), Some(p)) = (guard, pgid) {
        g.group(p.as_raw());
    }
    let (out_file, err_file) = match files {
        Some((o, e)) => (Some(o), Some(e)),
        None => (None, None),
    };
    let out = tokio::spawn(collect(child.stdout.take(), out_file));
    let err = tokio::spawn(collect(child.stderr.take(), err_file));
    let kill_group = || {
        if let Some(g) = pgid {
            // ESRCH: nothing left of the group.
            let _ = killpg(g, Signal::SIGKILL);
        }
    };
    let mut error = None;
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let status = tokio::select! {
        s = child.wait() => s,
        () = deadline => {
            kill_group();
            error = Some(format!(
                "timed out after {} (its process group was killed)",
                crate::exec::secs_text(timeout.unwrap_or_default())
            ));
            child.wait().await
        }
        () = async { while !*cancel.borrow_and_update() {
                if cancel.changed().await.is_err() { std::future::pending::<()>().await }
            } } => {
            kill_group();
            error = Some("interrupted (its process group was killed)".into());
            child.wait().await
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    // What the program left running in its group goes too: the card is the next run's.
    kill_group();
    if let (Some(g), Some(p)) = (guard, pgid) {
        g.ended(p.as_raw());
    }
    let exit = match &status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            if error.is_none() {
                if let Some(sig) = s.signal() {
                    error = Some(format!("killed by signal {sig}"));
                }
            }
            s.code()
        }
        Err(e) => {
            error.get_or_insert_with(|| format!("waiting for the program: {e}"));
            None
        }
    };
    let drained = |j: Result<Result<String, String>, _>| match j {
        Ok(r) => r,
        Err(e) => Err(format!("reading its output: {e}")),
    };
    let (stdout, stderr) =
        match tokio::time::timeout(DRAIN, async { (drained(out.await), drained(err.await)) }).await
        {
            Ok(r) => r,
            Err(_) => (
                Err("its output stayed open after it ended (a process outside its group?)".into()),
                Err(String::new()),
            ),
        };
    let mut text = |r: Result<String, String>| match r {
        Ok(s) => s,
        Err(e) => {
            if !e.is_empty() {
                error.get_or_insert(e);
            }
            String::new()
        }
    };
    let (stdout, stderr) = (text(stdout), text(stderr));
    Ran {
        exit,
        seconds,
        stdout,
        stderr,
        error,
    }
}

/// Reads a stream to its end: into a file if one is given (all of it), and into memory up to
/// [`KEEP`] bytes (then a note how much more there was).
async fn collect(
    stream: Option<impl AsyncRead + Unpin>,
    path: Option<PathBuf>,
) -> Result<String, String> {
    let Some(mut stream) = stream else {
        return Ok(String::new());
    };
    let mut file = match &path {
        Some(p) => Some(
            tokio::fs::File::create(p)
                .await
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    let mut kept = Vec::new();
    let mut more = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    let mut write_error = None;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(format!("reading its output: {e}")),
        };
        let chunk = &buf[..n];
        if let (Some(f), Some(p)) = (&mut file, &path) {
            if let Err(e) = f.write_all(chunk).await {
                // Go on reading: a program blocked on a full pipe would never end.
                write_error.get_or_insert_with(|| format!("{}: {e}", p.display()));
            }
        }
        let room = KEEP.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..room.min(n)]);
        more += n.saturating_sub(room);
    }
    if let Some(f) = &mut file {
        let _ = f.flush().await;
    }
    if let Some(e) = write_error {
        return Err(e);
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if more > 0 {
        s.push_str(&format!(
            "\n[simpool exec: {more} more bytes not kept in memory]\n"
        ));
    }
    Ok(s)
}
