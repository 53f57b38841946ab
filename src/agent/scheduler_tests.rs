use super::*;
use crate::agent::root::is_live;
use crate::agent::schedule;
use crate::nodestate::{MountTable, PodRef};
use crate::testutil::{file, TempDir, Tmpfs};
use crate::volume::versioned::{self as layout, Budget, Perms};
use rustix::fd::AsFd;
use std::path::Path;
use std::sync::atomic::AtomicUsize;

type Store = NodeState;

/// A fake vault: per mount dir, the generation of its objects or the error it answers.
/// What the fake vault answers for one volume: (generation, version id) or an error code.
type Answer = std::result::Result<(u64, &'static str), Code>;

#[derive(Default)]
struct Vault {
    state: Mutex<BTreeMap<PathBuf, Answer>>,
    calls: AtomicUsize,
}

impl Vault {
    fn set(&self, dir: &Path, v: Answer) {
        self.state.lock().unwrap().insert(dir.to_path_buf(), v);
    }
}

fn files(generation: u64) -> Vec<crate::volume::VolumeFile> {
    vec![
        file("tls.crt", format!("cert {generation}").as_bytes(), 0o444),
        file("web/0", format!("web {generation}").as_bytes(), 0o444),
    ]
}

impl Refresh for Vault {
    fn fetch(&self, record: &Record) -> Result<Fetched> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match self.state.lock().unwrap().get(&record.dir) {
            Some(Ok((g, version))) => Ok(Fetched {
                layout: Layout {
                    files: files(*g),
                    dir_mode: 0o555,
                    gid: None,
                    size: 0,
                    read_only: false,
                    rotating: true,
                },
                versions: [("tls".to_string(), version.to_string())].into(),
            }),
            Some(Err(code)) => Err(Error::new(*code, "the vault said no")),
            None => Err(Error::new(Code::NotFound, "no such volume")),
        }
    }
}

struct Volume {
    fs: Tmpfs,
}

impl Volume {
    fn new(store: &Store, vault: &Vault, tag: &str, size: u64) -> Volume {
        let fs = Tmpfs::new(tag, size);
        let written = layout::write_initial(
            fs.root().as_fd(),
            &files(1),
            Perms {
                dir_mode: 0o555,
                gid: None,
            },
            Budget::unlimited(),
        )
        .unwrap();
        vault.set(&fs.dir, Ok((1, "v1")));
        store.volumes().save(&record(&fs.dir)).unwrap();
        let status = Status {
            written: Some(written),
            ..Status::default()
        };
        store.volumes().save_status(&fs.dir, &status).unwrap();
        Volume { fs }
    }

    fn cert(&self) -> String {
        std::fs::read_to_string(self.fs.dir.join("tls.crt")).unwrap()
    }

    /// How many version directories the volume holds.
    fn versions_in(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("..2")
            })
            .count()
    }

    fn version_dir(&self) -> String {
        layout::current(self.fs.root().as_fd()).unwrap().unwrap()
    }
}

fn record(dir: &Path) -> Record {
    Record::new(
        dir.to_path_buf(),
        PodRef {
            namespace: Some("ns".into()),
            name: Some("web".into()),
            ..PodRef::default()
        },
        "{}".into(),
        Duration::from_secs(120),
        "service-principal",
        false,
    )
}

/// A state dir (removed on drop), its store and an empty fake vault.
fn setup(tag: &str) -> (TempDir, Store, Vault) {
    let state = TempDir::new(tag);
    let store = NodeState::at(&state.0);
    (state, store, Vault::default())
}

const ONCE: PassOptions = PassOptions {
    once: true,
    concurrency: 4,
    grace: Duration::from_millis(1),
};

/// A pass that refreshes only the volumes that are due.
const DUE: PassOptions = PassOptions {
    once: false,
    ..ONCE
};

