use super::*;
use crate::testutil::{file, TempDir, Tmpfs};
use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

thread_local! {
    /// Set by a test: right after `make_dir` creates a directory, it is replaced by a link to
    /// this path (what a pod racing kv could do).
    static SWAP_FOR_LINK: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// The test hook `make_dir` calls between `mkdirat` and opening the new directory.
pub(super) fn after_mkdir(parent: BorrowedFd<'_>, name: &str) {
    SWAP_FOR_LINK.with(|s| {
        if let Some(target) = s.borrow().as_ref() {
            rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).unwrap();
            rustix::fs::symlinkat(target.as_path(), parent, name).unwrap();
        }
    });
}

/// Every regular file of the current version, read through `..data` (tests only: kv itself
/// never reads a volume's files).
fn read_current(root: BorrowedFd<'_>) -> Result<BTreeMap<String, (Vec<u8>, u32)>> {
    fn walk(dir: BorrowedFd<'_>, prefix: &str, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        for (name, is_dir) in list(dir).unwrap() {
            let path = format!("{prefix}{name}");
            if is_dir {
                let sub = open_dir_at(dir, &name).unwrap();
                walk(sub.as_fd(), &format!("{path}/"), out);
                continue;
            }
            let fd = rustix::fs::openat(
                dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW,
                Mode::empty(),
            )
            .unwrap();
            let mode = rustix::fs::fstat(&fd).unwrap().st_mode & 0o7777;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes).unwrap();
            out.insert(path, (bytes, mode));
        }
    }
    let mut out = BTreeMap::new();
    if let Some(live) = current(root)? {
        let dir = open_dir_at(root, &live).unwrap();
        walk(dir.as_fd(), "", &mut out);
    }
    Ok(out)
}

/// Whether the current version holds exactly `files` (tests only).
fn matches(root: BorrowedFd<'_>, files: &[VolumeFile]) -> Result<bool> {
    let on_disk = read_current(root)?;
    Ok(on_disk.len() == files.len()
        && files.iter().all(|f| {
            on_disk
                .get(&f.path)
                .is_some_and(|(bytes, mode)| bytes[..] == f.bytes[..] && *mode == f.mode & 0o7777)
        }))
}

const PERMS: Perms = Perms {
    dir_mode: 0o550,
    gid: Some(2345),
};

/// A generation's file: self-describing so a reader can tell a complete file of one
/// generation from anything else.
fn content(generation: u64, path: &str, len: usize) -> Vec<u8> {
    let mut v = format!("gen={generation} path={path} ").into_bytes();
    v.resize(len - 4, b'.');
    v.extend_from_slice(b"END\n");
    v
}

/// The generation of a complete file for `path`, or a description of what is wrong.
fn generation_of(bytes: &[u8], path: &str, len: usize) -> std::result::Result<u64, String> {
    if bytes.len() != len || !bytes.ends_with(b"END\n") {
        return Err(format!("{path}: partial file ({} bytes)", bytes.len()));
    }
    let text = String::from_utf8_lossy(&bytes[..60.min(bytes.len())]).to_string();
    let rest = text
        .strip_prefix("gen=")
        .ok_or(format!("{path}: bad header {text}"))?;
    let (g, rest) = rest.split_once(' ').ok_or(format!("{path}: bad header"))?;
    if !rest.starts_with(&format!("path={path} ")) {
        return Err(format!("{path}: holds another file's content"));
    }
    g.parse().map_err(|_| format!("{path}: bad generation"))
}

const PATHS: &[&str] = &["tls.crt", "tls.key", "ca.pem", "web/0", "web/1", "web/2"];
const LEN: usize = 5000;

fn generation(g: u64) -> Vec<VolumeFile> {
    PATHS
        .iter()
        .map(|p| file(p, &content(g, p, LEN), 0o440))
        .collect()
}

fn version_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("..") && !n.starts_with(DATA))
        .collect();
    v.sort();
    v
}

fn read_link(path: &Path) -> String {
    std::fs::read_link(path)
        .unwrap()
        .to_string_lossy()
        .to_string()
}

