//! The node's certificates on disk, as the kubelet keeps them: one PEM file per certificate
//! holding the certificate (chain) and its private key, `<root>/pki/kubelet-client-current.pem`
//! and `<root>/pki/kubelet-server-current.pem`. The directory is 0700 and the files 0600; a
//! new certificate replaces the file atomically (written beside it, then renamed), so a crash
//! leaves either the old or the new pair, never half of one.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// The client certificate's file name stem (`<stem>-current.pem`).
pub const CLIENT_STEM: &str = "kubelet-client";
/// The serving certificate's file name stem.
pub const SERVER_STEM: &str = "kubelet-server";
/// The cluster CA learnt at join (public; kept so that a restart needs no new discovery).
pub const CA_FILE: &str = "ca.crt";

/// What went wrong with a certificate or its file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The PEM holds no usable certificate or key, or they do not belong together.
    #[error("{0}")]
    Invalid(String),
}

/// A certificate (chain, PEM) with its private key (PEM) and what the agent needs to know about
/// it: its validity and subject.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyedCert {
    /// The certificate, then any intermediates (PEM).
    pub cert_pem: String,
    /// The private key (PEM).
    pub key_pem: String,
    /// Valid from (Unix seconds).
    pub not_before: i64,
    /// Valid until (Unix seconds).
    pub not_after: i64,
    /// The subject's CommonName.
    pub common_name: String,
    /// The subject's Organizations.
    pub organizations: Vec<String>,
    /// The subject alternative names: DNS names and IP addresses, as text.
    pub sans: Vec<String>,
}

impl std::fmt::Debug for KeyedCert {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedCert")
            .field("common_name", &self.common_name)
            .field("organizations", &self.organizations)
            .field("sans", &self.sans)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The `-----BEGIN <label>-----` .. `-----END <label>-----` blocks of a PEM text, with their
/// labels, in order.
fn pem_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = after[..label_end].to_owned();
        let end_marker = format!("-----END {label}-----");
        let Some(end) = rest[start..].find(&end_marker) else {
            break;
        };
        let stop = start + end + end_marker.len();
        let mut block = rest[start..stop].to_owned();
        block.push('\n');
        blocks.push((label, block));
        rest = &rest[stop..];
    }
    blocks
}

/// A certificate's DNS and IP subject alternative names, as text.
fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl KeyedCert {
    /// A certificate (chain) and its key; checks that both parse and belong together.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Self, StoreError> {
        let invalid = |m: String| StoreError::Invalid(m);
        let certs: Vec<String> = pem_blocks(cert_pem)
            .into_iter()
            .filter(|(label, _)| label == "CERTIFICATE")
            .map(|(_, b)| b)
            .collect();
        let key = pem_blocks(key_pem)
            .into_iter()
            .find(|(label, _)| label.ends_with("PRIVATE KEY"))
            .map(|(_, b)| b)
            .ok_or_else(|| invalid("no private key in the PEM".into()))?;
        let first = certs
            .first()
            .ok_or_else(|| invalid("no certificate in the PEM".into()))?;
        let der = CertificateDer::from_pem_slice(first.as_bytes())
            .map_err(|e| invalid(format!("the certificate: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| invalid(format!("the certificate: {e}")))?;
        let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
            a.as_str().map(str::to_owned).unwrap_or_default()
        };
        let cert = Self {
            cert_pem: certs.concat(),
            key_pem: key,
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
            common_name: parsed
                .subject()
                .iter_common_name()
                .next()
                .map(text)
                .unwrap_or_default(),
            organizations: parsed.subject().iter_organization().map(text).collect(),
            sans: sans(&parsed),
        };
        cert.certified_key()?;
        Ok(cert)
    }

    /// Reads the combined PEM of a `-current.pem` file (certificates and key in one text).
    pub fn from_combined(pem: &str) -> Result<Self, StoreError> {
        Self::new(pem, pem)
    }

    /// The combined PEM: the certificate chain, then the key.
    pub fn combined(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// The pair for rustls (client or server side).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, StoreError> {
        let invalid = |m: String| StoreError::Invalid(m);
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("the certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| invalid(format!("the private key: {e}")))?;
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain, key, &provider)
            .map(Arc::new)
            .map_err(|e| invalid(format!("the certificate and key: {e}")))
    }

    /// Its lifetime in seconds.
    pub fn lifetime(&self) -> i64 {
        (self.not_after - self.not_before).max(0)
    }

    /// Whether it can be used as it is at start: not expiring within the last tenth of its
    /// lifetime (a certificate that close to its end would be renewed at once anyway, and the
    /// renewal could fail once it expires).
    pub fn usable_at(&self, now: i64) -> bool {
        now < self.not_after - self.lifetime() / 10
    }
}

/// Creates `dir` (and its parents) and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `data` to `path` with `mode` atomically: a temporary file beside it (created with
/// the mode, so the data is never readable by others, and synced), then a rename.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    let written = file
        .write_all(data)
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

/// One certificate's file under the pki directory.
#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
    stem: &'static str,
}

