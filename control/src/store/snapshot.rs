//! Snapshots of a whole store: one file an operator keeps and restores after losing the disk
//! (`skiff-control snapshot save|restore`, as `etcdctl snapshot save` / `etcdutl snapshot
//! restore`).
//!
//! The file is JSON lines, readable with standard tools:
//!
//! ```text
//! {"format":"skiff-snapshot","version":1,"revision":1234}
//! {"key":"core/pods/default/web-0","object":{...}}          one line per object, in key order
//! ...
//! {"objects":812,"sha256":"<hex of every byte above this line>"}
//! ```
//!
//! The trailer's checksum and count make a truncated or altered file an error on restore rather
//! than a cluster that silently lost objects. Objects are the stored JSON bytes, unchanged:
//! stored objects never contain a newline (they are written compactly), so a line is an object.
//!
//! A snapshot holds every Secret: whoever writes one writes it 0600.

use std::io::BufRead;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::Value;

use super::StoreError;

/// The `format` of the header line.
pub const FORMAT: &str = "skiff-snapshot";

/// The version of the layout this code writes and reads.
pub const VERSION: u64 = 1;

/// How far a restore moves the revision beyond the snapshot's. Revisions issued after the
/// snapshot was taken are lost with the disk, but clients may still hold them (in watches,
/// informers, resourceVersion preconditions); the restored store must never issue one of them
/// again for a different state. etcd's documentation suggests the same margin for
/// `etcdutl snapshot restore --bump-revision` (with `--mark-compacted`, which the watch window
/// starting at the new revision gives here: older revisions get 410 and clients relist).
pub const RESTORE_REVISION_BUMP: u64 = 1_000_000_000;

/// Longest line accepted on restore: an object is at most a few MiB (the API's body limit).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Why a snapshot file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the file failed.
    #[error("reading the snapshot: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a snapshot, or not one this version reads.
    #[error("not a skiff snapshot (line 1): {0}")]
    Header(String),
    /// A line is not what the layout says.
    #[error("snapshot line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before its trailer: it was cut short.
    #[error("the snapshot is truncated: no checksum line after {objects} objects")]
    Truncated {
        /// Objects read before the end.
        objects: usize,
    },
    /// The checksum or count does not match the content.
    #[error("the snapshot is corrupt: {0}")]
    Checksum(String),
}

/// A snapshot as read back: the revision it was taken at and every object, in key order.
#[derive(Debug)]
pub struct Snapshot {
    /// The store's revision when the snapshot was taken.
    pub revision: u64,
    /// (key, stored JSON bytes).
    pub objects: Vec<(String, Bytes)>,
}

/// What [`super::Store::snapshot`] streams: every (key, stored bytes), in key order, read at
/// one revision.
pub type Entries = BoxStream<'static, Result<(String, Bytes), StoreError>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes a snapshot at `revision` of `entries` as the file's bytes, chunk by chunk (the API
/// streams it: a large store is never held twice in memory). A store error ends the stream with
/// that error, and no trailer is written, so the partial file cannot be restored.
pub fn encode(revision: u64, entries: Entries) -> BoxStream<'static, Result<Bytes, StoreError>> {
    struct State {
        entries: Entries,
        digest: ring::digest::Context,
        count: u64,
        done: bool,
    }
    let header = serde_json::json!({"format": FORMAT, "version": VERSION, "revision": revision});
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let first = Bytes::from(format!("{header}\n"));
    digest.update(&first);
    let state = State {
        entries,
        digest,
        count: 0,
        done: false,
    };
    let body = futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        match s.entries.next().await {
            Some(Ok((key, object))) => {
                let mut line = Vec::with_capacity(key.len() + object.len() + 24);
                line.extend_from_slice(b"{\"key\":");
                line.extend_from_slice(Value::String(key).to_string().as_bytes());
                line.extend_from_slice(b",\"object\":");
                line.extend_from_slice(&object);
                line.extend_from_slice(b"}\n");
                s.digest.update(&line);
                s.count += 1;
                Some((Ok(Bytes::from(line)), s))
            }
            Some(Err(e)) => {
                s.done = true;
                Some((Err(e), s))
            }
            None => {
                s.done = true;
                let sum = hex(s.digest.clone().finish().as_ref());
                let trailer = serde_json::json!({"objects": s.count, "sha256": sum});
                Some((Ok(Bytes::from(format!("{trailer}\n"))), s))
            }
        }
    });
    futures::stream::iter([Ok(first)]).chain(body).boxed()
}