#[test]
fn initial_then_switch_replaces_every_file_in_one_step() {
    let fs = Tmpfs::new("layout-switch", 1 << 20);
    let root = fs.root();
    let first = vec![
        file("tls.crt", b"cert-1", 0o440),
        file("old.txt", b"gone soon", 0o400),
        file("web/0", b"web-1-0", 0o440),
        file("web/1", b"web-1-1", 0o440),
    ];
    write_initial(
        root.as_fd(),
        &first,
        PERMS,
        Budget::available(root.as_fd()).unwrap(),
    )
    .unwrap();

    let v1 = current(root.as_fd()).unwrap().unwrap();
    assert_eq!(read_link(&fs.dir.join(DATA)), v1);
    assert_eq!(read_link(&fs.dir.join("tls.crt")), "..data/tls.crt");
    assert_eq!(read_link(&fs.dir.join("web")), "..data/web");
    assert_eq!(std::fs::read(fs.dir.join("tls.crt")).unwrap(), b"cert-1");
    assert_eq!(std::fs::read(fs.dir.join("web/1")).unwrap(), b"web-1-1");
    let meta = std::fs::metadata(fs.dir.join("old.txt")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.gid(), meta.uid()),
        (0o400, 2345, 0)
    );
    for d in [v1.clone(), format!("{v1}/web")] {
        let meta = std::fs::symlink_metadata(fs.dir.join(&d)).unwrap();
        assert!(meta.is_dir(), "{d}");
        assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o550, 2345), "{d}");
    }
    assert!(matches(root.as_fd(), &first).unwrap());

    let second = vec![
        file("tls.crt", b"cert-2", 0o440),
        file("new.txt", b"new", 0o444),
        file("web/0", b"web-2-0", 0o440),
        file("web/1", b"web-2-1", 0o440),
    ];
    assert!(!matches(root.as_fd(), &second).unwrap());
    let switched = switch(
        root.as_fd(),
        &second,
        PERMS,
        Budget::available(root.as_fd()).unwrap(),
    )
    .unwrap();
    assert_eq!(switched.replaced.as_deref(), Some(v1.as_str()));
    assert_eq!(read_link(&fs.dir.join(DATA)), switched.written.version);
    assert_eq!(std::fs::read(fs.dir.join("tls.crt")).unwrap(), b"cert-2");
    assert_eq!(std::fs::read(fs.dir.join("web/0")).unwrap(), b"web-2-0");
    assert_eq!(std::fs::read(fs.dir.join("new.txt")).unwrap(), b"new");
    assert!(
        std::fs::symlink_metadata(fs.dir.join("old.txt")).is_err(),
        "link of a dropped file removed"
    );
    assert!(matches(root.as_fd(), &second).unwrap());
    // The old version stays for the grace period, then goes; the current one cannot be removed.
    assert_eq!(version_dirs(&fs.dir).len(), 2);
    assert!(remove_version(root.as_fd(), &switched.written.version).is_err());
    remove_version(root.as_fd(), &v1).unwrap();
    assert_eq!(
        version_dirs(&fs.dir),
        std::slice::from_ref(&switched.written.version)
    );
    let mut names: Vec<String> = std::fs::read_dir(&fs.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            &switched.written.version,
            "..data",
            "new.txt",
            "tls.crt",
            "web"
        ]
    );
}

#[test]
fn a_version_that_does_not_fit_is_refused_before_anything_is_written() {
    let fs = Tmpfs::new("layout-budget", 1 << 20);
    let root = fs.root();
    let first = generation(1);
    write_initial(root.as_fd(), &first, PERMS, Budget::unlimited()).unwrap();
    let need = needed(&first).unwrap();
    assert_eq!(need.bytes, 6 * 8192, "5000 bytes take two pages each");
    // Files, version dir, web/, four top-level links, ..data and ..data_tmp.
    assert_eq!(need.inodes, 6 + 1 + 1 + 4 + 2);
    assert_eq!(
        room_for_rotation(&first).unwrap(),
        Budget {
            bytes: 2 * need.bytes,
            inodes: 2 * need.inodes
        }
    );
    let small = Budget {
        bytes: need.bytes - 1,
        inodes: u64::MAX,
    };
    let e = switch(root.as_fd(), &generation(2), PERMS, small).unwrap_err();
    assert_eq!(e.code(), Code::Mount);
    assert!(e.message().contains("room for two versions"), "{e}");
    let few_inodes = Budget {
        bytes: u64::MAX,
        inodes: need.inodes - 1,
    };
    assert!(switch(root.as_fd(), &generation(2), PERMS, few_inodes).is_err());
    assert_eq!(version_dirs(&fs.dir).len(), 1);
    assert!(matches(root.as_fd(), &first).unwrap());
}

