//! The node state's properties as other kv processes and users see them: files and modes on
//! disk, which caller gets which token, and waits measured across threads and real processes
//! (the test binary re-runs itself as the child, see [`child_process`]).

use super::*;
use crate::cloud::{Cloud, CustomCloud};
use crate::error::Code;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// A fresh state root under the temp dir, removed afterwards.
struct Root {
    base: PathBuf,
    state: NodeState,
}

impl Root {
    fn new(test: &str) -> Root {
        let base = std::env::temp_dir().join(format!("kv-nodestate-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let state = NodeState::at(base.join("kv"));
        Root { base, state }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.state.root().join(rel)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn public() -> Cloud {
    Cloud::resolve("AzurePublicCloud", None).unwrap()
}

const VAULT: &str = "https://vault.azure.net";

fn sp<'a>(cloud: &'a Cloud, credential: &'a [u8]) -> Identity<'a> {
    Identity::ServicePrincipal {
        cloud,
        resource: VAULT,
        authority: "https://login.microsoftonline.com",
        tenant: "tenant-1",
        client_id: "app-1",
        credential,
    }
}

fn node<'a>(cloud: &'a Cloud, resource: &'a str, id: NodeId<'a>) -> Identity<'a> {
    Identity::NodeIdentity {
        cloud,
        resource,
        id,
    }
}

fn pod<'a>(cloud: &'a Cloud, name: &'a str, uid: &'a str) -> Identity<'a> {
    Identity::PodIdentity {
        cloud,
        resource: VAULT,
        nmi: "127.0.0.1:2579",
        namespace: "default",
        name,
        uid,
    }
}

fn workload<'a>(cloud: &'a Cloud, subject: &'a str) -> Identity<'a> {
    Identity::WorkloadIdentity {
        cloud,
        resource: VAULT,
        tenant: "tenant-1",
        client_id: "app-1",
        issuer: "https://oidc.example",
        subject,
    }
}

