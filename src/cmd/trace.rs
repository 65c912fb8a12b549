//! `simpool trace`: prints the GSMTAP SIM traffic arriving on a UDP address, one line each.

use std::process::ExitCode;

use clap::Args;

use super::CliError;

#[derive(Args)]
pub struct TraceArgs {
    /// Address to receive GSMTAP on (what `serve --gsmtap` sends to).
    #[arg(long, default_value = "127.0.0.1:4729")]
    listen: String,
}

pub async fn run(args: TraceArgs) -> Result<ExitCode, CliError> {
    let socket = tokio::net::UdpSocket::bind(&args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    // Said on stderr so that stdout carries only the trace.
    match socket.local_addr() {
        Ok(a) => eprintln!("simpool trace: listening for GSMTAP on {a}"),
        Err(_) => eprintln!("simpool trace: listening for GSMTAP on {}", args.listen),
    }
    let mut out = std::io::stdout().lock();
    match simpool::trace::listen(socket, &mut out).await {
        // The reader went away (`simpool trace | head`): done.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::Usage(format!("trace: {e}"))),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