#[test]
fn a_change_switches_the_volume_and_nothing_else_does() {
    let (_state, store, vault) = setup("pass-change");
    let a = Volume::new(&store, &vault, "pass-change-a", 1 << 20);
    let b = Volume::new(&store, &vault, "pass-change-b", 1 << 20);
    let (va, vb) = (a.version_dir(), b.version_dir());

    let r = run_pass(&store, &vault, ONCE, now()).unwrap();
    assert_eq!(
        (r.switched.len(), r.unchanged.len(), r.failed.len()),
        (0, 2, 0),
        "{r:?}"
    );
    assert_eq!((a.version_dir(), b.version_dir()), (va.clone(), vb.clone()));
    assert_eq!(store.volumes().load_status(&a.fs.dir).versions["tls"], "v1");

    vault.set(&a.fs.dir, Ok((2, "v2")));
    let r = run_pass(&store, &vault, ONCE, now()).unwrap();
    assert_eq!(r.switched, std::slice::from_ref(&a.fs.dir));
    assert_eq!(r.unchanged, std::slice::from_ref(&b.fs.dir));
    assert_eq!(a.cert(), "cert 2");
    assert_eq!(
        std::fs::read_to_string(a.fs.dir.join("web/0")).unwrap(),
        "web 2"
    );
    assert_eq!(b.cert(), "cert 1");
    assert_eq!(b.version_dir(), vb);
    let dirs = Volume::versions_in(&a.fs.dir);
    assert_eq!(
        dirs, 1,
        "the replaced version is removed after the grace period"
    );
    let status = store.volumes().load_status(&a.fs.dir);
    assert_eq!(
        (
            status.switches,
            status.failures,
            status.versions["tls"].as_str()
        ),
        (1, 0, "v2")
    );
    assert!(status.last_switch.is_some() && status.last_success.is_some());

    // A new version id with the same bytes switches too (the version is what the pod asked to follow).
    vault.set(&b.fs.dir, Ok((1, "v1b")));
    let r = run_pass(&store, &vault, ONCE, now()).unwrap();
    assert_eq!(r.switched, std::slice::from_ref(&b.fs.dir));
    assert_ne!(b.version_dir(), vb);
    assert_eq!(b.cert(), "cert 1");
}

#[test]
fn an_error_keeps_the_files_reports_and_backs_off() {
    let (_state, store, vault) = setup("pass-error");
    let a = Volume::new(&store, &vault, "pass-error", 1 << 20);
    run_pass(&store, &vault, ONCE, now()).unwrap();
    let before = a.version_dir();

    vault.set(&a.fs.dir, Err(Code::Forbidden));
    let t0 = now();
    let r = run_pass(&store, &vault, ONCE, t0).unwrap();
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].1.code(), Code::Forbidden);
    assert_eq!(
        (a.version_dir(), a.cert()),
        (before.clone(), "cert 1".to_string())
    );
    let status = store.volumes().load_status(&a.fs.dir);
    let err = status.last_error.clone().unwrap();
    assert_eq!(
        (err.code.as_str(), err.message.as_str(), status.failures),
        ("KV403_FORBIDDEN", "the vault said no", 1)
    );
    let due = Duration::from_millis(status.next_due_ms) - t0;
    assert!(
        due >= schedule::FIRST_RETRY / 2 && due <= schedule::FIRST_RETRY,
        "{due:?}"
    );

    // Not retried before the backoff ends, retried after, with a longer backoff.
    let calls = vault.calls.load(Ordering::SeqCst);
    let r = run_pass(&store, &vault, DUE, t0 + Duration::from_secs(1)).unwrap();
    assert_eq!((r.not_due, vault.calls.load(Ordering::SeqCst)), (1, calls));
    let t1 = t0 + Duration::from_secs(6);
    let r = run_pass(&store, &vault, DUE, t1).unwrap();
    assert_eq!(r.failed.len(), 1);
    let status = store.volumes().load_status(&a.fs.dir);
    assert_eq!(status.failures, 2);
    let due = Duration::from_millis(status.next_due_ms) - t1;
    assert!(
        due >= schedule::FIRST_RETRY && due <= schedule::FIRST_RETRY * 2,
        "{due:?}"
    );

    // A tmpfs with no room for a second version: a clean failure, the files stay.
    let small = Volume::new(&store, &vault, "pass-small", 8192);
    let big = [file("tls.crt", &[b'x'; 6000], 0o444)];
    let small_dir = small.fs.dir.clone();
    let sized = move |r: &Record| -> Result<Fetched> {
        if r.dir != small_dir {
            return Err(Error::new(Code::Network, "unreachable"));
        }
        Ok(Fetched {
            layout: Layout {
                files: big
                    .iter()
                    .map(|f| file(&f.path, &f.bytes, f.mode))
                    .collect(),
                dir_mode: 0o555,
                gid: None,
                size: 0,
                read_only: false,
                rotating: true,
            },
            versions: BTreeMap::new(),
        })
    };
    let r = run_pass(&store, &sized, ONCE, now()).unwrap();
    let (_, e) = r.failed.iter().find(|(d, _)| *d == small.fs.dir).unwrap();
    assert!(e.message().contains("room for two versions"), "{e}");
    assert_eq!(small.cert(), "cert 1");

    // Recovery: success resets the failures, the last error (the sized fetcher's) stays visible.
    vault.set(&a.fs.dir, Ok((3, "v3")));
    let r = run_pass(&store, &vault, ONCE, now()).unwrap();
    assert!(r.switched.contains(&a.fs.dir));
    let status = store.volumes().load_status(&a.fs.dir);
    assert_eq!((status.failures, a.cert().as_str()), (0, "cert 3"));
    assert_eq!(status.last_error.unwrap().code, "KV_NETWORK");
}

