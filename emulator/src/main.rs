//! `kv-emulator` binary: see `emulator/README.md`.

use clap::Parser;
use kv_emulator::{BindMode, Emulator, Options, Scenario};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kv-emulator",
    about = "Azure IMDS / NMI / AAD / Key Vault emulator for kv tests"
)]
struct Cli {
    /// Scenario JSON file.
    #[arg(long)]
    scenario: PathBuf,
    /// Write the TLS CA certificate (PEM) here.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Append one JSON line per request here.
    #[arg(long)]
    request_log: Option<PathBuf>,
    /// Written (atomically, with the endpoint map) once every listener is bound.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Serve on 127.0.0.1 ephemeral ports and print the endpoint map as one JSON line.
    #[arg(long)]
    bind_local: bool,
    /// Cache generated RSA keys here (makes restarts fast).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Use this CA certificate (PEM) for the TLS leaf instead of generating one.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Print the host names the scenario needs resolved to 127.0.0.1 (one a line) and exit.
    #[arg(long)]
    print_hosts: bool,
    /// Exit when standard input reaches end of file (the parent died or closed it).
    #[arg(long)]
    exit_on_stdin_eof: bool,
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("tokio runtime: {e}")),
    };
    if let Err(e) = rt.block_on(run(cli)) {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("kv-emulator: {msg}");
    std::process::exit(1);
}

async fn run(cli: Cli) -> Result<(), String> {
    let scenario = Scenario::from_file(&cli.scenario)?;
    if cli.print_hosts {
        for h in scenario.host_names() {
            println!("{h}");
        }
        return Ok(());
    }
    let ca = match (&cli.ca_cert, &cli.ca_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read_to_string(c).map_err(|e| format!("reading {}: {e}", c.display()))?,
            std::fs::read_to_string(k).map_err(|e| format!("reading {}: {e}", k.display()))?,
        )),
        _ => None,
    };
    let emu = Emulator::start(Options {
        scenario,
        bind: if cli.bind_local {
            BindMode::Local
        } else {
            BindMode::Real
        },
        request_log: cli.request_log.clone(),
        cache_dir: cli.cache_dir.clone(),
        ca,
    })
    .await?;
    if let Some(p) = &cli.ca_out {
        kv_emulator::write_atomic(p, emu.ca_pem.as_bytes())
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    let map = emu.endpoints.to_json().to_string();
    if let Some(p) = &cli.ready_file {
        kv_emulator::write_atomic(p, format!("{map}\n").as_bytes())
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    if cli.bind_local {
        println!("{map}");
    }
    eprintln!("kv-emulator: ready {map}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("signal handler: {e}"))?;
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    if cli.exit_on_stdin_eof {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = eof_tx.send(());
        });
    }
    let stdin_eof = async move {
        if cli.exit_on_stdin_eof {
            let _ = eof_rx.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
        _ = stdin_eof => {},
    }
    emu.shutdown();
    eprintln!("kv-emulator: stopped");
    Ok(())
}
