//! First-start credentials: a CA, a serving certificate for the API, an admin bearer token,
//! and the admin kubeconfig that carries them to kubectl.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Errors of credential setup.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a credential file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Generating or loading a key or certificate failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
}

/// The credentials the server runs with.
#[derive(Clone)]
pub struct Credentials {
    /// PEM of the CA certificate (goes into kubeconfigs).
    pub ca_pem: String,
    /// PEM of the serving certificate chain.
    pub server_cert_pem: String,
    /// PEM of the serving key.
    pub server_key_pem: String,
    /// The admin bearer token.
    pub token: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))
}

/// Loads the CA and token from `dir/pki`, creating them on first start, and issues a fresh
/// serving certificate for `hosts` (names and IPs clients use to reach the API).
pub fn load_or_create(dir: &Path, hosts: &[String]) -> Result<Credentials, PkiError> {
    let pki = dir.join("pki");
    fs::create_dir_all(&pki).map_err(io(&pki))?;
    fs::set_permissions(&pki, fs::Permissions::from_mode(0o700)).map_err(io(&pki))?;
    let (ca_cert, ca_key, token) = (
        pki.join("ca.crt"),
        pki.join("ca.key"),
        pki.join("admin.token"),
    );

    if !ca_cert.exists() || !ca_key.exists() {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "skiff-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key)?;
        write_private(&ca_key, key.serialize_pem().as_bytes())?;
        fs::write(&ca_cert, cert.pem()).map_err(io(&ca_cert))?;
    }
    if !token.exists() {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&token, hex.as_bytes())?;
    }

    let ca_pem = fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
    let ca_key_pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)?;

    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "skiff-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
    ];
    sans.extend(hosts.iter().cloned());
    sans.dedup();
    for san in sans {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(san.try_into()?),
        });
    }
    let server_key = KeyPair::generate()?;
    let server_cert = params.signed_by(&server_key, &issuer)?;
    let token = fs::read_to_string(&token)
        .map_err(io(&token))?
        .trim()
        .to_owned();
    Ok(Credentials {
        ca_pem,
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        token,
    })
}

/// Renders an admin kubeconfig for `server` (an https URL).
pub fn kubeconfig(server: &str, creds: &Credentials) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(&creds.ca_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: skiff-admin
  user:
    token: {token}
contexts:
- name: skiff
  context:
    cluster: skiff
    user: skiff-admin
    namespace: default
current-context: skiff
",
        token = creds.token
    )
}

/// Writes the admin kubeconfig with owner-only permissions.
pub fn write_kubeconfig(path: &Path, server: &str, creds: &Credentials) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    write_private(path, kubeconfig(server, creds).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_persist_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &["10.1.2.3".into()]).unwrap();
        let second = load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(first.token, second.token);
        assert_eq!(first.token.len(), 64);
        let kc = kubeconfig("https://127.0.0.1:6443", &first);
        assert!(kc.contains(&first.token));
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }
}
