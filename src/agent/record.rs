//! What the agent knows about each rotating volume: one record and one status file per volume in
//! `<state>/volumes/` (`/run/kv/volumes/` on a node).
//!
//! A record holds the options JSON exactly as kubelet passed it to mount, so the agent can run
//! the same resolve → fetch → layout steps again. For a service principal that JSON includes the
//! client secret kubelet read from the pod's secretRef: records therefore live only in a root-only
//! directory (`0700`, files `0600`, owned by root) on `/run`, a memory-backed tmpfs that is gone
//! at reboot together with the volumes it describes. That is the same trust kubelet already has
//! (it holds the secret and passes it in argv); the secret never reaches a disk, a log or an
//! error. Every write goes through [`crate::atomic`], so a reader sees a whole record or none.
//!
//! A record is named after the SHA-256 of its mount dir (fixed length, stable across processes),
//! so a mount and an unmount of one dir find the same file without listing.

use crate::error::{Code, Error, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Record format written by this release.
const FORMAT: u32 = 1;
/// No record or status is larger (kubelet's options are a few KiB).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The pod a volume belongs to, as kubelet reported it at mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `kubernetes.io/pod.uid`.
    pub uid: Option<String>,
    /// `kubernetes.io/pod.namespace`.
    pub namespace: Option<String>,
    /// `kubernetes.io/pod.name`.
    pub name: Option<String>,
    /// `kubernetes.io/serviceAccount.name`.
    pub service_account: Option<String>,
}

/// One rotating volume.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version.
    pub format: u32,
    /// The mount dir kubelet gave (`.../pods/<uid>/volumes/azure~kv/<name>`).
    pub dir: PathBuf,
    /// The pod.
    pub pod: PodRef,
    /// kubelet's options JSON as passed to mount (may hold a service principal's secret).
    pub options: String,
    /// Refresh interval in seconds, after the node's bounds.
    pub interval_secs: u64,
    /// The identity mode, for status and logs (`service-principal`, `pod-identity`, ...).
    pub identity: String,
    /// When the volume was mounted (Unix seconds).
    pub mounted_at: u64,
    /// The volume is mounted read-only (`kubernetes.io/readwrite: ro`): made writable only
    /// for the switch.
    #[serde(default)]
    pub read_only: bool,
}

impl Record {
    /// A record for a volume mounted now.
    pub fn new(
        dir: PathBuf,
        pod: PodRef,
        options: String,
        interval: std::time::Duration,
        identity: &str,
        read_only: bool,
    ) -> Record {
        Record {
            format: FORMAT,
            dir,
            pod,
            options,
            interval_secs: interval.as_secs().max(1),
            identity: identity.to_string(),
            mounted_at: now_secs(),
            read_only,
        }
    }

    /// The record of a volume just mounted at `dir` from kubelet's `options` JSON.
    pub fn for_volume(
        dir: &Path,
        options: &str,
        spec: &crate::options::VolumeSpec,
        interval: std::time::Duration,
    ) -> Record {
        Record::new(
            dir.to_path_buf(),
            PodRef {
                uid: spec.pod.uid.clone(),
                namespace: spec.pod.namespace.clone(),
                name: spec.pod.name.clone(),
                service_account: spec.pod.service_account.clone(),
            },
            options.to_string(),
            interval,
            &spec.identity.describe(),
            spec.read_only,
        )
    }

    /// The record's file name stem: hex SHA-256 of the mount dir.
    pub fn name(&self) -> String {
        name_of(&self.dir)
    }

    /// The refresh interval.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.interval_secs)
    }

    /// `namespace/name` of the pod, for logs.
    pub fn pod_label(&self) -> String {
        format!(
            "{}/{}",
            self.pod.namespace.as_deref().unwrap_or("?"),
            self.pod.name.as_deref().unwrap_or("?")
        )
    }
}

// Never prints the options: they may hold a client secret.
impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("dir", &self.dir)
            .field("pod", &self.pod)
            .field("options", &"<redacted>")
            .field("interval_secs", &self.interval_secs)
            .field("identity", &self.identity)
            .finish()
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.options.zeroize();
    }
}

/// The last error of a volume, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// Catalogue code (`KV403_FORBIDDEN`, ...).
    pub code: String,
    /// The one-line message.
    pub message: String,
    /// When (Unix seconds).
    pub at: u64,
}

