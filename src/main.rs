//! `kv`: wiring only. Parse, run, print exactly one reply, exit.

use keyvault_flexvolume::{cmd, reply::Reply};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    // kv reports errors by catalogue code, never with a library backtrace. With RUST_BACKTRACE
    // set (a developer's shell, a debugging operator), the Azure SDK would capture one for every
    // header it looks up and does not find, several per Key Vault request: most of a mount's CPU.
    // Set before any thread exists; panics still follow RUST_BACKTRACE.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // The environment is read once, here, before anything else runs.
    keyvault_flexvolume::env::get();
    if cmd::is_flexvolume_call(&args) {
        // kubelet parses stdout and stderr combined: nothing may ever reach stderr.
        silence_stderr();
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            // The panic payload may quote data; only the location is reported.
            let err = keyvault_flexvolume::error::Error::new(
                keyvault_flexvolume::error::Code::Internal,
                format!("kv hit a bug{at}; please report it with the node's kv log"),
            );
            Reply::failure(&err).emit();
            // Exit 0 even now: on a non-zero exit kubelet logs the whole argv, secrets included.
            std::process::exit(0);
        }));
    }
    match cmd::run(args) {
        cmd::Outcome::Reply(reply) => {
            reply.emit();
            // 0 for Failure too: kubelet still fails the call, and does not log argv.
            ExitCode::SUCCESS
        }
        cmd::Outcome::Text(text, code) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::from(code)
        }
    }
}

fn silence_stderr() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}
