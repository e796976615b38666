//! Writes a volume's files all at once, as the kubelet's AtomicWriter
//! (`pkg/volume/util/atomic_writer.go`) does for configMap, secret, downwardAPI and projected
//! volumes: a reader of the volume sees either the whole old set of files or the whole new one.
//!
//! Layout of a volume directory:
//!
//! ```text
//! ..2025_01_31_12_00_00.123456789/   the payload (0755; files with their modes)
//! ..data -> ..2025_01_31_12_00_00.123456789
//! token -> ..data/token               one relative symlink per top-level name
//! dir -> ..data/dir                   (a nested path `dir/file` is reached through `dir`)
//! ```
//!
//! A write puts the payload into a fresh hidden timestamped directory, adds the symlinks of new
//! top-level names, points a temporary `..data_tmp` symlink at the new directory and renames it
//! over `..data` (the atomic step), then removes top-level names that left the payload and the
//! previous data directory. Nothing is written when the payload (contents and modes) is what
//! the volume already holds. Names starting with `..` are the writer's own.
//!
//! Not safe for concurrent writers of one directory: the pod's worker is the only writer of its
//! volumes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

/// The symlink to the current payload directory.
pub const DATA_DIR: &str = "..data";
/// The symlink renamed over [`DATA_DIR`].
const DATA_DIR_TMP: &str = "..data_tmp";
/// The longest file name and path accepted (Linux's NAME_MAX and PATH_MAX).
const MAX_NAME: usize = 255;
const MAX_PATH: usize = 4096;

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    /// Its contents.
    pub data: Vec<u8>,
    /// Its permission bits (only `0o777` is used).
    pub mode: u32,
}

impl FileProjection {
    /// A file with `data` and `mode`.
    pub fn new(data: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self {
            data: data.into(),
            mode,
        }
    }
}

/// The files of a volume, by path relative to the volume.
pub type Payload = BTreeMap<String, FileProjection>;

/// Why a payload could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    /// A path of the payload is not a plain relative path inside the volume.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AtomicWriteError {
    let path = path.to_owned();
    move |source| AtomicWriteError::Io { what, path, source }
}

/// A relative path that stays below its base (no `..`, not absolute). Volume names and
/// subPaths are checked with it; payload paths with the stricter [`payload_path`].
pub fn safe_relative(p: &str) -> Result<&Path, String> {
    let path = Path::new(p);
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(path)
    } else {
        Err(format!(
            "path {p:?} must be relative and may not contain '..'"
        ))
    }
}

/// A payload path, cleaned (`./a//b` is `a/b`): not empty, relative, no `..` element, not
/// starting with `..` (those names are the writer's), no name longer than 255 bytes and no
/// path longer than 4096.
pub fn payload_path(p: &str) -> Result<String, AtomicWriteError> {
    let invalid = |reason| AtomicWriteError::InvalidPath {
        path: p.to_owned(),
        reason,
    };
    if p.len() > MAX_PATH {
        return Err(invalid("must be at most 4096 characters"));
    }
    safe_relative(p).map_err(|_| invalid("must be relative and may not contain '..'"))?;
    let names: Vec<&str> = Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect();
    match names.first() {
        None => Err(invalid("must not be empty")),
        Some(first) if first.starts_with("..") => Err(invalid("must not start with '..'")),
        Some(_) if names.iter().any(|n| n.len() > MAX_NAME) => {
            Err(invalid("file names must be at most 255 characters"))
        }
        Some(_) => Ok(names.join("/")),
    }
}

