//! The shipped binary: static, and `kv init` works with nothing else on the node (an empty
//! chroot holding only the binary, as in kube-controller-manager's distroless container).

use std::path::PathBuf;
use std::process::Command;

fn release_binary() -> PathBuf {
    let path = std::env::var_os("KV_RELEASE_BIN")
        .map(PathBuf::from)
        .expect(
            "KV_RELEASE_BIN is not set: run ./scripts/test, which builds the static binary first",
        );
    assert!(
        path.exists(),
        "{} does not exist: run ./scripts/build-release",
        path.display()
    );
    path
}

#[test]
fn release_binary_is_statically_linked() {
    let out = Command::new("ldd").arg(release_binary()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("statically linked") || text.contains("not a dynamic executable"),
        "ldd says: {text}"
    );
}

#[test]
fn init_runs_in_an_empty_chroot() {
    let root = std::env::temp_dir().join(format!("kv-chroot-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(release_binary(), root.join("kv")).unwrap();
    let out = Command::new("chroot")
        .arg(&root)
        .arg("/kv")
        .arg("init")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(out.status.success(), "{:?}", out);
    assert!(out.stderr.is_empty());
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["status"], "Success");
    assert_eq!(reply["capabilities"]["attach"], false);
}

#[test]
fn version_names_the_revision() {
    let out = Command::new(release_binary())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("kv {} (", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(!text.contains("unknown revision"), "{text}");
}
