//! `kv logs`: placeholder.

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {}

/// Runs the command.
pub fn run(_args: LogsArgs) -> (String, u8) {
    ("not implemented yet\n".into(), 1)
}
