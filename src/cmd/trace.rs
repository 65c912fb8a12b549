//! `simpool trace`: prints the GSMTAP SIM traffic arriving on a UDP address, one line each;
//! optionally only some cards, and a pcap capture of what it keeps.

use std::process::ExitCode;

use clap::Args;
use simpool::gsmtap::CardFilter;

use super::CliError;

#[derive(Args)]
pub struct TraceArgs {
    /// Address to receive GSMTAP on (what `serve --gsmtap` sends to).
    #[arg(long, default_value = "127.0.0.1:4729")]
    listen: String,
    /// Only these cards: `18,256` or `1-16,18` (datagrams that name no card are left out too).
    #[arg(long, value_name = "LIST")]
    card: Option<String>,
    /// Also write what is shown into FILE as a pcap capture (Ethernet, GSMTAP over UDP), which
    /// Wireshark, tshark and pySim-trace open; written record by record.
    #[arg(long, value_name = "FILE")]
    pcap: Option<std::path::PathBuf>,
}

pub async fn run(args: TraceArgs) -> Result<ExitCode, CliError> {
    let cards = match &args.card {
        Some(list) => Some(
            CardFilter::parse(list).map_err(|e| CliError::Usage(format!("--card {list}: {e}")))?,
        ),
        None => None,
    };
    let socket = tokio::net::UdpSocket::bind(&args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let pcap: Option<Box<dyn std::io::Write + Send>> = match &args.pcap {
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| CliError::Failed(format!("--pcap {}: {e}", p.display())))?,
        ))),
        None => None,
    };
    // Said on stderr so that stdout carries only the trace.
    let addr = match socket.local_addr() {
        Ok(a) => a.to_string(),
        Err(_) => args.listen.clone(),
    };
    let mut said = format!("simpool trace: listening for GSMTAP on {addr}");
    if let Some(c) = &cards {
        said.push_str(&format!(", cards {c}"));
    }
    if let Some(p) = &args.pcap {
        said.push_str(&format!(", capture to {}", p.display()));
    }
    eprintln!("{said}");
    let mut out = std::io::stdout().lock();
    let opts = simpool::trace::Options { cards, pcap };
    match simpool::trace::listen(socket, &mut out, opts).await {
        // The reader went away (`simpool trace | head`): done.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::Failed(format!("trace: {e}"))),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