fn token(value: &str, valid_for: i64) -> CachedToken {
    CachedToken {
        token: crate::secret::Secret::new(value.into()),
        expires_on: unix_now().as_secs() as i64 + valid_for,
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn cache_files_are_private_hash_named_and_hold_no_credential() {
    let root = Root::new("private");
    // A root created looser than 0700 (umask, an old install) is tightened.
    std::fs::create_dir(root.state.root()).unwrap();
    std::fs::set_permissions(root.state.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&sp(&cloud, b"s3cret-credential")).unwrap();
    cache.put(&key, &token("tok-A", 3600)).unwrap();

    assert_eq!(mode(root.state.root()), 0o700);
    assert_eq!(mode(&root.path("tokens")), 0o700);
    assert_eq!(
        mode(&root.path(&format!("tokens/{}", key.file_name()))),
        0o600
    );
    assert_eq!(mode(&root.path("tokens/.key")), 0o600);
    assert_eq!(std::fs::read(root.path("tokens/.key")).unwrap().len(), 32);
    for name in names_in(&root.path("tokens")) {
        assert!(
            name == ".key" || (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())),
            "unexpected name {name}"
        );
        let text =
            String::from_utf8_lossy(&std::fs::read(root.path("tokens").join(&name)).unwrap())
                .into_owned();
        assert!(
            !text.contains("s3cret-credential"),
            "{name} holds the credential"
        );
    }
    assert_eq!(
        cache
            .get(&key, tokens::DEFAULT_MARGIN)
            .unwrap()
            .token
            .expose(),
        "tok-A"
    );
    // Nothing secret in Debug output.
    let debug = format!("{:?} {:?}", cache.get(&key, Duration::ZERO), key);
    assert!(
        !debug.contains("tok-A") && !debug.contains("s3cret"),
        "{debug}"
    );
}

#[test]
fn a_different_service_principal_credential_never_gets_the_cached_token() {
    let root = Root::new("sp");
    let cloud = public();
    let cache = root.state.tokens().unwrap();
    let right = cache.key(&sp(&cloud, b"right secret")).unwrap();
    cache.put(&right, &token("tok-right", 3600)).unwrap();

    let wrong = cache.key(&sp(&cloud, b"wrong secret")).unwrap();
    assert_ne!(wrong.file_name(), right.file_name());
    assert!(cache.get(&wrong, Duration::ZERO).is_none());
    assert!(cache
        .get(&cache.key(&sp(&cloud, b"")).unwrap(), Duration::ZERO)
        .is_none());

    // Another process (another open of the cache) with the right secret hits.
    let again = root.state.tokens().unwrap();
    let right_again = again.key(&sp(&cloud, b"right secret")).unwrap();
    assert_eq!(right_again, right);
    assert_eq!(
        again
            .get(&right_again, Duration::ZERO)
            .unwrap()
            .token
            .expose(),
        "tok-right"
    );

    // The hash is keyed: another node (another node key) derives another name for the same
    // credential, so the file names say nothing about the secret off this node.
    let other = Root::new("sp-other-node");
    let elsewhere = other.state.tokens().unwrap();
    assert_ne!(
        elsewhere
            .key(&sp(&cloud, b"right secret"))
            .unwrap()
            .file_name(),
        right.file_name()
    );
}

#[test]
fn keys_differ_by_cloud_resource_identity_and_pod() {
    let root = Root::new("keys");
    let cache = root.state.tokens().unwrap();
    let public = public();
    let china = Cloud::resolve("AzureChinaCloud", None).unwrap();
    let custom = |resource: &str| CustomCloud {
        authority_host: "https://login.contoso.local".into(),
        key_vault_dns_suffix: "vault.contoso.local".into(),
        key_vault_resource: resource.into(),
    };
    let stack1 = Cloud::resolve(
        "AzureStackCloud",
        Some(&custom("https://vault.contoso.local")),
    )
    .unwrap();
    // The same cloud name after kv.json changed its endpoints.
    let stack2 = Cloud::resolve(
        "AzureStackCloud",
        Some(&custom("https://vault2.contoso.local")),
    )
    .unwrap();
    let ids = [
        node(&public, VAULT, NodeId::System),
        node(&china, VAULT, NodeId::System),
        node(&stack1, VAULT, NodeId::System),
        node(&stack2, VAULT, NodeId::System),
        node(&public, "https://management.azure.com", NodeId::System),
        node(&public, VAULT, NodeId::ClientId("c1")),
        node(&public, VAULT, NodeId::ClientId("c2")),
        node(&public, VAULT, NodeId::ResourceId("c1")),
        sp(&public, b"x"),
        sp(&china, b"x"),
        pod(&public, "web-0", "uid-1"),
        pod(&public, "web-1", "uid-2"),
        // A pod recreated under the same name is a new pod.
        pod(&public, "web-0", "uid-3"),
        workload(&public, "system:serviceaccount:default:a"),
        workload(&public, "system:serviceaccount:default:b"),
    ];
    let keys: Vec<CacheKey> = ids.iter().map(|id| cache.key(id).unwrap()).collect();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a.file_name(), b.file_name(), "{a:?} and {b:?} share a key");
        }
    }
    // Stable: the same identity gives the same key.
    assert_eq!(cache.key(&ids[0]).unwrap(), keys[0]);
    // A token cached for one pod is not seen by the other.
    cache.put(&keys[10], &token("tok-web-0", 3600)).unwrap();
    assert!(cache.get(&keys[11], Duration::ZERO).is_none());
    assert!(cache.get(&keys[12], Duration::ZERO).is_none());
    assert_eq!(keys[10].kind(), Kind::PodIdentity);
    assert_eq!(
        keys[10].label(),
        "pod default/web-0 for https://vault.azure.net"
    );
}

