//! Container logs for the node's `/containerLogs` endpoint: tail, byte limits and follow over
//! the plain log files the runtime writes (no per-line timestamps), and their rotation.
//!
//! Rotation is copytruncate: a log over the size limit is copied to `<n>.log.1` (older copies
//! shift to `.2`, ...) and truncated in place, because the container's process keeps writing
//! to its open descriptor (append mode, so writes land at the new end). A follower notices
//! the file shrinking and starts again from its beginning.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

/// How often a follower looks for new bytes.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(100);
const CHUNK: usize = 64 * 1024;

/// The options of a log request (the kubelet's query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new bytes until the container's instance ends or the client goes.
    pub follow: bool,
    /// The last `n` lines only.
    pub tail_lines: Option<u64>,
    /// At most this many bytes in all.
    pub limit_bytes: Option<u64>,
    /// Only if written within the last `n` seconds. The files carry no timestamps, so this is
    /// decided per file by its modification time: all of it or (when older) nothing.
    pub since_seconds: Option<u64>,
}

/// Errors of reading logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The offset where the last `lines` lines of `file` begin (a trailing partial line counts as
/// a line, as `tail -n` and the kubelet count).
pub fn tail_offset(file: &mut std::fs::File, lines: u64) -> std::io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if lines == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut newlines = 0u64;
    let mut buf = vec![0u8; 8192];
    // A final newline ends the last line; it does not start another.
    let mut skip_last = true;
    while pos > 0 {
        let n = (pos as usize).min(buf.len());
        pos -= n as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut buf[..n])?;
        for i in (0..n).rev() {
            if buf[i] == b'\n' {
                if skip_last && pos + i as u64 == len - 1 {
                    skip_last = false;
                    continue;
                }
                newlines += 1;
                if newlines == lines {
                    return Ok(pos + i as u64 + 1);
                }
            }
            skip_last = false;
        }
    }
    Ok(0)
}

/// Whether the file was written within `since_seconds`.
fn written_since(meta: &std::fs::Metadata, since_seconds: u64) -> bool {
    // A window reaching back past the clock's first time covers everything (a client's
    // sinceSeconds near i64::MAX, which `now - window` would panic on).
    let Some(cutoff) = SystemTime::now().checked_sub(Duration::from_secs(since_seconds)) else {
        return true;
    };
    meta.modified().map(|m| m >= cutoff).unwrap_or(true)
}