#[test]
fn a_full_tmpfs_midway_leaves_the_current_version_untouched() {
    // Room for one version of ~30 KiB but not two: the write fails on ENOSPC halfway.
    let fs = Tmpfs::new("layout-enospc", 48 * 1024);
    let root = fs.root();
    let first = generation(1);
    write_initial(root.as_fd(), &first, PERMS, Budget::unlimited()).unwrap();
    let e = switch(root.as_fd(), &generation(2), PERMS, Budget::unlimited()).unwrap_err();
    assert_eq!(e.code(), Code::Mount);
    assert!(matches(root.as_fd(), &first).unwrap());
    assert_eq!(
        version_dirs(&fs.dir).len(),
        1,
        "the partial version is removed"
    );
    assert!(std::fs::symlink_metadata(fs.dir.join(DATA_TMP)).is_err());
    // And the checked budget refuses it up front.
    let e = switch(
        root.as_fd(),
        &generation(2),
        PERMS,
        Budget::available(root.as_fd()).unwrap(),
    )
    .unwrap_err();
    assert!(e.message().contains("free"), "{e}");
}

#[test]
fn paths_that_could_escape_or_collide_are_refused() {
    let tmp = TempDir::new("layout-paths");
    let root = crate::atomic::open_dir(&tmp.0).unwrap();
    for bad in [
        vec![file("..data", b"x", 0o400)],
        vec![file("..2026", b"x", 0o400)],
        vec![file("a//b", b"x", 0o400)],
        vec![file("/abs", b"x", 0o400)],
        vec![file("a/./b", b"x", 0o400)],
        vec![file("a", b"x", 0o400), file("a", b"y", 0o400)],
        vec![file("a", b"x", 0o400), file("a/b", b"y", 0o400)],
    ] {
        let e = write_initial(root.as_fd(), &bad, PERMS, Budget::unlimited()).unwrap_err();
        assert_eq!(e.code(), Code::Internal, "{}", bad[0].path);
    }
    assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 0);
    std::fs::write(tmp.0.join("plain"), b"x").unwrap();
    let e = write_initial(root.as_fd(), &generation(1), PERMS, Budget::unlimited()).unwrap_err();
    assert!(e.message().contains("not empty"), "{e}");
}

#[test]
fn recover_removes_leftovers_and_completes_links() {
    let fs = Tmpfs::new("layout-recover", 1 << 20);
    let root = fs.root();
    write_initial(root.as_fd(), &generation(1), PERMS, Budget::unlimited()).unwrap();
    let live = current(root.as_fd()).unwrap().unwrap();
    // An interrupted switch: a half-written version, its tmp link; a link not yet made.
    std::fs::create_dir(fs.dir.join("..2030_01_01_00_00_00.000000001")).unwrap();
    std::fs::write(
        fs.dir.join("..2030_01_01_00_00_00.000000001/tls.crt"),
        b"half",
    )
    .unwrap();
    std::os::unix::fs::symlink("..2030_01_01_00_00_00.000000001", fs.dir.join(DATA_TMP)).unwrap();
    std::fs::remove_file(fs.dir.join("ca.pem")).unwrap();
    std::os::unix::fs::symlink("..data/dropped", fs.dir.join("dropped")).unwrap();
    // Not kv's: left alone.
    std::os::unix::fs::symlink("/etc/hostname", fs.dir.join("foreign")).unwrap();

    let report = recover(root.as_fd()).unwrap();
    assert!(report.removed_tmp_link);
    assert_eq!(report.removed_versions, ["..2030_01_01_00_00_00.000000001"]);
    assert_eq!(report.fixed_links, 2);
    assert_eq!(version_dirs(&fs.dir), [live]);
    assert_eq!(read_link(&fs.dir.join("ca.pem")), "..data/ca.pem");
    assert!(std::fs::symlink_metadata(fs.dir.join("dropped")).is_err());
    assert_eq!(read_link(&fs.dir.join("foreign")), "/etc/hostname");
    assert!(
        !recover(root.as_fd()).unwrap().any(),
        "a second recover has nothing to do"
    );
}

/// Reads every file twice over: through its top-level link (each file complete, of some
/// generation) and through one `..data` resolution (all files of one generation).
fn read_volume(dir: &Path) -> std::result::Result<(), String> {
    for p in PATHS {
        let bytes = std::fs::read(dir.join(p)).map_err(|e| format!("{p}: {e}"))?;
        generation_of(&bytes, p, LEN)?;
    }
    let data = rustix::fs::open(
        dir.join(DATA),
        OFlags::DIRECTORY | OFlags::RDONLY,
        Mode::empty(),
    )
    .map_err(|e| format!("..data: {e}"))?;
    let mut seen = BTreeSet::new();
    for p in PATHS {
        let fd = rustix::fs::openat(&data, *p, OFlags::RDONLY, Mode::empty())
            .map_err(|e| format!("..data/{p}: {e}"))?;
        let mut bytes = vec![0u8; LEN + 1];
        let n = rustix::io::read(&fd, &mut bytes).map_err(|e| format!("{p}: {e}"))?;
        bytes.truncate(n);
        seen.insert(generation_of(&bytes, p, LEN)?);
    }
    if seen.len() != 1 {
        return Err(format!("one ..data resolution mixed generations {seen:?}"));
    }
    Ok(())
}