/// The first name of a cleaned payload path: the volume's symlink that reaches it.
fn top_level(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// Writes `payload` into the volume directory `target` (which must exist) if it differs from
/// what the volume holds. Returns whether it wrote.
pub fn write(target: &Path, payload: &Payload) -> Result<bool, AtomicWriteError> {
    let mut clean: BTreeMap<String, &FileProjection> = BTreeMap::new();
    for (path, file) in payload {
        clean.insert(payload_path(path)?, file);
    }
    std::fs::metadata(target).map_err(io("reading", target))?;
    let data_link = target.join(DATA_DIR);
    let old_dir = match std::fs::read_link(&data_link) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("reading", &data_link)(e)),
    };
    let tops: BTreeSet<&str> = clean.keys().map(|p| top_level(p)).collect();
    let stale = stale_entries(target, &tops)?;
    if let Some(old) = &old_dir {
        if stale.is_empty() && links_in_place(target, &tops) && holds(&target.join(old), &clean)? {
            return Ok(false);
        }
    }

    let new_dir = new_data_dir(target)?;
    let name = new_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let written = write_files(&new_dir, &clean)
        .and_then(|()| visible_links(target, &tops))
        .and_then(|()| swap_data_link(target, &name));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&new_dir);
        return Err(e);
    }
    for entry in stale {
        remove_any(&target.join(entry))?;
    }
    // The previous data directory, and any left by an interrupted write.
    for entry in std::fs::read_dir(target).map_err(io("reading", target))? {
        let entry = entry.map_err(io("reading", target))?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with("..") && n != DATA_DIR && n != name {
            remove_any(&entry.path())?;
        }
    }
    Ok(true)
}

/// The user-visible entries of `target` that the payload no longer has.
fn stale_entries(target: &Path, tops: &BTreeSet<&str>) -> Result<Vec<String>, AtomicWriteError> {
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(target).map_err(io("reading", target))? {
        let entry = entry.map_err(io("reading", target))?;
        let n = entry.file_name().to_string_lossy().into_owned();
        if !n.starts_with("..") && !tops.contains(n.as_str()) {
            stale.push(n);
        }
    }
    Ok(stale)
}

/// Whether every top-level name is the symlink `name -> ..data/name`.
fn links_in_place(target: &Path, tops: &BTreeSet<&str>) -> bool {
    tops.iter().all(|top| {
        std::fs::read_link(target.join(top)).is_ok_and(|t| t == Path::new(DATA_DIR).join(top))
    })
}

/// Whether the data directory `dir` holds exactly `payload`: the same files with the same
/// contents and modes, and nothing else.
fn holds(
    dir: &Path,
    payload: &BTreeMap<String, &FileProjection>,
) -> Result<bool, AtomicWriteError> {
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for path in payload.keys() {
        let mut prefix = String::new();
        for name in path.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(name);
            wanted.insert(prefix.clone());
        }
    }
    let mut present = BTreeSet::new();
    if !walk(dir, "", &mut present)? || present != wanted {
        return Ok(false);
    }
    for (path, file) in payload {
        let p = dir.join(path);
        let meta = std::fs::symlink_metadata(&p).map_err(io("reading", &p))?;
        if !meta.is_file() || meta.permissions().mode() & 0o777 != file.mode & 0o777 {
            return Ok(false);
        }
        if std::fs::read(&p).map_err(io("reading", &p))? != file.data {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Collects the relative paths of everything below `dir`; false when `dir` does not exist.
fn walk(dir: &Path, prefix: &str, found: &mut BTreeSet<String>) -> Result<bool, AtomicWriteError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io("reading", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("reading", dir))?;
        let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let kind = entry.file_type().map_err(io("reading", &entry.path()))?;
        if kind.is_dir() {
            walk(&entry.path(), &format!("{rel}/"), found)?;
        }
        found.insert(rel);
    }
    Ok(true)
}