#[test]
fn records_of_vanished_mounts_are_collected() {
    let (_state, store, vault) = setup("pass-gc");
    let live = Volume::new(&store, &vault, "pass-gc-live", 1 << 20);
    let gone = Volume::new(&store, &vault, "pass-gc-gone", 1 << 20);
    let gone_dir = gone.fs.dir.clone();
    drop(gone); // unmounted and removed
    let plain = TempDir::new("pass-gc-plain");
    store.volumes().save(&record(&plain.0)).unwrap(); // a directory, but no tmpfs of kv's
    let other = Tmpfs::new("pass-gc-other", 1 << 20);
    rustix::mount::unmount(&other.dir, rustix::mount::UnmountFlags::empty()).unwrap();
    rustix::mount::mount(
        "other",
        &other.dir,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=64k",
    )
    .unwrap();
    store.volumes().save(&record(&other.dir)).unwrap(); // a tmpfs, not kv's

    let r = run_pass(&store, &vault, ONCE, now()).unwrap();
    let mut collected = r.collected.clone();
    collected.sort();
    let mut want = vec![gone_dir, plain.0.clone(), other.dir.clone()];
    want.sort();
    assert_eq!(collected, want);
    let left: Vec<PathBuf> = store
        .volumes()
        .load_all()
        .unwrap()
        .records
        .iter()
        .map(|r| r.dir.clone())
        .collect();
    assert_eq!(left, std::slice::from_ref(&live.fs.dir));
    assert_eq!(r.unchanged, std::slice::from_ref(&live.fs.dir));
    let table = MountTable::read().unwrap();
    assert!(is_live(&table, &record(&live.fs.dir)));
    assert!(!is_live(&table, &record(&other.dir)));
}

#[test]
fn volumes_wait_for_their_due_time_unless_once() {
    let (_state, store, vault) = setup("pass-due");
    let a = Volume::new(&store, &vault, "pass-due", 1 << 20);
    let t0 = now();
    let r = run_pass(&store, &vault, DUE, t0).unwrap();
    assert_eq!((r.not_due, vault.calls.load(Ordering::SeqCst)), (1, 0));
    let due = Duration::from_millis(store.volumes().load_status(&a.fs.dir).next_due_ms);
    assert!(due > t0 && due <= t0 + Duration::from_secs(126), "{due:?}");
    let r = run_pass(&store, &vault, DUE, t0).unwrap();
    assert_eq!(
        Duration::from_millis(store.volumes().load_status(&a.fs.dir).next_due_ms),
        due,
        "saved: stable across passes"
    );
    assert_eq!(r.not_due, 1);
    let r = run_pass(&store, &vault, DUE, due - Duration::from_millis(1)).unwrap();
    assert_eq!(r.not_due, 1);
    let r = run_pass(&store, &vault, DUE, due).unwrap();
    assert_eq!(
        (r.unchanged.len(), vault.calls.load(Ordering::SeqCst)),
        (1, 1)
    );
    let next = Duration::from_millis(store.volumes().load_status(&a.fs.dir).next_due_ms);
    assert!(
        next >= due + Duration::from_secs(114) && next <= due + Duration::from_secs(126),
        "{next:?}"
    );
    run_pass(&store, &vault, ONCE, due).unwrap();
    assert_eq!(
        vault.calls.load(Ordering::SeqCst),
        2,
        "--once refreshes whatever the due time"
    );
}