#[test]
fn reused_until_the_margin_then_expired_entries_go() {
    let root = Root::new("margin");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    cache.put(&key, &token("tok", 4 * 60)).unwrap();
    assert!(cache.get(&key, tokens::DEFAULT_MARGIN).is_none());
    assert!(cache.get(&key, Duration::from_secs(60)).is_some());
    cache.put(&key, &token("old", -1)).unwrap();
    assert!(cache.get(&key, Duration::ZERO).is_none());
    assert!(!root.path(&format!("tokens/{}", key.file_name())).exists());
}

#[test]
fn untrusted_entries_are_ignored_removed_and_replaced() {
    let root = Root::new("untrusted");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    let other = cache
        .key(&node(&cloud, VAULT, NodeId::ClientId("c9")))
        .unwrap();
    let file = root.path(&format!("tokens/{}", key.file_name()));
    let outside = root.base.join("planted");

    type Spoil<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Spoil<'_>)> = vec![
        (
            "corrupt",
            Box::new(|| std::fs::write(&file, b"{not json").unwrap()),
        ),
        (
            "group-readable",
            Box::new(|| {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap()
            }),
        ),
        (
            "foreign-owned",
            Box::new(|| std::os::unix::fs::chown(&file, Some(4242), None).unwrap()),
        ),
        (
            "symlinked",
            Box::new(|| {
                std::fs::rename(&file, &outside).unwrap();
                std::os::unix::fs::symlink(&outside, &file).unwrap();
            }),
        ),
        (
            "oversized",
            Box::new(|| {
                let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024));
                std::fs::write(&file, big).unwrap();
            }),
        ),
        (
            "another key's entry",
            Box::new(|| {
                cache.put(&other, &token("tok-other", 3600)).unwrap();
                std::fs::copy(root.path(&format!("tokens/{}", other.file_name())), &file).unwrap();
            }),
        ),
        (
            "a directory",
            Box::new(|| {
                std::fs::remove_file(&file).unwrap();
                std::fs::create_dir(&file).unwrap();
            }),
        ),
    ];
    for (what, spoil) in cases {
        cache
            .put(&key, &token("tok-good", 3600))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        spoil();
        assert!(
            cache.get(&key, Duration::ZERO).is_none(),
            "{what} entry was used"
        );
        if what != "a directory" {
            assert!(
                std::fs::symlink_metadata(&file).is_err(),
                "{what} entry left in place"
            );
        }
        let _ = std::fs::remove_dir(&file);
        assert!(
            outside.exists() || what != "symlinked",
            "the link's target was removed"
        );
        cache.put(&key, &token("tok-new", 3600)).unwrap();
        assert_eq!(
            cache.get(&key, Duration::ZERO).unwrap().token.expose(),
            "tok-new"
        );
    }
}

#[test]
fn a_state_root_owned_by_another_user_or_symlinked_is_refused() {
    let root = Root::new("foreign-root");
    std::fs::create_dir(root.state.root()).unwrap();
    std::os::unix::fs::chown(root.state.root(), Some(4242), None).unwrap();
    let err = root.state.tokens().err().unwrap();
    assert!(err.message().contains("owned by uid 4242"), "{err}");
    assert!(root.state.throttle().is_err());

    let linked = Root::new("linked-root");
    let target = linked.base.join("elsewhere");
    std::fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(&target, linked.state.root()).unwrap();
    assert!(linked.state.tokens().is_err());
    assert!(names_in(&target).is_empty(), "wrote through the link");
}