impl CertStore {
    /// The store of `<dir>/<stem>-current.pem`.
    pub fn new(dir: impl Into<PathBuf>, stem: &'static str) -> Self {
        Self {
            dir: dir.into(),
            stem,
        }
    }

    /// The file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}-current.pem", self.stem))
    }

    /// The stored certificate; `None` when there is none (or it cannot be read as one: it is
    /// then replaced by the next certificate, as the kubelet does).
    pub fn load(&self) -> Option<KeyedCert> {
        let path = self.path();
        let text = std::fs::read_to_string(&path).ok()?;
        match KeyedCert::from_combined(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable certificate");
                None
            }
        }
    }

    /// Stores `cert` (0600, atomically; the directory is made 0700).
    pub fn save(&self, cert: &KeyedCert) -> Result<(), StoreError> {
        private_dir(&self.dir)?;
        write_atomic(&self.path(), cert.combined().as_bytes(), 0o600)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A certificate for `cn` in `orgs`, valid from `not_before` to `not_after` (Unix
    /// seconds), self-signed.
    pub(crate) fn cert(cn: &str, orgs: &[&str], not_before: i64, not_after: i64) -> KeyedCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let c = params.self_signed(&key).unwrap();
        KeyedCert::new(&c.pem(), &key.serialize_pem()).unwrap()
    }

    #[test]
    fn a_keyed_certificate_reads_its_subject_and_validity_and_round_trips() {
        let c = cert("system:node:n1", &["system:nodes"], 1000, 11000);
        assert_eq!(c.common_name, "system:node:n1");
        assert_eq!(c.organizations, ["system:nodes"]);
        assert_eq!(
            (c.not_before, c.not_after, c.lifetime()),
            (1000, 11000, 10000)
        );
        assert_eq!(KeyedCert::from_combined(&c.combined()).unwrap(), c);
        assert!(!format!("{c:?}").contains("PRIVATE"));
        // Usable until the last tenth of its lifetime.
        assert!(c.usable_at(9999));
        assert!(!c.usable_at(10000));
        assert!(!c.usable_at(20000));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let a = cert("a", &[], 0, 4_000_000_000);
        let b = cert("b", &[], 0, 4_000_000_000);
        let err = KeyedCert::new(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(err.to_string().contains("certificate and key"), "{err}");
        assert!(KeyedCert::new("", &a.key_pem).is_err());
        assert!(KeyedCert::new(&a.cert_pem, "").is_err());
    }

    #[test]
    fn the_store_writes_0600_files_in_a_0700_directory_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("root/pki");
        let store = CertStore::new(&pki, CLIENT_STEM);
        assert!(store.load().is_none());
        let c = cert("system:node:n1", &["system:nodes"], 0, 4_000_000_000);
        store.save(&c).unwrap();
        assert_eq!(store.path(), pki.join("kubelet-client-current.pem"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki), 0o700);
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(store.load().unwrap(), c);
        // Replaced in place; no temporary file stays behind.
        let d = cert("system:node:n1", &["system:nodes"], 5, 4_000_000_000);
        store.save(&d).unwrap();
        assert_eq!(store.load().unwrap(), d);
        assert_eq!(mode(&store.path()), 0o600);
        let names: Vec<_> = std::fs::read_dir(&pki)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["kubelet-client-current.pem"]);
        // An existing directory with a wider mode is narrowed.
        std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o755)).unwrap();
        store.save(&d).unwrap();
        assert_eq!(mode(&pki), 0o700);
        // A broken file reads as no certificate.
        std::fs::write(store.path(), "garbage").unwrap();
        assert!(store.load().is_none());
    }
}
