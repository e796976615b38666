//! sha256 content digests and a reader that computes one while data passes through.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` digest, the only algorithm the store accepts (as containerd's
/// default build). Other algorithms are refused when parsed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: only sha256:<64 lowercase hex digits> is supported")]
pub struct InvalidDigest(pub String);

impl Digest {
    /// Parses `sha256:<hex>`.
    pub fn parse(s: &str) -> Result<Self, InvalidDigest> {
        match s.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => Ok(Self(hex.to_owned())),
            _ => Err(InvalidDigest(s.to_owned())),
        }
    }

    /// From a bare hex string, as found in `blobs/sha256/<hex>` or a docker-archive file name.
    pub fn from_hex(hex: &str) -> Result<Self, InvalidDigest> {
        if is_sha256_hex(hex) {
            Ok(Self(hex.to_owned()))
        } else {
            Err(InvalidDigest(hex.to_owned()))
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(format!("{:x}", Sha256::digest(data)))
    }

    /// The 64 hex digits, safe to use as a file name.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Hashes (and counts) what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads what is left (so the digest covers everything), then returns digest and size.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest(format!("{:x}", self.hasher.finalize())), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Incremental hashing for data that arrives in chunks (registry downloads).
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    /// Adds a chunk.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        Digest(format!("{:x}", self.0.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_compute() {
        // sha256("") is well known.
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Digest::of(b"").hex(), empty);
        assert_eq!(
            Digest::parse(&format!("sha256:{empty}")).unwrap(),
            Digest::of(b"")
        );
        assert!(Digest::parse(&format!("sha512:{empty}")).is_err());
        assert!(Digest::parse(&format!("sha256:{}", empty.to_uppercase())).is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::from_hex("abc").is_err());
        let mut r = HashingReader::new(&b"hello"[..]);
        let mut first = [0u8; 2];
        r.read_exact(&mut first).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!((d, n), (Digest::of(b"hello"), 5));
        let mut h = Hasher::default();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), Digest::of(b"hello"));
    }
}