/// Streams `path` by `options` into `tx` (chunks of bytes). `alive` says whether the writer
/// (the container's instance) still runs; a follower stops once it does not and everything is
/// read, or when the receiver goes.
pub async fn stream(
    path: PathBuf,
    options: LogOptions,
    alive: impl Fn() -> bool + Send + 'static,
    tx: mpsc::Sender<Result<Bytes, LogError>>,
) {
    if let Err(e) = stream_inner(&path, &options, alive, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn stream_inner(
    path: &Path,
    options: &LogOptions,
    alive: impl Fn() -> bool,
    tx: &mpsc::Sender<Result<Bytes, LogError>>,
) -> Result<(), LogError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    let mut offset = match options.tail_lines {
        Some(n) => tail_offset(&mut file, n).map_err(io_err(path))?,
        None => 0,
    };
    if options
        .since_seconds
        .is_some_and(|s| !written_since(&meta, s))
    {
        offset = meta.len();
    }
    let mut left = options.limit_bytes.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Before reading: bytes written before the instance ended are all read below.
        let writer_alive = options.follow && alive();
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < offset {
            // Rotated (copied and truncated): the current bytes start again at 0.
            offset = 0;
        }
        while offset < len && left > 0 {
            file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
            let want = (len - offset).min(left).min(CHUNK as u64) as usize;
            let n = file.read(&mut buf[..want]).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            left -= n as u64;
            if tx
                .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        if !writer_alive || left == 0 {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            () = tx.closed() => return Ok(()),
        }
    }
}

/// Rotates every container log under `<root>/pods/*/logs/*/` larger than `max_size` bytes
/// (copytruncate), keeping at most `max_files` files per log (the current one included).
/// Returns the logs it rotated.
pub fn rotate_all(root: &Path, max_size: u64, max_files: u32) -> Vec<PathBuf> {
    let mut rotated = Vec::new();
    let Ok(pods) = std::fs::read_dir(root.join("pods")) else {
        return rotated;
    };
    for pod in pods.flatten() {
        let Ok(containers) = std::fs::read_dir(pod.path().join("logs")) else {
            continue;
        };
        for container in containers.flatten() {
            let Ok(files) = std::fs::read_dir(container.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_none_or(|e| e != "log") {
                    continue;
                }
                if file.metadata().is_ok_and(|m| m.len() > max_size) {
                    match rotate(&path, max_files) {
                        Ok(()) => rotated.push(path),
                        Err(e) => tracing::warn!(log = %path.display(), "rotating: {e}"),
                    }
                }
            }
        }
    }
    rotated
}

fn rotated_name(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Copies `path` to `<path>.1` (shifting older copies up, dropping those beyond
/// `max_files - 1`) and truncates it.
pub fn rotate(path: &Path, max_files: u32) -> std::io::Result<()> {
    let keep = max_files.saturating_sub(1);
    if keep == 0 {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(0);
    }
    let _ = std::fs::remove_file(rotated_name(path, keep));
    for n in (1..keep).rev() {
        let from = rotated_name(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated_name(path, n + 1))?;
        }
    }
    std::fs::copy(path, rotated_name(path, 1))?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(content: &str, n: u64) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, content).unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let off = tail_offset(&mut f, n).unwrap() as usize;
        content[off..].to_owned()
    }

    #[test]
    fn tail_counts_lines_like_tail() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(tail("a\nb\nc", 1), "c");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 0), "");
        assert_eq!(tail("", 3), "");
        let long: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(tail(&long, 2), "line 4998\nline 4999\n");
    }

    #[test]
    fn rotation_copies_truncates_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("pods/uid/logs/c");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join("0.log");
        for round in 0..4 {
            std::fs::write(&log, format!("round {round} {}\n", "x".repeat(100))).unwrap();
            assert_eq!(rotate_all(dir.path(), 50, 3), vec![log.clone()]);
            assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        }
        assert!(std::fs::read_to_string(logs.join("0.log.1"))
            .unwrap()
            .starts_with("round 3"));
        assert!(std::fs::read_to_string(logs.join("0.log.2"))
            .unwrap()
            .starts_with("round 2"));
        assert!(!logs.join("0.log.3").exists());
        // Small logs and rotated copies are left alone.
        assert!(rotate_all(dir.path(), 50, 3).is_empty());
    }

    async fn collect(path: PathBuf, options: LogOptions, alive: bool) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(stream(path, options, move || alive, tx));
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn limits_and_since() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        std::fs::write(&p, "one\ntwo\nthree\n").unwrap();
        let all = LogOptions::default();
        assert_eq!(
            collect(p.clone(), all.clone(), false).await,
            b"one\ntwo\nthree\n"
        );
        let limited = LogOptions {
            limit_bytes: Some(5),
            ..all.clone()
        };
        assert_eq!(collect(p.clone(), limited, false).await, b"one\nt");
        let tailed = LogOptions {
            tail_lines: Some(1),
            ..all.clone()
        };
        assert_eq!(collect(p.clone(), tailed, false).await, b"three\n");
        let recent = LogOptions {
            since_seconds: Some(3600),
            ..all.clone()
        };
        assert_eq!(
            collect(p.clone(), recent, false).await,
            b"one\ntwo\nthree\n"
        );
        // A window past the clock's start (sinceSeconds near i64::MAX) is everything.
        let forever = LogOptions {
            since_seconds: Some(i64::MAX as u64),
            ..all.clone()
        };
        assert_eq!(
            collect(p.clone(), forever, false).await,
            b"one\ntwo\nthree\n"
        );
        let old = std::fs::File::options().write(true).open(&p).unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let recent = LogOptions {
            since_seconds: Some(3600),
            ..all
        };
        assert!(collect(p, recent, false).await.is_empty());
    }

    #[tokio::test]
    async fn follow_sees_appends_survives_rotation_and_ends_with_the_writer() {
        use std::io::Write as _;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("0.log");
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        writer.write_all(b"first\n").unwrap();
        let alive = Arc::new(AtomicBool::new(true));
        let (tx, mut rx) = mpsc::channel(4);
        let options = LogOptions {
            follow: true,
            ..Default::default()
        };
        tokio::spawn(stream(
            p.clone(),
            options,
            {
                let alive = alive.clone();
                move || alive.load(Ordering::SeqCst)
            },
            tx,
        ));
        let mut got = Vec::new();
        let mut read_until = async |got: &mut Vec<u8>, needle: &str| {
            tokio::time::timeout(Duration::from_secs(10), async {
                while !String::from_utf8_lossy(got).contains(needle) {
                    got.extend_from_slice(&rx.recv().await.unwrap().unwrap());
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never saw {needle:?}: {:?}", String::from_utf8_lossy(got)));
        };
        read_until(&mut got, "first\n").await;
        writer.write_all(b"second\n").unwrap();
        read_until(&mut got, "second\n").await;
        rotate(&p, 5).unwrap();
        writer.write_all(b"after\n").unwrap();
        read_until(&mut got, "after\n").await;
        assert_eq!(String::from_utf8_lossy(&got), "first\nsecond\nafter\n");
        writer.write_all(b"last\n").unwrap();
        alive.store(false, Ordering::SeqCst);
        // The stream ends once the writer is gone and everything is read.
        let rest = tokio::time::timeout(Duration::from_secs(10), async {
            let mut rest = Vec::new();
            while let Some(c) = rx.recv().await {
                rest.extend_from_slice(&c.unwrap());
            }
            rest
        })
        .await
        .expect("follow did not end after the writer did");
        assert_eq!(rest, b"last\n");
    }
}