/// Reads and checks a whole snapshot file.
pub fn decode(mut input: impl BufRead) -> Result<Snapshot, SnapshotError> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut line = Vec::new();
    let mut number = 0;
    let mut next = |line: &mut Vec<u8>| -> Result<bool, SnapshotError> {
        line.clear();
        let read = std::io::Read::take(&mut input, MAX_LINE as u64 + 1).read_until(b'\n', line)?;
        number += 1;
        if read > MAX_LINE {
            return Err(SnapshotError::Line {
                line: number,
                reason: format!("longer than {MAX_LINE} bytes"),
            });
        }
        Ok(read > 0)
    };
    if !next(&mut line)? {
        return Err(SnapshotError::Header("the file is empty".into()));
    }
    let header: Value = serde_json::from_slice(&line)
        .map_err(|e| SnapshotError::Header(format!("not JSON: {e}")))?;
    if header["format"] != FORMAT {
        return Err(SnapshotError::Header(format!(
            "format is {}, expected {FORMAT:?}",
            header["format"]
        )));
    }
    if header["version"] != VERSION {
        return Err(SnapshotError::Header(format!(
            "layout version {} is not {VERSION}, the one this skiff-control reads",
            header["version"]
        )));
    }
    let revision = header["revision"]
        .as_u64()
        .ok_or_else(|| SnapshotError::Header("no revision".into()))?;
    digest.update(&line);
    let mut objects: Vec<(String, Bytes)> = Vec::new();
    let mut line_number = 1;
    loop {
        if !next(&mut line)? {
            return Err(SnapshotError::Truncated {
                objects: objects.len(),
            });
        }
        line_number += 1;
        let bad = |reason: String| SnapshotError::Line {
            line: line_number,
            reason,
        };
        if !line.ends_with(b"\n") {
            return Err(SnapshotError::Truncated {
                objects: objects.len(),
            });
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry<'a> {
            key: String,
            #[serde(borrow)]
            object: &'a serde_json::value::RawValue,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Trailer {
            objects: u64,
            sha256: String,
        }
        if let Ok(entry) = serde_json::from_slice::<Entry>(&line) {
            if entry.key.is_empty() || entry.key.contains('\n') {
                return Err(bad(format!("invalid key {:?}", entry.key)));
            }
            if objects.last().is_some_and(|(last, _)| *last >= entry.key) {
                return Err(bad(format!("key {:?} out of order or repeated", entry.key)));
            }
            if !entry.object.get().starts_with('{') {
                return Err(bad(format!(
                    "the object of {:?} is not a JSON object",
                    entry.key
                )));
            }
            let object = Bytes::copy_from_slice(entry.object.get().as_bytes());
            digest.update(&line);
            objects.push((entry.key, object));
            continue;
        }
        let trailer: Trailer = serde_json::from_slice(&line)
            .map_err(|e| bad(format!("neither an object line nor the checksum line: {e}")))?;
        let sum = hex(digest.finish().as_ref());
        if trailer.sha256 != sum {
            return Err(SnapshotError::Checksum(format!(
                "sha256 of the content is {sum}, the file says {}",
                trailer.sha256
            )));
        }
        if trailer.objects != objects.len() as u64 {
            return Err(SnapshotError::Checksum(format!(
                "{} objects read, the file says {}",
                objects.len(),
                trailer.objects
            )));
        }
        if next(&mut line)? {
            return Err(SnapshotError::Line {
                line: line_number + 1,
                reason: "data after the checksum line".into(),
            });
        }
        return Ok(Snapshot { revision, objects });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn encoded(revision: u64, entries: Vec<(&str, &str)>) -> Vec<u8> {
        let entries: Vec<Result<(String, Bytes), StoreError>> = entries
            .into_iter()
            .map(|(k, v)| Ok((k.to_owned(), Bytes::from(v.to_owned()))))
            .collect();
        let mut out = Vec::new();
        let mut chunks = encode(revision, futures::stream::iter(entries).boxed());
        while let Some(chunk) = chunks.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_snapshot_reads_back_as_written() {
        let file = encoded(
            42,
            vec![
                ("/configmaps/a/x", r#"{"data":{"k":"v\nw"}}"#),
                ("/pods/b/y", r#"{"metadata":{"name":"y"}}"#),
            ],
        )
        .await;
        let text = String::from_utf8(file.clone()).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        let snapshot = decode(&file[..]).unwrap();
        assert_eq!(snapshot.revision, 42);
        assert_eq!(
            snapshot.objects,
            vec![
                (
                    "/configmaps/a/x".to_owned(),
                    Bytes::from_static(br#"{"data":{"k":"v\nw"}}"#)
                ),
                (
                    "/pods/b/y".to_owned(),
                    Bytes::from_static(br#"{"metadata":{"name":"y"}}"#)
                ),
            ]
        );
        let empty = encoded(7, vec![]).await;
        assert!(decode(&empty[..]).unwrap().objects.is_empty());
    }

    #[tokio::test]
    async fn damage_is_an_error_naming_what_is_wrong() {
        let file = encoded(3, vec![("/a", r#"{"n":1}"#), ("/b", r#"{"n":2}"#)]).await;
        let text = String::from_utf8(file).unwrap();
        let err = |t: &str| decode(t.as_bytes()).unwrap_err().to_string();

        // Cut short: at a line boundary, inside a line, before any object.
        let lines: Vec<&str> = text.lines().collect();
        assert!(err(&format!("{}\n{}\n", lines[0], lines[1])).contains("truncated"));
        assert!(err(&text[..text.len() - 10]).contains("truncated"));
        assert!(err(&format!("{}\n", lines[0])).contains("truncated"));
        // One byte of an object changed.
        assert!(err(&text.replace(r#""n":2"#, r#""n":3"#)).contains("corrupt"));
        // An object dropped (its line removed): the checksum no longer matches.
        assert!(err(&format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3])).contains("corrupt"));
        // Not a snapshot at all, or of another layout.
        assert!(err("").contains("empty"));
        assert!(err("hello\n").contains("not a skiff snapshot"));
        assert!(err(&text.replace(r#""version":1"#, r#""version":9"#)).contains("layout version 9"));
        // Garbage after the trailer.
        assert!(err(&format!("{text}{{}}\n")).contains("after the checksum"));
        // Keys out of order.
        let swapped = format!("{}\n{}\n{}\n{}\n", lines[0], lines[2], lines[1], lines[3]);
        assert!(err(&swapped).contains("out of order"));
    }
}