#[test]
fn a_concurrent_reader_never_sees_a_mix_or_a_missing_file() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let fs = Tmpfs::new("layout-reader", 4 << 20);
    let root = fs.root();
    write_initial(root.as_fd(), &generation(0), PERMS, Budget::unlimited()).unwrap();
    let stop = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                read_volume(&fs.dir)?;
                reads.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<(), String>(())
        });
        // Old versions go after a grace period, as the pass does it.
        let mut old: std::collections::VecDeque<(std::time::Instant, String)> = Default::default();
        for g in 1..=200 {
            let budget = Budget::available(root.as_fd()).unwrap();
            let switched = switch(root.as_fd(), &generation(g), PERMS, budget).unwrap();
            old.push_back((std::time::Instant::now(), switched.replaced.unwrap()));
            while old
                .front()
                .is_some_and(|(t, _)| t.elapsed() > std::time::Duration::from_millis(50))
            {
                let (_, name) = old.pop_front().unwrap();
                remove_version(root.as_fd(), &name).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        stop.store(true, Ordering::SeqCst);
        reader.join().unwrap().unwrap();
    });
    assert!(
        reads.load(Ordering::SeqCst) > 50,
        "the reader ran during the switches"
    );
    let on_disk = read_current(root.as_fd()).unwrap();
    assert_eq!(generation_of(&on_disk["web/2"].0, "web/2", LEN), Ok(200));
}

const CHILD_ENV: &str = "KV_TEST_SWITCH_FOREVER";

/// Not a test on its own: the child process of the crash test. It switches the volume at
/// `$KV_TEST_SWITCH_FOREVER` to ever newer generations until it is killed.
#[test]
#[ignore = "child process of killing_a_switch_at_random_points_leaves_old_or_new"]
fn switch_forever_child() {
    let dir = std::path::PathBuf::from(std::env::var(CHILD_ENV).unwrap());
    let root = crate::atomic::open_dir(&dir).unwrap();
    recover(root.as_fd()).unwrap();
    let mut g = generation_of(
        &read_current(root.as_fd()).unwrap()["tls.crt"].0,
        "tls.crt",
        LEN,
    )
    .unwrap();
    loop {
        g += 1;
        let switched = switch(
            root.as_fd(),
            &generation(g),
            PERMS,
            Budget::available(root.as_fd()).unwrap(),
        )
        .unwrap();
        remove_version(root.as_fd(), &switched.replaced.unwrap()).unwrap();
        let _ = std::fs::write(dir.with_extension("ready"), b"");
    }
}

#[test]
fn killing_a_switch_at_random_points_leaves_old_or_new() {
    let fs = Tmpfs::new("layout-crash", 4 << 20);
    let root = fs.root();
    write_initial(root.as_fd(), &generation(0), PERMS, Budget::unlimited()).unwrap();
    let ready = fs.dir.with_extension("ready");
    let mut mid_switch = 0;
    let mut last = 0;
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..60 {
        let _ = std::fs::remove_file(&ready);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "volume::versioned::tests::switch_forever_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &fs.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !ready.exists() {
            assert!(started.elapsed().as_secs() < 30, "the child never switched");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child died on its own"
            );
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_micros(seed % 3000));
        child.kill().unwrap();
        child.wait().unwrap();

        // Before recovery: what readers see through `..data` is one complete generation.
        let on_disk = read_current(root.as_fd()).unwrap();
        let gens: BTreeSet<u64> = PATHS
            .iter()
            .map(|p| generation_of(&on_disk[*p].0, p, LEN).unwrap())
            .collect();
        assert_eq!(on_disk.len(), PATHS.len());
        assert_eq!(gens.len(), 1, "mixed generations {gens:?}");
        let g = *gens.iter().next().unwrap();
        assert!(g >= last, "went back from {last} to {g}");
        last = g;
        let leftovers = version_dirs(&fs.dir).len() > 1
            || std::fs::symlink_metadata(fs.dir.join(DATA_TMP)).is_ok();
        if leftovers {
            mid_switch += 1;
        }
        let report = recover(root.as_fd()).unwrap();
        assert_eq!(report.any(), leftovers || report.fixed_links > 0);
        assert_eq!(version_dirs(&fs.dir).len(), 1);
        read_volume(&fs.dir).unwrap();
    }
    assert!(mid_switch > 0, "no kill landed in the middle of a switch");
    assert!(last > 0, "the children switched");
}