/// A volume's rotation state, rewritten after every refresh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Last refresh that fetched everything (Unix seconds).
    pub last_success: Option<u64>,
    /// Last switch to new files (Unix seconds).
    pub last_switch: Option<u64>,
    /// Number of switches since mount.
    pub switches: u64,
    /// The last failure, kept after a later success for `kv agent status`.
    pub last_error: Option<LastError>,
    /// Failures since the last success (drives the backoff).
    pub failures: u32,
    /// Object → version id of the files in place.
    pub versions: BTreeMap<String, String>,
    /// When the next refresh is due (Unix milliseconds).
    pub next_due_ms: u64,
}

/// The hex SHA-256 of a mount dir: the name of its record.
pub fn name_of(dir: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(dir.as_os_str().as_bytes()))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Records that [`Store::load_all`] could read, and what it skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid records, ordered by name.
    pub records: Vec<Record>,
    /// One line per skipped file: its name and why (never its content).
    pub problems: Vec<String>,
}

/// The records directory.
#[derive(Debug, Clone)]
pub struct Store {
    state: PathBuf,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        Code::Mount,
        format!("cannot {what} {}: {e}", path.display()),
    )
}

impl Store {
    /// The store under `state` (normally [`crate::config::DEFAULT_STATE_DIR`]).
    pub fn new(state: impl Into<PathBuf>) -> Store {
        Store {
            state: state.into(),
        }
    }

    /// `<state>/volumes`.
    pub fn dir(&self) -> PathBuf {
        self.state.join("volumes")
    }