/// A new hidden data directory `..<UTC time>.<nanoseconds>`, mode 0755 whatever the umask.
fn new_data_dir(target: &Path) -> Result<PathBuf, AtomicWriteError> {
    let now = k8s_openapi::jiff::Timestamp::now();
    let base = format!(
        "..{}.{:09}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond()
    );
    for attempt in 0u32.. {
        let dir = if attempt == 0 {
            target.join(&base)
        } else {
            target.join(format!("{base}{attempt}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                set_mode(&dir, 0o755)?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {}
            Err(e) => return Err(io("creating", &dir)(e)),
        }
    }
    unreachable!("the loop returns")
}

fn set_mode(path: &Path, mode: u32) -> Result<(), AtomicWriteError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", path))
}

/// Writes the files into the new data directory; directories on the way are 0755 and files
/// get their own mode, whatever the umask.
fn write_files(
    dir: &Path,
    payload: &BTreeMap<String, &FileProjection>,
) -> Result<(), AtomicWriteError> {
    for (rel, file) in payload {
        let path = dir.join(rel);
        let mut parent = dir.to_owned();
        let names: Vec<&str> = rel.split('/').collect();
        for name in &names[..names.len() - 1] {
            parent.push(name);
            match std::fs::create_dir(&parent) {
                Ok(()) => set_mode(&parent, 0o755)?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("creating", &parent)(e)),
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode & 0o777)
            .open(&path)
            .map_err(io("creating", &path))?;
        f.write_all(&file.data).map_err(io("writing", &path))?;
        set_mode(&path, file.mode & 0o777)?;
    }
    Ok(())
}

/// Makes every top-level name the symlink `name -> ..data/name`, replacing whatever else is
/// there (a plain file of a volume written before the writer was used).
fn visible_links(target: &Path, tops: &BTreeSet<&str>) -> Result<(), AtomicWriteError> {
    for top in tops {
        let link = target.join(top);
        let want = Path::new(DATA_DIR).join(top);
        match std::fs::read_link(&link) {
            Ok(t) if t == want => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            _ => remove_any(&link)?,
        }
        std::os::unix::fs::symlink(&want, &link).map_err(io("linking", &link))?;
    }
    Ok(())
}

/// Points `..data` at the data directory `name`: a new `..data_tmp` symlink renamed over it.
fn swap_data_link(target: &Path, name: &str) -> Result<(), AtomicWriteError> {
    let tmp = target.join(DATA_DIR_TMP);
    remove_any(&tmp)?;
    std::os::unix::fs::symlink(name, &tmp).map_err(io("linking", &tmp))?;
    if let Err(e) = std::fs::rename(&tmp, target.join(DATA_DIR)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("renaming", &tmp)(e));
    }
    Ok(())
}

