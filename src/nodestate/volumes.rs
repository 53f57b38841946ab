//! What the rotation agent knows about each rotating volume: one record and one status file per
//! volume in `<root>/volumes/`.
//!
//! A record holds the options JSON exactly as kubelet passed it to mount, so the agent can run
//! the same resolve → fetch → layout steps again. For a service principal that JSON includes the
//! client secret kubelet read from the pod's secretRef: records therefore live only in the
//! root-only node state (`0700`, files `0600`) on `/run`, a memory-backed tmpfs gone at reboot
//! together with the volumes it describes. That is the trust kubelet already has (it holds the
//! secret and passes it in argv); the secret never reaches a disk, a log or an error.
//!
//! The status says what the agent last wrote into the volume ([`Written`]: a digest of the
//! paths, bytes and modes, and a stamp of the tree's metadata as it left it), so a refresh
//! decides "changed" without ever reading the pod-writable files.
//!
//! A record is named after the SHA-256 of its mount dir (fixed length, stable across
//! processes), so a mount and an unmount of one dir find the same file without listing; the
//! volume's lock and its agent mount use the same name.

use super::{private, NodeState};
use crate::error::{Code, Error, Result};
use rustix::fd::OwnedFd;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// Record format written by this release (2: the agent's own mount of the volume).
const FORMAT: u32 = 2;
/// Formats this release reads (1: volumes mounted by an older kv, without an agent mount).
const READABLE: [u32; 2] = [1, 2];
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
    /// The volume is mounted read-only for the pod (`kubernetes.io/readwrite: ro`).
    #[serde(default)]
    pub read_only: bool,
    /// The agent's own writable mount of the volume's tmpfs (`<root>/mnt/<name>`); `None` for
    /// a volume an older kv mounted.
    #[serde(default)]
    pub agent_mount: Option<PathBuf>,
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
            agent_mount: None,
        }
    }

    /// The record's file name stem: hex SHA-256 of the mount dir.
    pub fn name(&self) -> String {
        name_of(&self.dir)
    }

    /// The refresh interval.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.interval_secs)
    }

    /// The pod's namespace ("" when kubelet gave none): the unit of fairness.
    pub fn namespace(&self) -> &str {
        self.pod.namespace.as_deref().unwrap_or("")
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
            .field("agent_mount", &self.agent_mount)
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

/// What kv last wrote into a rotating volume: enough to tell, without reading a byte of the
/// pod-writable files, whether a fresh fetch differs and whether anyone touched the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The version directory (`..<timestamp>`) `..data` names.
    pub version: String,
    /// SHA-256 (hex) of the files as written: paths, bytes, modes, directory mode and group.
    pub digest: String,
    /// SHA-256 (hex) of the version tree's metadata as kv left it (`fstatat` without following
    /// links: inode, type, mode, owner, size, change time of every directory and file). Any
    /// write, chmod, rename, link or new entry by the pod changes it.
    pub stamp: String,
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
    /// What is in the volume (written by the mount, then by every switch).
    #[serde(default)]
    pub written: Option<Written>,
}

/// The hex SHA-256 of a mount dir: the name of its record, lock and agent mount.
pub fn name_of(dir: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(dir.as_os_str().as_bytes()))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    super::unix_now().as_secs()
}

/// Records that [`Volumes::load_all`] could read, and what it skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid records, ordered by name.
    pub records: Vec<Record>,
    /// One line per skipped file: its name and why (never its content).
    pub problems: Vec<String>,
}

/// The records directory `<root>/volumes`.
#[derive(Debug, Clone)]
pub struct Volumes {
    state: NodeState,
}

impl NodeState {
    /// The rotating volumes' records (nothing is opened or created until used).
    pub fn volumes(&self) -> Volumes {
        Volumes {
            state: self.clone(),
        }
    }
}

const DIR: &str = "volumes";

impl Volumes {
    /// `<root>/volumes`.
    pub fn dir(&self) -> PathBuf {
        self.state.root().join(DIR)
    }

    fn create(&self) -> Result<OwnedFd> {
        self.state.open_dir(DIR)
    }

    fn existing(&self) -> Result<Option<OwnedFd>> {
        private::open_existing(&self.dir()).map_err(|e| self.state.error(DIR, &e))
    }

    /// Saves (replaces) the record of `record.dir`.
    pub fn save(&self, record: &Record) -> Result<()> {
        let fd = self.create()?;
        let mut json = serde_json::to_vec(record)
            .map_err(|e| Error::new(Code::Internal, format!("record: {e}")))?;
        let result = private::write(&fd, &format!("{}.json", record.name()), &json)
            .map_err(|e| self.state.error(DIR, &e));
        json.zeroize();
        result
    }

    /// Saves the status of the volume at `dir`.
    pub fn save_status(&self, dir: &Path, status: &Status) -> Result<()> {
        let fd = self.create()?;
        let json = serde_json::to_vec(status)
            .map_err(|e| Error::new(Code::Internal, format!("status: {e}")))?;
        private::write(&fd, &format!("{}.status.json", name_of(dir)), &json)
            .map_err(|e| self.state.error(DIR, &e))
    }

