//! `kv fetch`: placeholder.

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {}

/// Runs the command.
pub fn run(_args: FetchArgs) -> (String, u8) {
    ("not implemented yet\n".into(), 1)
}