/// Removes a file, symlink or directory tree; nothing there is fine.
fn remove_any(path: &Path) -> Result<(), AtomicWriteError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| ((*p).to_owned(), FileProjection::new(*d, *m)))
            .collect()
    }

    /// The data directory `..data` points to, by name.
    fn data_dir(target: &Path) -> String {
        std::fs::read_link(target.join(DATA_DIR))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The names in `target`, sorted.
    fn entries(target: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_payload_lives_in_a_data_directory_reached_through_relative_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let p = payload(&[("token", "t1", 0o644), ("k8s/ns", "default", 0o644)]);
        assert!(write(t, &p).unwrap());
        let data = data_dir(t);
        assert!(data.starts_with("..2"), "{data}");
        assert!(!data.contains('/'), "relative: {data}");
        assert_eq!(
            entries(t),
            sorted(&["..data", data.as_str(), "k8s", "token"])
        );
        assert_eq!(
            std::fs::read_link(t.join("token")).unwrap(),
            Path::new("..data/token")
        );
        assert_eq!(
            std::fs::read_link(t.join("k8s")).unwrap(),
            Path::new("..data/k8s")
        );
        assert!(std::fs::symlink_metadata(t.join(&data)).unwrap().is_dir());
        assert_eq!(std::fs::read_to_string(t.join("token")).unwrap(), "t1");
        assert_eq!(
            std::fs::read_to_string(t.join("k8s/ns")).unwrap(),
            "default"
        );
        assert_eq!(mode(&t.join(&data)), 0o755);
        assert_eq!(mode(&t.join(&data).join("k8s")), 0o755);
    }

    #[test]
    fn an_unchanged_payload_is_not_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let p = payload(&[("a", "1", 0o644), ("d/b", "2", 0o600)]);
        assert!(write(t, &p).unwrap());
        let first = data_dir(t);
        let before = std::fs::symlink_metadata(t.join(&first).join("a"))
            .unwrap()
            .modified()
            .unwrap();
        assert!(!write(t, &p).unwrap());
        assert_eq!(data_dir(t), first);
        let after = std::fs::symlink_metadata(t.join(&first).join("a"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn a_changed_payload_gets_a_new_data_directory_and_the_old_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        assert!(write(t, &payload(&[("a", "1", 0o644)])).unwrap());
        let first = data_dir(t);
        assert!(write(t, &payload(&[("a", "2", 0o644)])).unwrap());
        let second = data_dir(t);
        assert_ne!(first, second);
        assert_eq!(entries(t), sorted(&["..data", second.as_str(), "a"]));
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "2");
        // A mode alone is a change too.
        assert!(write(t, &payload(&[("a", "2", 0o400)])).unwrap());
        assert_eq!(mode(&t.join("a")), 0o400);
    }

    #[test]
    fn a_removed_key_removes_its_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        write(t, &payload(&[("a", "1", 0o644), ("b", "2", 0o644)])).unwrap();
        assert!(write(t, &payload(&[("a", "1", 0o644)])).unwrap());
        assert_eq!(entries(t), sorted(&["..data", data_dir(t).as_str(), "a"]));
        // A nested file leaving (its directory stays) is a change.
        write(t, &payload(&[("d/x", "1", 0o644), ("d/y", "2", 0o644)])).unwrap();
        assert!(write(t, &payload(&[("d/x", "1", 0o644)])).unwrap());
        assert!(!t.join("d/y").exists());
        assert!(t.join("d/x").exists());
        // An empty payload (an optional ConfigMap that is missing) leaves only the writer's.
        assert!(write(t, &Payload::new()).unwrap());
        assert_eq!(entries(t), sorted(&["..data", data_dir(t).as_str()]));
    }

    #[test]
    fn file_modes_are_honoured_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        write(
            t,
            &payload(&[
                ("secret", "s", 0o400),
                ("open", "o", 0o777),
                ("plain", "p", 0o644),
            ]),
        )
        .unwrap();
        assert_eq!(mode(&t.join("secret")), 0o400);
        assert_eq!(mode(&t.join("open")), 0o777);
        assert_eq!(mode(&t.join("plain")), 0o644);
    }

    #[test]
    fn paths_that_leave_the_volume_or_use_the_writers_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "..data/x",
            "..x",
            "",
            ".",
            &"n".repeat(256),
        ] {
            let err = write(t, &payload(&[("ok", "1", 0o644), (bad, "2", 0o644)]));
            assert!(
                matches!(err, Err(AtomicWriteError::InvalidPath { .. })),
                "{bad:?}: {err:?}"
            );
        }
        assert!(entries(t).is_empty(), "nothing written");
        assert_eq!(payload_path("./a//b").unwrap(), "a/b");
        assert_eq!(payload_path("a..b").unwrap(), "a..b");
    }

    #[test]
    fn files_of_a_volume_written_in_place_before_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        std::fs::write(t.join("a"), "old").unwrap();
        std::fs::write(t.join("gone"), "old").unwrap();
        assert!(write(t, &payload(&[("a", "new", 0o644)])).unwrap());
        assert_eq!(entries(t), sorted(&["..data", data_dir(t).as_str(), "a"]));
        assert_eq!(std::fs::read_to_string(t.join("a")).unwrap(), "new");
        assert!(std::fs::symlink_metadata(t.join("a")).unwrap().is_symlink());
    }
}
