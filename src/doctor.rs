//! `kv doctor`: placeholder.

/// Arguments.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {}

/// Runs the command.
pub fn run(_args: DoctorArgs) -> (String, u8) {
    ("not implemented yet\n".into(), 1)
}