#[test]
fn a_read_only_volume_of_an_older_kv_is_refused_and_kept() {
    // Without the agent's own mount, a read-only volume cannot be written without remounting
    // it: the agent refuses it (delete the pod to remount it) and never remounts.
    let (_state, store, vault) = setup("pass-ro");
    let a = Volume::new(&store, &vault, "pass-ro", 1 << 20);
    let mut r = record(&a.fs.dir);
    r.read_only = true;
    store.volumes().save(&r).unwrap();
    let keep = rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV;
    rustix::mount::mount_remount(&a.fs.dir, keep | rustix::mount::MountFlags::RDONLY, "").unwrap();
    vault.set(&a.fs.dir, Ok((2, "v2")));
    let report = run_pass(&store, &vault, ONCE, now()).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(
        report.failed[0].1.message().contains("delete the pod"),
        "{report:?}"
    );
    assert_eq!(a.cert(), "cert 1");
    assert!(rustix::fs::statvfs(&a.fs.dir)
        .unwrap()
        .f_flag
        .contains(rustix::fs::StatVfsMountFlags::RDONLY));
}

#[test]
fn many_volumes_are_refreshed_once_each_by_the_workers() {
    let (_state, store, vault) = setup("pass-many");
    let volumes: Vec<Volume> = (0..100)
        .map(|i| Volume::new(&store, &vault, &format!("pass-many-{i}"), 256 << 10))
        .collect();
    let r = run_pass(&store, &vault, ONCE, now()).unwrap();
    assert_eq!(
        (r.unchanged.len(), vault.calls.load(Ordering::SeqCst)),
        (100, 100)
    );
    for (i, v) in volumes.iter().enumerate() {
        vault.set(&v.fs.dir, Ok((10 + i as u64, "v2")));
    }
    let r = run_pass(&store, &vault, ONCE, now()).unwrap();
    assert_eq!(
        (r.switched.len(), r.failed.len()),
        (100, 0),
        "{:?}",
        r.failed
    );
    for (i, v) in volumes.iter().enumerate() {
        assert_eq!(v.cert(), format!("cert {}", 10 + i));
        let versions = Volume::versions_in(&v.fs.dir);
        assert_eq!(versions, 1, "{}", v.fs.dir.display());
        assert_eq!(store.volumes().load_status(&v.fs.dir).switches, 1);
    }
    // Their next refreshes are spread over the interval, not bunched.
    let dues: std::collections::BTreeSet<u64> = volumes
        .iter()
        .map(|v| store.volumes().load_status(&v.fs.dir).next_due_ms / 1000)
        .collect();
    assert!(
        dues.len() >= 5,
        "next refreshes bunched in {} seconds",
        dues.len()
    );
}

/// A refresh that takes its whole budget in one namespace does not hold up another's: each
/// namespace gets at most its share of the workers.
#[test]
fn a_slow_namespace_gets_its_share_of_workers_and_no_more() {
    let (_state, store, vault) = setup("pass-fair");
    let mut slow = Vec::new();
    for i in 0..6 {
        let v = Volume::new(&store, &vault, &format!("pass-fair-slow-{i}"), 256 << 10);
        let mut r = record(&v.fs.dir);
        r.pod.namespace = Some("hostile".into());
        store.volumes().save(&r).unwrap();
        slow.push(v);
    }
    let _fast: Vec<Volume> = (0..3)
        .map(|i| Volume::new(&store, &vault, &format!("pass-fair-fast-{i}"), 256 << 10))
        .collect();
    let started = std::time::Instant::now();
    let fast_done = Mutex::new(Vec::new());
    let slow_dirs: Vec<PathBuf> = slow.iter().map(|v| v.fs.dir.clone()).collect();
    let refresh = |r: &Record| -> Result<Fetched> {
        if slow_dirs.contains(&r.dir) {
            std::thread::sleep(Duration::from_millis(800));
        } else {
            fast_done.lock().unwrap().push(started.elapsed());
        }
        vault.fetch(r)
    };
    let opts = PassOptions {
        once: true,
        concurrency: 4,
        grace: Duration::from_millis(1),
    };
    let r = run_pass(&store, &refresh, opts, now()).unwrap();
    assert_eq!(r.unchanged.len(), 9, "{r:?}");
    let done = fast_done.into_inner().unwrap();
    assert_eq!(done.len(), 3);
    assert!(
        done.iter().all(|d| *d < Duration::from_millis(700)),
        "the other namespace waited for the slow one: {done:?}"
    );
}