    /// Opens `<state>/volumes`, creating it (and `<state>`) `0700`. An existing directory must
    /// be a real directory owned by this user; group/other bits are removed.
    fn open(&self, create: bool) -> Result<Option<OwnedFd>> {
        let dir = self.dir();
        if create {
            for d in [&self.state, &dir] {
                use std::os::unix::fs::DirBuilderExt;
                match std::fs::DirBuilder::new().mode(0o700).create(d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("create", d, e)),
                }
            }
        }
        let fd = match crate::atomic::open_dir(&dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) => return Err(io_err("open", &dir, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("inspect", &dir, e))?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            return Err(Error::new(
                Code::Mount,
                format!(
                    "{} belongs to uid {}, not {me}: kv keeps volume records only in its own directory (remove it)",
                    dir.display(),
                    st.st_uid
                ),
            ));
        }
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
                .map_err(|e| io_err("chmod", &dir, e))?;
        }
        Ok(Some(fd))
    }

    /// Saves (replaces) the record of `record.dir`.
    pub fn save(&self, record: &Record) -> Result<()> {
        let fd = self
            .open(true)?
            .ok_or_else(|| io_err("open", &self.dir(), "missing"))?;
        let mut json = serde_json::to_vec(record)
            .map_err(|e| Error::new(Code::Internal, format!("record: {e}")))?;
        let result =
            crate::atomic::write_at(&fd, &format!("{}.json", record.name()), &json, 0o600, None)
                .map_err(|e| io_err("write the record in", &self.dir(), e));
        json.zeroize();
        result
    }

    /// Saves the status of the volume at `dir`.
    pub fn save_status(&self, dir: &Path, status: &Status) -> Result<()> {
        let fd = self
            .open(true)?
            .ok_or_else(|| io_err("open", &self.dir(), "missing"))?;
        let json = serde_json::to_vec(status)
            .map_err(|e| Error::new(Code::Internal, format!("status: {e}")))?;
        crate::atomic::write_at(
            &fd,
            &format!("{}.status.json", name_of(dir)),
            &json,
            0o600,
            None,
        )
        .map_err(|e| io_err("write the status in", &self.dir(), e))
    }

    /// The status of the volume at `dir`: the default for a volume never refreshed, or one
    /// whose status file is unreadable (it is rewritten after the next refresh).
    pub fn load_status(&self, dir: &Path) -> Status {
        let Ok(Some(fd)) = self.open(false) else {
            return Status::default();
        };
        read_private(fd.as_fd(), &format!("{}.status.json", name_of(dir)))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Every valid record. Files that are not kv's (other names, links, not regular, not
    /// root-only) or that do not parse are skipped and reported, never trusted.
    pub fn load_all(&self) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        let Some(fd) = self.open(false)? else {
            return Ok(loaded);
        };
        let mut names = Vec::new();
        let entries =
            rustix::fs::Dir::read_from(&fd).map_err(|e| io_err("list", &self.dir(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &self.dir(), e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            if name == "." || name == ".." || name.ends_with(".status.json") {
                continue;
            }
            let shown = crate::error::printable(&name);
            let Some(stem) = name.strip_suffix(".json").filter(|s| is_name(s)) else {
                loaded
                    .problems
                    .push(format!("{shown}: not a volume record (ignored)"));
                continue;
            };
            let bytes = match read_private(fd.as_fd(), &name) {
                Ok(b) => b,
                Err(why) => {
                    loaded.problems.push(format!("{shown}: {why} (ignored)"));
                    continue;
                }
            };
            let parsed: std::result::Result<Record, _> = serde_json::from_slice(&bytes);
            let mut bytes = bytes;
            bytes.zeroize();
            match parsed {
                Ok(r) if r.format != FORMAT => loaded.problems.push(format!(
                    "{shown}: record format {} is not {FORMAT} (ignored)",
                    r.format
                )),
                Ok(r) if r.name() != stem => loaded.problems.push(format!(
                    "{shown}: named for another mount dir than the one it holds (ignored)"
                )),
                Ok(r) => loaded.records.push(r),
                // serde's message may quote the content: only say where it broke.
                Err(e) => loaded.problems.push(format!(
                    "{shown}: not valid JSON (line {}, column {}; ignored)",
                    e.line(),
                    e.column()
                )),
            }
        }
        Ok(loaded)
    }

    /// Removes the record and status of the volume at `dir` (unmount, garbage collection).
    /// A missing record is fine.
    pub fn remove(&self, dir: &Path) -> Result<()> {
        let Some(fd) = self.open(false)? else {
            return Ok(());
        };
        let stem = name_of(dir);
        for name in [format!("{stem}.json"), format!("{stem}.status.json")] {
            match rustix::fs::unlinkat(&fd, name.as_str(), rustix::fs::AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(io_err("remove", &self.dir().join(&name), e)),
            }
        }
        Ok(())
    }
}

fn is_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Reads a file of the store: a regular file (not through a link), owned by this user, not
/// readable or writable by group or others, at most [`MAX_FILE_BYTES`].
fn read_private(
    dir: rustix::fd::BorrowedFd<'_>,
    name: &str,
) -> std::result::Result<Vec<u8>, String> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => "a symlink".to_string(),
        e => format!("cannot open: {e}"),
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| format!("cannot inspect: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("not a regular file".into());
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me || st.st_mode & 0o077 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:04o}, not {me} and 0600",
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    if st.st_size as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut bytes = Vec::with_capacity(st.st_size as usize);
    let mut buf = [0u8; 8192];
    loop {
        match rustix::io::read(&fd, &mut buf) {
            Ok(0) => break,
            Ok(n) if (bytes.len() + n) as u64 <= MAX_FILE_BYTES => {
                bytes.extend_from_slice(&buf[..n])
            }
            Ok(_) => return Err(format!("larger than {MAX_FILE_BYTES} bytes")),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    buf.zeroize();
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn record(dir: &str) -> Record {
        Record::new(
            PathBuf::from(dir),
            PodRef {
                uid: Some("u-1".into()),
                namespace: Some("ns".into()),
                name: Some("web".into()),
                service_account: Some("sa".into()),
            },
            r#"{"keyvaultname":"v","kubernetes.io/secret/clientsecret":"c2VjcmV0LXZhbHVl"}"#.into(),
            std::time::Duration::from_secs(120),
            "service-principal",
            false,
        )
    }

    #[test]
    fn records_round_trip_root_only() {
        let tmp = TempDir::new("record-roundtrip");
        let store = Store::new(tmp.0.join("state"));
        assert!(
            store.load_all().unwrap().records.is_empty(),
            "no directory yet"
        );
        let a = record("/k/pods/a/volumes/azure~kv/v");
        let b = record("/k/pods/b/volumes/azure~kv/v");
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        store.save(&a).unwrap();
        let loaded = store.load_all().unwrap();
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let mut want = vec![a.clone(), b.clone()];
        want.sort_by_key(|r| r.name());
        assert_eq!(loaded.records, want);
        for d in [tmp.0.join("state"), store.dir()] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let file = store.dir().join(format!("{}.json", a.name()));
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
        assert_eq!(a.name().len(), 64);
        assert!(
            !format!("{a:?}").contains("c2VjcmV0"),
            "Debug never shows the options"
        );

        let mut status = Status {
            last_success: Some(5),
            failures: 2,
            next_due_ms: 99,
            ..Status::default()
        };
        status.versions.insert("cert".into(), "v2".into());
        store.save_status(&a.dir, &status).unwrap();
        assert_eq!(store.load_status(&a.dir), status);
        assert_eq!(store.load_status(&b.dir), Status::default());

        store.remove(&a.dir).unwrap();
        store.remove(&a.dir).unwrap();
        assert_eq!(store.load_all().unwrap().records, std::slice::from_ref(&b));
        assert_eq!(store.load_status(&a.dir), Status::default());
        let left: Vec<_> = std::fs::read_dir(store.dir()).unwrap().collect();
        assert_eq!(
            left.len(),
            1,
            "only b's record: no temp or status files left"
        );
    }

    #[test]
    fn a_mounted_volume_is_recorded_from_its_spec() {
        let json = r#"{"keyvaultname":"kvdemo","keyvaultobjectnames":"s","keyvaultobjecttypes":"secret",
            "tenantid":"contoso.onmicrosoft.com","kubernetes.io/secret/clientid":"aWQ=","kubernetes.io/secret/clientsecret":"c2VjcmV0",
            "kubernetes.io/pod.uid":"u-9","kubernetes.io/pod.namespace":"ns","kubernetes.io/pod.name":"p",
            "kubernetes.io/serviceAccount.name":"sa","kubernetes.io/readwrite":"ro"}"#;
        let spec = crate::options::VolumeSpec::parse(json).unwrap();
        let dir = Path::new("/k/pods/u-9/volumes/azure~kv/v");
        let r = Record::for_volume(dir, json, &spec, std::time::Duration::from_secs(90));
        assert_eq!(r.dir, dir);
        assert_eq!(
            (
                r.pod.uid.as_deref(),
                r.pod.namespace.as_deref(),
                r.pod.name.as_deref(),
                r.pod.service_account.as_deref()
            ),
            (Some("u-9"), Some("ns"), Some("p"), Some("sa"))
        );
        assert_eq!(
            (r.options.as_str(), r.interval_secs, r.read_only),
            (json, 90, true)
        );
        assert_eq!(r.identity, "service principal id");
        assert_eq!(r.pod_label(), "ns/p");
        assert_eq!(r.name(), name_of(dir));
    }

    #[test]
    fn foreign_corrupt_and_linked_files_are_reported_not_trusted() {
        let tmp = TempDir::new("record-corrupt");
        let store = Store::new(&tmp.0);
        let good = record("/k/pods/a/volumes/azure~kv/v");
        store.save(&good).unwrap();
        let dir = store.dir();
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let other = record("/k/pods/b/volumes/azure~kv/v");
        let c = record("/k/pods/c/volumes/azure~kv/v");
        let d = record("/k/pods/d/volumes/azure~kv/v");
        let e = record("/k/pods/e/volumes/azure~kv/v");
        write(
            &format!("{}.json", other.name()),
            b"{\"format\":1, secret-ish garbage",
            0o600,
        );
        write(
            &format!("{}.json", c.name()),
            &serde_json::to_vec(&good).unwrap(),
            0o600,
        );
        write(
            &format!("{}.json", d.name()),
            &serde_json::to_vec(&d).unwrap(),
            0o644,
        );
        std::os::unix::fs::symlink(
            dir.join(format!("{}.json", good.name())),
            dir.join(format!("{}.json", e.name())),
        )
        .unwrap();
        write("notes.txt", b"hello", 0o600);
        let loaded = store.load_all().unwrap();
        assert_eq!(loaded.records, [good]);
        let problems = loaded.problems.join("\n");
        assert_eq!(loaded.problems.len(), 5, "{problems}");
        for want in [
            "not valid JSON",
            "another mount dir",
            "mode 0644",
            "a symlink",
            "notes.txt: not a volume record",
        ] {
            assert!(problems.contains(want), "{want} in {problems}");
        }
        assert!(
            !problems.contains("garbage"),
            "content never quoted: {problems}"
        );
    }

    #[test]
    fn a_store_directory_of_another_user_is_refused() {
        let tmp = TempDir::new("record-owner");
        let store = Store::new(&tmp.0);
        std::fs::create_dir(store.dir()).unwrap();
        std::fs::set_permissions(store.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
        store.save(&record("/k/pods/a/volumes/azure~kv/v")).unwrap();
        assert_eq!(
            std::fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777,
            0o700,
            "tightened"
        );
        rustix::fs::chown(store.dir(), Some(rustix::fs::Uid::from_raw(4321)), None).unwrap();
        let e = store.load_all().unwrap_err();
        assert!(e.message().contains("belongs to uid 4321"), "{e}");
    }
}
