//! The files of `skiff-control snapshot save|restore`: writing a snapshot the API streams
//! (checked before it replaces anything) and building a store from one. The layout is
//! [`crate::store::snapshot`]'s.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::AsyncReadExt as _;

use crate::store::snapshot;
use crate::store::RedbStore;

fn part_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

/// Writes the snapshot read from `body` to `file` (0600), through `file.part`, synced, and
/// renamed into place only once its checksum verifies: a failed save never replaces a good
/// older snapshot under the same name. Returns the snapshot's revision and object count.
pub async fn save(
    file: &Path,
    body: impl futures::AsyncBufRead + Unpin,
) -> anyhow::Result<(u64, usize)> {
    let part = part_path(file);
    let result = async {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .with_context(|| format!("creating {}", part.display()))?;
        // An existing file keeps its mode on open: make sure.
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let mut body = body;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .await
                .context("reading the snapshot from the API server")?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .with_context(|| format!("writing {}", part.display()))?;
        }
        out.sync_all()
            .with_context(|| format!("syncing {}", part.display()))?;
        let checked = snapshot::decode(std::io::BufReader::new(std::fs::File::open(&part)?))
            .context("the snapshot received does not verify")?;
        std::fs::rename(&part, file)
            .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
        anyhow::Ok((checked.revision, checked.objects.len()))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

/// Builds `data_dir/store.redb` from the snapshot `file`; returns the snapshot's revision, the
/// store's new one, and the number of objects. Refuses when the data directory already has a
/// store: restoring never overwrites one (move it aside first, with the server stopped).
pub fn restore(file: &Path, data_dir: &Path) -> anyhow::Result<(u64, u64, usize)> {
    let store = data_dir.join("store.redb");
    anyhow::ensure!(
        !store.exists(),
        "{} already exists: stop skiff-control and move it aside first (restore never \
         overwrites a store)",
        store.display()
    );
    let input = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let decoded = snapshot::decode(std::io::BufReader::new(input))
        .with_context(|| format!("reading {}", file.display()))?;
    let (old, objects) = (decoded.revision, decoded.objects.len());
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))?;
    let new = RedbStore::restore(&store, decoded)
        .with_context(|| format!("writing {}", store.display()))?;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o600))?;
    Ok((old, new, objects))
}