#[test]
fn concurrent_creators_agree_on_one_node_key() {
    let root = Root::new("nodekey");
    let cloud = public();
    let barrier = Arc::new(Barrier::new(6));
    let names: Vec<String> = (0..6)
        .map(|_| {
            let (state, barrier, cloud) = (root.state.clone(), barrier.clone(), cloud.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let cache = state.tokens().unwrap();
                cache
                    .key(&sp(&cloud, b"same"))
                    .unwrap()
                    .file_name()
                    .to_owned()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
    assert_eq!(names_in(&root.path("tokens")), [".key"]);
}

/// `get_or_fetch` with a fetch that counts itself and takes a while, so others arrive meanwhile.
fn fetch_once(cache: &TokenCache, key: &CacheKey, fetches: &AtomicUsize, value: &str) -> String {
    runtime()
        .block_on(cache.get_or_fetch(
            key,
            tokens::DEFAULT_MARGIN,
            Instant::now() + Duration::from_secs(10),
            || async {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                Ok(token(value, 3600))
            },
        ))
        .unwrap()
        .token
        .expose()
        .to_owned()
}

#[test]
fn single_flight_across_threads_fetches_once() {
    let root = Root::new("flight-threads");
    let fetches = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let got: Vec<String> = (0..8)
        .map(|i| {
            let (state, fetches, barrier) = (root.state.clone(), fetches.clone(), barrier.clone());
            std::thread::spawn(move || {
                let cache = state.tokens().unwrap();
                let cloud = public();
                let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
                barrier.wait();
                fetch_once(&cache, &key, &fetches, &format!("tok-{i}"))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert!(got.iter().all(|t| *t == got[0]), "{got:?}");
}

#[test]
fn lock_wait_gives_up_at_the_deadline() {
    let root = Root::new("flight-deadline");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    let _held = cache.lock(&key, Instant::now()).unwrap();
    let started = Instant::now();
    let err = cache
        .lock(&key, Instant::now() + Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(err.code(), Code::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        mode(&root.path(&format!("tokens/{}.lock", key.file_name()))),
        0o600
    );
}

#[test]
fn lock_files_exist_only_while_held_and_leftovers_are_swept() {
    let root = Root::new("lock-policy");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    let file = root.path(&format!("tokens/{}.lock", key.file_name()));
    let held = cache.lock(&key, Instant::now()).unwrap();
    assert!(file.exists());
    drop(held);
    assert!(!file.exists(), "removed by its holder");
    // A holder that died leaves its file behind (and no lock): the sweep removes it.
    std::fs::write(&file, b"").unwrap();
    let dead = root.path("locks");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("x.lock"), b"").unwrap();
    let swept = root.state.sweep();
    assert_eq!(swept.locks, 2, "{swept:?}");
    assert!(!file.exists() && names_in(&dead).is_empty());
    // Volume locks: under the root, with a deadline, gone once released.
    let dir = std::path::Path::new("/k/pods/u/volumes/azure~kv/v");
    let held = root.state.lock_volume(dir, Instant::now()).unwrap();
    let started = Instant::now();
    let e = root
        .state
        .lock_volume(dir, Instant::now() + Duration::from_millis(200))
        .unwrap_err();
    assert_eq!(e.code(), Code::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(names_in(&dead).len(), 1);
    drop(held);
    assert!(names_in(&dead).is_empty());
    let c = root.state.summary().counts;
    assert_eq!((c.lock_files, c.slot_files, c.volume_records), (0, 0, 0));
}

#[test]
fn the_sweep_drops_entries_of_gone_pods_and_expired_ones_only() {
    let root = Root::new("sweep-pods");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let pods = root.path("kubelet/pods");
    std::fs::create_dir_all(pods.join("live-uid")).unwrap();
    std::fs::create_dir_all(pods.join("gone-uid")).unwrap();
    root.state.note_pods_dir(&pods);
    let live = cache.key(&pod(&cloud, "a", "live-uid")).unwrap();
    let gone = cache.key(&pod(&cloud, "b", "gone-uid")).unwrap();
    let node_key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    let expired = cache
        .key(&node(&cloud, "https://other", NodeId::System))
        .unwrap();
    for k in [&live, &gone, &node_key] {
        cache.put(k, &token("t", 3600)).unwrap();
    }
    cache.put(&expired, &token("t", -5)).unwrap();
    assert_eq!(
        root.state.sweep().tokens,
        1,
        "only the expired one while both pods exist"
    );
    std::fs::remove_dir(pods.join("gone-uid")).unwrap();
    assert_eq!(root.state.sweep().tokens, 1);
    assert!(cache.get(&live, Duration::ZERO).is_some());
    assert!(cache.get(&node_key, Duration::ZERO).is_some());
    assert!(cache.get(&gone, Duration::ZERO).is_none());
}

// ---- across processes -------------------------------------------------------------------

const ROLE: &str = "KV_NODESTATE_CHILD_ROLE";
const ROOT: &str = "KV_NODESTATE_CHILD_ROOT";

/// Starts this test binary again as [`child_process`] playing `role` on `root`.
fn spawn_child(role: &str, root: &Root) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "nodestate::tests::child_process"])
        .args(["--include-ignored", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE, role)
        .env(ROOT, root.state.root())
        // libtest's own chatter; a failing child still reports on stderr.
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the child has written `marker` (it got that far), or fails the test.
fn wait_for(root: &Root, marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.base.join(marker).exists() {
        assert!(Instant::now() < deadline, "the child never wrote {marker}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn finish(mut child: Child) {
    assert!(child.wait().unwrap().success(), "the child process failed");
}

/// The child half of the cross-process tests (a separate process, so `flock` and the files
/// are really shared between processes, not threads).
#[test]
#[ignore = "the child process of the cross-process tests; they start it"]
fn child_process() {
    let (Ok(role), Some(root)) = (std::env::var(ROLE), std::env::var_os(ROOT)) else {
        return;
    };
    let state = NodeState::at(&root);
    let base = PathBuf::from(&root).parent().unwrap().to_owned();
    let mark = |name: &str| std::fs::write(base.join(name), b"").unwrap();
    let cloud = public();
    let cache = state.tokens().unwrap();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    match role.as_str() {
        // Holds the identity's lock while "fetching", then stores the token.
        "fetch-slowly" => {
            let _lock = cache.lock(&key, Instant::now()).unwrap();
            mark("locked");
            std::thread::sleep(Duration::from_millis(400));
            cache.put(&key, &token("tok-child", 3600)).unwrap();
        }
        // Asks like a mount does; records whether it fetched itself.
        "get-or-fetch" => {
            let fetches = AtomicUsize::new(0);
            mark("asking");
            let got = fetch_once(&cache, &key, &fetches, "tok-child");
            std::fs::write(base.join("child-got"), got).unwrap();
            std::fs::write(
                base.join("child-fetches"),
                fetches.load(Ordering::SeqCst).to_string(),
            )
            .unwrap();
        }
        // One of many processes starting at once: appends to `fetches` if it fetched.
        "burst" => {
            let ready = base.join(format!("ready-{}", std::process::id()));
            std::fs::write(ready, b"").unwrap();
            while !base.join("go").exists() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let fetched = AtomicUsize::new(0);
            let got = fetch_once(
                &cache,
                &key,
                &fetched,
                &format!("tok-{}", std::process::id()),
            );
            let mut log = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(base.join("fetches"))
                .unwrap();
            use std::io::Write;
            writeln!(log, "{} {got}", fetched.load(Ordering::SeqCst)).unwrap();
        }
        // Holds the only slot and the token lock until killed.
        "hold-and-die" => {
            let _slot = state.acquire("imds", 1, Instant::now()).unwrap();
            let _lock = cache.lock(&key, Instant::now()).unwrap();
            mark("holding");
            std::thread::sleep(Duration::from_secs(60));
        }
        "throttle" => state
            .throttle()
            .unwrap()
            .record("Vault.Example.NET", Duration::from_millis(800))
            .unwrap(),
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn single_flight_across_processes_waits_for_the_one_fetch() {
    // Another process is fetching: this one's threads wait for it and fetch nothing.
    let root = Root::new("flight-procs");
    let child = spawn_child("fetch-slowly", &root);
    wait_for(&root, "locked");
    let started = Instant::now();
    let fetches = Arc::new(AtomicUsize::new(0));
    let got: Vec<String> = (0..4)
        .map(|_| {
            let (state, fetches) = (root.state.clone(), fetches.clone());
            std::thread::spawn(move || {
                let cache = state.tokens().unwrap();
                let cloud = public();
                let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
                fetch_once(&cache, &key, &fetches, "tok-parent")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    finish(child);
    assert_eq!(fetches.load(Ordering::SeqCst), 0);
    assert_eq!(got, ["tok-child"; 4]);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "did not wait"
    );

    // This process is fetching: the other process waits and reuses its token.
    let root = Root::new("flight-procs-2");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    let lock = cache.lock(&key, Instant::now()).unwrap();
    let child = spawn_child("get-or-fetch", &root);
    wait_for(&root, "asking");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !root.base.join("child-got").exists(),
        "the child did not wait"
    );
    cache.put(&key, &token("tok-parent", 3600)).unwrap();
    drop(lock);
    finish(child);
    assert_eq!(
        std::fs::read_to_string(root.base.join("child-got")).unwrap(),
        "tok-parent"
    );
    assert_eq!(
        std::fs::read_to_string(root.base.join("child-fetches")).unwrap(),
        "0"
    );
}

#[test]
fn a_burst_of_processes_makes_one_fetch() {
    let root = Root::new("burst");
    root.state.tokens().unwrap();
    let children: Vec<Child> = (0..6).map(|_| spawn_child("burst", &root)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while names_in(&root.base)
        .iter()
        .filter(|n| n.starts_with("ready-"))
        .count()
        < children.len()
    {
        assert!(Instant::now() < deadline, "the children did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(root.base.join("go"), b"").unwrap();
    for child in children {
        finish(child);
    }
    let log = std::fs::read_to_string(root.base.join("fetches")).unwrap();
    let lines: Vec<(&str, &str)> = log.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(lines.len(), 6, "{log}");
    let fetched: Vec<&str> = lines
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != "0")
        .collect();
    assert_eq!(fetched, ["1"], "{log}");
    assert!(lines.iter().all(|(_, t)| *t == lines[0].1), "{log}");
}

#[test]
fn a_failed_fetch_lets_the_next_caller_try() {
    let root = Root::new("fetch-fails");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    let far = Instant::now() + Duration::from_secs(5);
    let rt = runtime();
    let err = rt
        .block_on(cache.get_or_fetch(&key, Duration::ZERO, far, || async {
            Err(crate::error::Error::new(Code::Imds, "IMDS said no"))
        }))
        .unwrap_err();
    assert_eq!(err.code(), Code::Imds);
    assert!(cache.get(&key, Duration::ZERO).is_none());
    let got = rt
        .block_on(cache.get_or_fetch(&key, Duration::ZERO, far, || async {
            Ok(token("tok-2", 3600))
        }))
        .unwrap();
    assert_eq!(got.token.expose(), "tok-2");
    // Reused from the cache now: this fetch is never called.
    let again = rt
        .block_on(cache.get_or_fetch(&key, Duration::ZERO, far, || async {
            Err(crate::error::Error::new(Code::Imds, "not cached"))
        }))
        .unwrap();
    assert_eq!(again.token.expose(), "tok-2");
}

#[test]
fn locks_and_slots_come_free_when_their_holder_dies() {
    let root = Root::new("die");
    let mut child = spawn_child("hold-and-die", &root);
    wait_for(&root, "holding");
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let key = cache.key(&node(&cloud, VAULT, NodeId::System)).unwrap();
    let soon = || Instant::now() + Duration::from_millis(100);
    assert_eq!(
        root.state.acquire("imds", 1, soon()).unwrap_err().code(),
        Code::Timeout
    );
    assert_eq!(cache.lock(&key, soon()).unwrap_err().code(), Code::Timeout);
    child.kill().unwrap();
    child.wait().unwrap();
    let quick = Instant::now() + Duration::from_secs(2);
    root.state.acquire("imds", 1, quick).unwrap();
    cache.lock(&key, quick).unwrap();
}

#[test]
fn the_slot_after_the_last_waits_until_one_is_released() {
    let root = Root::new("slots");
    let far = || Instant::now() + Duration::from_secs(10);
    let a = root.state.acquire("imds", 2, far()).unwrap();
    let b = root.state.acquire("imds", 2, far()).unwrap();
    assert_ne!(a.index(), b.index());
    let started = Instant::now();
    let err = root
        .state
        .acquire("imds", 2, Instant::now() + Duration::from_millis(150))
        .unwrap_err();
    assert_eq!(err.code(), Code::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(250));
        drop(a);
    });
    let started = Instant::now();
    let c = runtime()
        .block_on(root.state.acquire_async("imds", 2, far()))
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "did not wait"
    );
    release.join().unwrap();
    assert_ne!(c.index(), b.index());
    for name in names_in(&root.path("slots")) {
        assert_eq!(mode(&root.path(&format!("slots/{name}"))), 0o600);
    }
    assert!(root.state.acquire("../x", 1, far()).is_err());
    assert!(root.state.acquire("imds", 0, far()).is_err());
}

#[test]
fn slots_bound_how_many_run_at_once() {
    let root = Root::new("slots-bound");
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (state, running, most) = (root.state.clone(), running.clone(), most.clone());
            std::thread::spawn(move || {
                let _slot = state
                    .acquire("imds", 3, Instant::now() + Duration::from_secs(20))
                    .unwrap();
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(60));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 3);
}

#[test]
fn a_429_recorded_by_another_process_makes_this_one_wait_until_it_expires() {
    let root = Root::new("throttle");
    finish(spawn_child("throttle", &root));
    let throttle = root.state.throttle().unwrap();
    let wait = throttle
        .wait_time("vault.example.net")
        .expect("no throttle seen");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(800),
        "{wait:?}"
    );
    assert!(throttle.wait_time("other.example.net").is_none());
    let summary = root.state.summary();
    assert_eq!(summary.throttles.len(), 1);
    assert_eq!(summary.throttles[0].host, "vault.example.net");
    std::thread::sleep(wait + Duration::from_millis(20));
    assert!(throttle.wait_time("vault.example.net").is_none());
}

#[test]
fn throttle_keeps_the_later_time_caps_it_and_ignores_bad_records() {
    let root = Root::new("throttle-rules");
    let throttle = root.state.throttle().unwrap();
    throttle
        .record("a.example", Duration::from_secs(30))
        .unwrap();
    throttle
        .record("a.example", Duration::from_secs(1))
        .unwrap();
    assert!(throttle.wait_time("a.example").unwrap() > Duration::from_secs(25));
    throttle
        .record("b.example", Duration::from_secs(3600))
        .unwrap();
    assert!(throttle.wait_time("b.example").unwrap() <= throttle::MAX_WAIT);

    // A record for another host copied under this host's name, garbage, a foreign file.
    let dir = root.path("throttle");
    let file_of = |host: &str| {
        use sha2::Digest;
        dir.join(hex::encode(sha2::Sha256::digest(host.as_bytes())))
    };
    std::fs::copy(file_of("a.example"), file_of("c.example")).unwrap();
    assert!(throttle.wait_time("c.example").is_none());
    std::fs::write(file_of("a.example"), b"garbage").unwrap();
    assert!(throttle.wait_time("a.example").is_none());
    std::os::unix::fs::chown(file_of("b.example"), Some(4242), None).unwrap();
    assert!(throttle.wait_time("b.example").is_none());
    // The bad records are gone, and the lock file went with its holder.
    assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
}

#[test]
fn summary_lists_entries_and_throttles_without_token_values() {
    let root = Root::new("summary");
    assert_eq!(root.state.summary(), Summary::default());
    assert!(
        !root.state.root().exists(),
        "a summary created the state root"
    );
    let cache = root.state.tokens().unwrap();
    let cloud = public();
    let node_key = cache
        .key(&node(&cloud, VAULT, NodeId::ClientId("c1")))
        .unwrap();
    let sp_key = cache.key(&sp(&cloud, b"the-credential")).unwrap();
    cache
        .put(&node_key, &token("tok-node-SECRET", 3600))
        .unwrap();
    cache.put(&sp_key, &token("tok-sp-SECRET", 600)).unwrap();
    let _lock = cache.lock(&sp_key, Instant::now()).unwrap();
    root.state
        .throttle()
        .unwrap()
        .record("login.microsoftonline.com", Duration::from_secs(5))
        .unwrap();

    let summary = root.state.summary();
    let kinds: Vec<Kind> = summary.tokens.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [Kind::ServicePrincipal, Kind::NodeIdentity]);
    assert_eq!(
        summary.tokens[1].label,
        "client c1 for https://vault.azure.net"
    );
    assert!(summary.tokens[0].age < Duration::from_secs(5));
    let text = summary.to_string();
    assert!(text.contains("token service-principal client app-1 in tenant tenant-1 for https://vault.azure.net: expires in"), "{text}");
    assert!(
        text.contains("throttled login.microsoftonline.com: "),
        "{text}"
    );
    assert!(
        !text.contains("SECRET") && !text.contains("the-credential"),
        "{text}"
    );
}

#[test]
fn a_namespace_holding_its_share_leaves_the_rest_to_the_others() {
    let root = Root::new("fair");
    let rt = runtime();
    let take = |owner: &str, n: usize, wait: Duration| {
        rt.block_on(
            root.state
                .acquire_fair("vault-a", n, Some(owner), Instant::now() + wait),
        )
    };
    let far = Duration::from_secs(10);
    let soon = Duration::from_millis(100);
    // 4 slots, a share of 1: alone, one namespace takes 3 and one stays for the others...
    let hostile: Vec<_> = (0..3).map(|_| take("hostile", 4, far).unwrap()).collect();
    assert_eq!(take("hostile", 4, soon).unwrap_err().code(), Code::Timeout);
    // ... which another namespace gets at once.
    let victim = take("victim", 4, soon).unwrap();
    assert_eq!(take("third", 4, soon).unwrap_err().code(), Code::Timeout);
    drop(hostile);
    drop(victim);
    // 2 slots: one each.
    let hostile = take("hostile", 2, far).unwrap();
    assert_eq!(take("hostile", 2, soon).unwrap_err().code(), Code::Timeout);
    let victim = take("victim", 2, soon).unwrap();
    assert_ne!(hostile.index(), victim.index());
    // Without an owner it is a plain semaphore; files: the slots held, only while held (the
    // set's lock is gone with its holder).
    drop((hostile, victim));
    let all: Vec<_> = (0..4)
        .map(|_| {
            root.state
                .acquire("vault-a", 4, Instant::now() + far)
                .unwrap()
        })
        .collect();
    assert_eq!(all.len(), 4);
    let mut names = names_in(&root.path("slots"));
    names.sort();
    assert_eq!(names, ["vault-a.0", "vault-a.1", "vault-a.2", "vault-a.3",]);
    drop(all);
    assert!(names_in(&root.path("slots")).is_empty());
}

#[test]
fn vault_hosts_map_onto_a_fixed_set_of_slot_sets() {
    let sets: std::collections::BTreeSet<String> = (0..1000)
        .map(|i| slots::vault_set(&format!("vault{i}.vault.azure.net")))
        .collect();
    assert_eq!(sets.len(), slots::VAULT_BUCKETS);
    assert_eq!(
        slots::vault_set("KV.vault.azure.net"),
        slots::vault_set("kv.vault.azure.net")
    );
}