    /// The status of the volume at `dir`: the default for a volume never refreshed, or one
    /// whose status file is unreadable (it is rewritten after the next refresh).
    pub fn load_status(&self, dir: &Path) -> Status {
        let Ok(Some(fd)) = self.existing() else {
            return Status::default();
        };
        private::read_checked(
            &fd,
            &format!("{}.status.json", name_of(dir)),
            MAX_FILE_BYTES,
        )
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
    }

    /// The record of the volume at `dir`, if there is a valid one.
    pub fn load(&self, dir: &Path) -> Option<Record> {
        self.load_named(&name_of(dir))
    }

    /// The record named `name` (the SHA-256 of its mount dir), if there is a valid one.
    pub(super) fn load_named(&self, name: &str) -> Option<Record> {
        let fd = self.existing().ok()??;
        let bytes = private::read_checked(&fd, &format!("{name}.json"), MAX_FILE_BYTES).ok()??;
        parse(&bytes, name).ok()
    }

    /// Every valid record. Files that are not kv's (other names, links, not regular, not
    /// root-only) or that do not parse are skipped and reported, never trusted.
    pub fn load_all(&self) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        let Some(fd) = self.existing()? else {
            return Ok(loaded);
        };
        let mut names = private::names(&fd);
        names.sort();
        for name in names {
            if name.ends_with(".status.json") || name.starts_with(".tmp") {
                continue;
            }
            let shown = crate::error::printable(&name);
            let Some(stem) = name.strip_suffix(".json").filter(|s| is_name(s)) else {
                loaded
                    .problems
                    .push(format!("{shown}: not a volume record (ignored)"));
                continue;
            };
            match private::read_checked(&fd, &name, MAX_FILE_BYTES) {
                Ok(Some(bytes)) => match parse(&bytes, stem) {
                    Ok(r) => loaded.records.push(r),
                    Err(why) => loaded.problems.push(format!("{shown}: {why}")),
                },
                Ok(None) => {}
                Err(why) => loaded.problems.push(format!("{shown}: {why} (ignored)")),
            }
        }
        Ok(loaded)
    }

    /// Removes the record and status of the volume at `dir` (unmount, garbage collection).
    /// A missing record is fine.
    pub fn remove(&self, dir: &Path) -> Result<()> {
        let Some(fd) = self.existing()? else {
            return Ok(());
        };
        let stem = name_of(dir);
        for name in [format!("{stem}.json"), format!("{stem}.status.json")] {
            match rustix::fs::unlinkat(&fd, name.as_str(), rustix::fs::AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(self.state.error(&format!("{DIR}/{name}"), &e.into())),
            }
        }
        Ok(())
    }

    /// Removes status files whose record is gone (a refresh that ended after its volume's
    /// unmount); returns how many.
    pub(super) fn sweep_statuses(&self) -> usize {
        let Ok(Some(fd)) = self.existing() else {
            return 0;
        };
        let names = private::names(&fd);
        let mut removed = 0;
        for stem in names.iter().filter_map(|n| n.strip_suffix(".status.json")) {
            if !is_name(stem) || names.contains(&format!("{stem}.json")) {
                continue;
            }
            // Under the volume's lock: a mount saves the status just before the record.
            let Some(_lock) = self.state.try_lock_name(stem) else {
                continue;
            };
            if self.load_named(stem).is_none() {
                private::remove(&fd, &format!("{stem}.status.json"));
                removed += 1;
            }
        }
        removed
    }

    /// How many records there are (for `kv doctor`).
    pub fn count(&self) -> usize {
        self.existing()
            .ok()
            .flatten()
            .map(|fd| {
                private::names(&fd)
                    .iter()
                    .filter(|n| n.ends_with(".json") && !n.ends_with(".status.json"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// A record from its bytes, checked against the name it was stored under.
fn parse(bytes: &[u8], stem: &str) -> std::result::Result<Record, String> {
    match serde_json::from_slice::<Record>(bytes) {
        Ok(r) if !READABLE.contains(&r.format) => Err(format!(
            "record format {} is not one of {READABLE:?} (ignored)",
            r.format
        )),
        Ok(r) if r.name() != stem => {
            Err("named for another mount dir than the one it holds (ignored)".into())
        }
        Ok(r) => Ok(r),
        // serde's message may quote the content: only say where it broke.
        Err(e) => Err(format!(
            "not valid JSON (line {}, column {}; ignored)",
            e.line(),
            e.column()
        )),
    }
}

/// A record or lock name: 64 lower-case hex digits.
pub(super) fn is_name(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
        let store = NodeState::at(tmp.0.join("state")).volumes();
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
    fn foreign_corrupt_and_linked_files_are_reported_not_trusted() {
        let tmp = TempDir::new("record-corrupt");
        let store = NodeState::at(&tmp.0).volumes();
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
        let store = NodeState::at(&tmp.0).volumes();
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
        assert!(e.message().contains("owned by uid 4321"), "{e}");
    }
}
