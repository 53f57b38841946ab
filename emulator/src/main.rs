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
    #[command(subcommand)]
    command: Option<Command>,
    /// Scenario JSON file (SIGHUP re-reads it).
    #[arg(long)]
    scenario: Option<PathBuf>,
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

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Print a Kubernetes-service-account-shaped JWT signed (RS256) with --key.
    MintToken(Box<MintToken>),
    /// Print the JWKS of --key (for a scenario's `issuers[].jwks`).
    Jwks {
        /// The issuer's private key (PEM; generated there if missing).
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct MintToken {
    /// The issuer's private key (PKCS#8 or PKCS#1 PEM; generated there if missing).
    #[arg(long)]
    key: PathBuf,
    /// `iss`.
    #[arg(long)]
    issuer: String,
    /// Namespace (sub `system:serviceaccount:<ns>:<sa>`, `kubernetes.io.namespace`).
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Replace `sub`.
    #[arg(long)]
    sub: Option<String>,
    /// Audience (repeatable; default api://AzureADTokenExchange).
    #[arg(long)]
    aud: Vec<String>,
    /// Lifetime in seconds (exp = iat + ttl).
    #[arg(long, default_value_t = 3600, allow_hyphen_values = true)]
    ttl: i64,
    /// iat/nbf = now + this many seconds (negative: issued in the past; with a short --ttl,
    /// an expired token).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    issued_offset: i64,
    #[arg(long, requires = "pod_uid")]
    pod_name: Option<String>,
    #[arg(long, requires = "pod_name")]
    pod_uid: Option<String>,
    /// Extra claim NAME=JSON (repeatable; JSON null removes the claim).
    #[arg(long)]
    claim: Vec<String>,
}

fn mint(m: MintToken) -> Result<(), String> {
    use kv_emulator::issuer::{ServiceAccountToken, TestIssuer};
    let iss = TestIssuer::load_or_generate(&m.issuer, &m.key)?;
    let mut t = ServiceAccountToken::new(&m.namespace, &m.service_account)
        .ttl(m.ttl)
        .issued_offset(m.issued_offset);
    if !m.aud.is_empty() {
        let auds: Vec<&str> = m.aud.iter().map(String::as_str).collect();
        t = t.audiences(&auds);
    }
    if let Some(s) = &m.sub {
        t = t.subject(s);
    }
    if let (Some(n), Some(u)) = (&m.pod_name, &m.pod_uid) {
        t = t.pod(n, u);
    }
    for c in &m.claim {
        let (name, value) = c
            .split_once('=')
            .ok_or_else(|| format!("--claim {c:?}: use NAME=JSON"))?;
        let v: serde_json::Value = serde_json::from_str(value).map_err(|e| {
            format!("--claim {name}: value is not JSON ({e}); quote strings: '\"text\"'")
        })?;
        t = t.claim(name, v);
    }
    println!("{}", iss.mint(&t));
    Ok(())
}

fn main() {
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::MintToken(m)) => {
            if let Err(e) = mint(*m) {
                fail(&e);
            }
            return;
        }
        Some(Command::Jwks { key }) => {
            match kv_emulator::issuer::TestIssuer::load_or_generate("", &key) {
                Ok(i) => println!("{}", i.jwks()),
                Err(e) => fail(&e),
            }
            return;
        }
        None => {}
    }
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
    let Some(scenario_path) = cli.scenario.clone() else {
        return Err("--scenario FILE is required (or a subcommand: mint-token, jwks)".into());
    };
    let scenario = Scenario::from_file(&scenario_path)?;
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
        write_ready(p, &emu, None)?;
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
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("signal handler: {e}"))?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(stdin_eof, ctrl_c);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = &mut ctrl_c => break,
            _ = &mut stdin_eof => break,
            _ = hup.recv() => {
                // Runtime changes (rotate a secret, add a binding) without a restart.
                let outcome = Scenario::from_file(&scenario_path).and_then(|s| emu.reload(s));
                let error = match outcome {
                    Ok(g) => {
                        eprintln!("kv-emulator: reloaded {} (generation {g})", scenario_path.display());
                        None
                    }
                    Err(e) => {
                        eprintln!(
                            "kv-emulator: reload of {} failed, still serving generation {}: {e}",
                            scenario_path.display(),
                            emu.state().generation
                        );
                        Some(e)
                    }
                };
                if let Some(p) = &cli.ready_file {
                    if let Err(e) = write_ready(p, &emu, error.as_deref()) {
                        eprintln!("kv-emulator: {e}");
                    }
                }
            }
        }
    }
    emu.shutdown();
    eprintln!("kv-emulator: stopped");
    Ok(())
}

/// The ready file: the endpoint map, this process's pid (for `kill -HUP`), the scenario
/// generation served and the last reload error, if any.
fn write_ready(
    p: &std::path::Path,
    emu: &Emulator,
    reload_error: Option<&str>,
) -> Result<(), String> {
    let mut v = emu.endpoints.to_json();
    v["pid"] = serde_json::json!(std::process::id());
    v["generation"] = serde_json::json!(emu.state().generation);
    if let Some(e) = reload_error {
        v["reload_error"] = serde_json::json!(e);
    }
    kv_emulator::write_atomic(p, format!("{v}\n").as_bytes())
        .map_err(|e| format!("writing {}: {e}", p.display()))
}