#[test]
fn the_written_stamp_notices_any_touch_without_opening_a_file() {
    let fs = Tmpfs::new("layout-stamp", 1 << 20);
    let root = fs.root();
    let files = generation(1);
    let written = write_initial(root.as_fd(), &files, PERMS, Budget::unlimited()).unwrap();
    assert_eq!(written.digest, digest(&files, PERMS));
    assert_eq!(written.version, current(root.as_fd()).unwrap().unwrap());
    assert!(is_intact(root.as_fd(), &written));
    // Equal volumes have equal digests; any byte, mode, group or path makes another.
    assert_eq!(digest(&generation(1), PERMS), written.digest);
    let mut other = generation(1);
    other[0].mode = 0o444;
    for d in [
        digest(&generation(2), PERMS),
        digest(&other, PERMS),
        digest(&files, Perms { gid: None, ..PERMS }),
        digest(&files[1..], PERMS),
    ] {
        assert_ne!(d, written.digest);
    }
    let data = fs.dir.join(&written.version);
    use std::os::unix::fs::PermissionsExt;
    type Touch = Box<dyn Fn(&Path)>;
    let touches: Vec<(&str, Touch)> = vec![
        (
            "chmod",
            Box::new(|d: &Path| {
                std::fs::set_permissions(d.join("ca.pem"), std::fs::Permissions::from_mode(0o444))
                    .unwrap()
            }),
        ),
        (
            "same-size write",
            Box::new(|d: &Path| {
                std::fs::write(d.join("tls.key"), content(9, "tls.key", LEN)).unwrap()
            }),
        ),
        (
            "fifo",
            Box::new(|d: &Path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    d.join("x"),
                    rustix::fs::FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap()
            }),
        ),
        (
            "link",
            Box::new(|d: &Path| {
                std::fs::remove_file(d.join("tls.crt")).unwrap();
                std::os::unix::fs::symlink("/dev/zero", d.join("tls.crt")).unwrap();
            }),
        ),
        (
            "subdir entry",
            Box::new(|d: &Path| std::fs::write(d.join("web/junk"), b"x").unwrap()),
        ),
    ];
    for (what, touch) in touches {
        let written = switch(
            root.as_fd(),
            &files,
            PERMS,
            Budget::available(root.as_fd()).unwrap(),
        )
        .unwrap()
        .written;
        assert!(is_intact(root.as_fd(), &written), "{what}: intact before");
        touch(&fs.dir.join(&written.version));
        assert!(!is_intact(root.as_fd(), &written), "{what}: not noticed");
        recover(root.as_fd()).unwrap();
    }
    // `..data` pointed elsewhere.
    let written = switch(root.as_fd(), &files, PERMS, Budget::unlimited())
        .unwrap()
        .written;
    std::fs::remove_file(fs.dir.join(DATA)).unwrap();
    std::os::unix::fs::symlink("..2020_01_01_00_00_00.000000000", fs.dir.join(DATA)).unwrap();
    assert!(!is_intact(root.as_fd(), &written));
    let _ = data;
}

#[test]
fn a_link_swapped_in_for_a_new_subdirectory_is_never_followed() {
    let fs = Tmpfs::new("layout-nofollow", 1 << 20);
    let root = fs.root();
    write_initial(root.as_fd(), &generation(1), PERMS, Budget::unlimited()).unwrap();
    // A directory elsewhere on the host, as a pod would aim at it.
    let outside = TempDir::new("layout-nofollow-target");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&outside.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let before = std::fs::metadata(&outside.0).unwrap();
    SWAP_FOR_LINK.with(|s| *s.borrow_mut() = Some(outside.0.clone()));
    let result = switch(root.as_fd(), &generation(2), PERMS, Budget::unlimited());
    SWAP_FOR_LINK.with(|s| *s.borrow_mut() = None);
    assert!(result.is_err(), "the swapped link was used");
    let after = std::fs::metadata(&outside.0).unwrap();
    assert_eq!(
        (after.mode(), after.gid(), after.uid()),
        (before.mode(), before.gid(), before.uid()),
        "kv changed a directory outside the volume"
    );
    assert_eq!(
        std::fs::read_dir(&outside.0).unwrap().count(),
        0,
        "nothing written outside"
    );
    // The current version is untouched and the next switch works.
    assert!(matches(root.as_fd(), &generation(1)).unwrap());
    switch(root.as_fd(), &generation(2), PERMS, Budget::unlimited()).unwrap();
    assert!(matches(root.as_fd(), &generation(2)).unwrap());
}
