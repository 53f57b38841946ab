//! `kv-emulator`: an Azure emulator for testing the `kv` FlexVolume driver.
//!
//! One process serves, over real HTTP/TLS:
//! - IMDS (`169.254.169.254:80`, managed identity tokens),
//! - NMI (`127.0.0.1:2579`, the aad-pod-identity host token endpoint),
//! - AAD (`login.microsoftonline.com` and the other clouds' authority hosts, HTTPS),
//! - Key Vault (`<vault>.vault.azure.net` and the other clouds' suffixes, HTTPS),
//!
//! driven by a JSON scenario (see `emulator/README.md`). The real addresses are only served
//! inside a private network namespace ([`netns`]); [`server::Emulator::start`] with
//! [`server::BindMode::Local`] serves everything on loopback ephemeral ports instead.

pub mod aad;
pub mod exchange;
pub mod federated;
pub mod imds;
pub mod issuer;
pub mod keyvault;
pub mod limits;
pub mod material;
pub mod netns;
pub mod nmi;
pub mod scenario;
pub mod server;
pub mod state;
pub mod token;
pub mod util;

pub use scenario::Scenario;
pub use server::{BindMode, Emulator, Endpoints, Options};

/// Write `data` to `path` atomically (temp file + rename).
pub fn write_atomic(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}
