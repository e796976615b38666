//! First-start credentials: a CA, a serving certificate for the API, the admin's client
//! certificate (CN `kubernetes-admin`, O `system:masters`, as kubeadm's admin.conf) and bearer
//! token, and the admin kubeconfig that carries them to kubectl.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;

use crate::certificates::authority::{Authority, AuthorityError};
use crate::certificates::request::CertificateRequest;
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
    /// The CA could not issue a client certificate.
    #[error("the cluster CA: {0}")]
    Authority(#[from] AuthorityError),
}

/// The credentials the server runs with.
#[derive(Clone)]
pub struct Credentials {
    /// PEM of the CA certificate (goes into kubeconfigs).
    pub ca_pem: String,
    /// PEM of the CA key (signs approved CertificateSigningRequests in process).
    pub ca_key_pem: String,
    /// PEM of the serving certificate chain.
    pub server_cert_pem: String,
    /// PEM of the serving key.
    pub server_key_pem: String,
    /// The admin bearer token.
    pub token: String,
    /// PEM of the admin's client certificate.
    pub admin_cert_pem: String,
    /// PEM of the admin's client key.
    pub admin_key_pem: String,
    /// PEM of the key that signs ServiceAccount tokens (`sa.key`, as kubeadm names it).
    pub service_account_key_pem: String,
    /// PEM of the in-process controllers' and scheduler's client certificate
    /// (`system:kube-controller-manager`, kubeadm's `controller-manager.conf` user).
    pub controller_manager_cert_pem: String,
    /// PEM of its key.
    pub controller_manager_key_pem: String,
    /// PEM of the API server's client certificate to kubelets (kubeadm's
    /// `apiserver-kubelet-client.crt`).
    pub kubelet_client_cert_pem: String,
    /// PEM of its key.
    pub kubelet_client_key_pem: String,
}

/// The admin's user name and group, as kubeadm writes them into admin.conf.
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The group every request of which is allowed.
pub const MASTERS_GROUP: &str = "system:masters";
/// The user the controllers and the scheduler run as (bound to `system:kube-controller-manager`
/// and `system:skiff:controller-manager`).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The user the API server is to kubelets (bound to `system:kubelet-api-admin`), as kubeadm
/// names it.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// How long an issued admin certificate lasts (kubeadm: one year); it is issued again at a
/// start when less than [`RENEW_BEFORE_DAYS`] remain.
const ADMIN_CERT_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 30;

/// A client certificate and key for `user` in `groups`, signed by the CA, valid for `days`.
/// Issued by the same [`Authority`] that signs CertificateSigningRequests, because rcgen's
/// subjects keep one value per attribute type and would drop all groups but the last.
pub fn client_certificate(
    authority: &Authority,
    user: &str,
    groups: &[String],
    days: i64,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let request = CertificateRequest::client(user, groups, &key);
    let usages = ["digital signature".to_owned(), "client auth".to_owned()];
    let lifetime = std::time::Duration::from_secs(u64::try_from(days.max(1)).unwrap_or(1) * 86_400);
    let cert = authority.issue(&request, &usages, lifetime, time::OffsetDateTime::now_utc())?;
    Ok((cert, key.serialize_pem()))
}

/// Whether the PEM certificate is readable and valid for more than `days` days.
fn valid_for_days(pem: &str, days: i64) -> bool {
    let Ok(der) = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return false;
    };
    let left =
        cert.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    left > days * 86_400
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
    let sa_key = pki.join("sa.key");
    if !sa_key.exists() {
        // Kept across restarts: every token issued so far stays valid.
        write_private(&sa_key, KeyPair::generate()?.serialize_pem().as_bytes())?;
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
    let authority = Authority::from_pem(&ca_pem, &ca_key_pem)?;

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

    let (admin_cert_pem, admin_key_pem) =
        kept_client_certificate(&pki, "admin", &authority, ADMIN_USER, &[MASTERS_GROUP])?;
    let (controller_manager_cert_pem, controller_manager_key_pem) = kept_client_certificate(
        &pki,
        "controller-manager",
        &authority,
        CONTROLLER_MANAGER_USER,
        &[],
    )?;
    let (kubelet_client_cert_pem, kubelet_client_key_pem) = kept_client_certificate(
        &pki,
        "apiserver-kubelet-client",
        &authority,
        KUBELET_CLIENT_USER,
        &[],
    )?;
    Ok(Credentials {
        ca_pem,
        ca_key_pem,
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
        token,
        admin_cert_pem,
        admin_key_pem,
        service_account_key_pem: fs::read_to_string(&sa_key).map_err(io(&sa_key))?,
        controller_manager_cert_pem,
        controller_manager_key_pem,
        kubelet_client_cert_pem,
        kubelet_client_key_pem,
    })
}

/// The client certificate `pki/<file>.crt` (key `.key`, both 0600), issued again for `user`
/// in `groups` when missing or within [`RENEW_BEFORE_DAYS`] of expiring.
fn kept_client_certificate(
    pki: &Path,
    file: &str,
    authority: &Authority,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), PkiError> {
    let (cert_path, key_path) = (
        pki.join(format!("{file}.crt")),
        pki.join(format!("{file}.key")),
    );
    let current = fs::read_to_string(&cert_path)
        .ok()
        .zip(fs::read_to_string(&key_path).ok());
    if let Some((cert, key)) = current {
        if valid_for_days(&cert, RENEW_BEFORE_DAYS) {
            return Ok((cert, key));
        }
    }
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    let (cert, key) = client_certificate(authority, user, &groups, ADMIN_CERT_DAYS)?;
    write_private(&key_path, key.as_bytes())?;
    write_private(&cert_path, cert.as_bytes())?;
    Ok((cert, key))
}

/// Renders an admin kubeconfig for `server` (an https URL): the admin's client certificate,
/// and the admin token too, which clients that authenticate by token only (the agent's kubelet
/// API check, until nodes get credentials of their own) read from it.
pub fn kubeconfig(server: &str, creds: &Credentials) -> String {
    render_kubeconfig(
        server,
        &creds.ca_pem,
        "skiff-admin",
        &creds.admin_cert_pem,
        &creds.admin_key_pem,
        Some(&creds.token),
    )
}

/// The kubeconfig of the in-process controllers and scheduler: their own certificate, no token,
/// so they get what RBAC grants `system:kube-controller-manager` and nothing more.
pub fn controller_manager_kubeconfig(server: &str, creds: &Credentials) -> String {
    render_kubeconfig(
        server,
        &creds.ca_pem,
        CONTROLLER_MANAGER_USER,
        &creds.controller_manager_cert_pem,
        &creds.controller_manager_key_pem,
        None,
    )
}

fn render_kubeconfig(
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
    token: Option<&str>,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let token = token
        .map(|t| format!("    token: {t}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user:?}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
{token}contexts:
- name: skiff
  context:
    cluster: skiff
    user: {user:?}
    namespace: default
current-context: skiff
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// Why a user's kubeconfig cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The request itself is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The CA could not be read or used.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Issues a client certificate for `user` in `groups`, valid for `days`, from the CA under
/// `dir/pki` (the data directory of a skiff-control that has started once), and renders a
/// kubeconfig for `server` with it: what `kubeadm kubeconfig user` does. Nothing is stored on
/// the server: what the user may do is what RBAC bindings for the name and groups grant.
pub fn user_kubeconfig(
    dir: &Path,
    server: &str,
    user: &str,
    groups: &[String],
    days: i64,
) -> Result<String, UserError> {
    let printable = |s: &str| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control);
    if !printable(user) {
        return Err(UserError::Invalid(format!(
            "invalid user name {user:?}: 1 to 256 printable characters"
        )));
    }
    if let Some(g) = groups.iter().find(|g| !printable(g)) {
        return Err(UserError::Invalid(format!(
            "invalid group {g:?}: 1 to 256 printable characters"
        )));
    }
    if !(1..=3650).contains(&days) {
        return Err(UserError::Invalid(format!(
            "invalid --days {days}: between 1 and 3650"
        )));
    }
    if !(server.starts_with("https://")) {
        return Err(UserError::Invalid(format!(
            "invalid --server {server:?}: an https:// URL of the API server"
        )));
    }
    let (ca_cert, ca_key) = (dir.join("pki/ca.crt"), dir.join("pki/ca.key"));
    let ca_pem = fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
    let ca_key_pem = fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let authority = Authority::from_pem(&ca_pem, &ca_key_pem).map_err(PkiError::from)?;
    let (cert, key) = client_certificate(&authority, user, groups, days)?;
    Ok(render_kubeconfig(server, &ca_pem, user, &cert, &key, None))
}

/// The admin kubeconfig for `server` from the credentials a skiff-control that has started
/// once keeps under `dir/pki` (for commands run beside it, such as `skiff-control token`).
pub fn admin_kubeconfig_from_dir(dir: &Path, server: &str) -> Result<String, PkiError> {
    let pki = dir.join("pki");
    let read = |name: &str| {
        let path = pki.join(name);
        fs::read_to_string(&path).map_err(io(&path))
    };
    Ok(render_kubeconfig(
        server,
        &read("ca.crt")?,
        "skiff-admin",
        &read("admin.crt")?,
        &read("admin.key")?,
        None,
    ))
}

/// Writes the admin kubeconfig with owner-only permissions.
pub fn write_kubeconfig(path: &Path, server: &str, creds: &Credentials) -> Result<(), PkiError> {
    write_secret_file(path, kubeconfig(server, creds).as_bytes())
}

/// Writes a file holding credentials, owner-only (0600), creating its directory.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    write_private(path, contents)
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
        assert_eq!(
            first.service_account_key_pem, second.service_account_key_pem,
            "tokens signed before a restart still verify after it"
        );
        let mode = fs::metadata(dir.path().join("pki/sa.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let kc = kubeconfig("https://127.0.0.1:6443", &first);
        assert!(kc.contains(&first.token));
        assert!(kc.contains("client-certificate-data:"));
        assert_eq!(
            first.admin_cert_pem, second.admin_cert_pem,
            "still valid: kept"
        );
        assert!(valid_for_days(&first.admin_cert_pem, 300));
        assert!(!valid_for_days(&first.admin_cert_pem, 400));

        let alice = user_kubeconfig(
            dir.path(),
            "https://10.0.0.1:6443",
            "alice",
            &["dev".into()],
            7,
        )
        .unwrap();
        assert!(alice.contains("client-certificate-data:") && !alice.contains("token:"));
        let bad = |user: &str, days: i64, server: &str| {
            user_kubeconfig(dir.path(), server, user, &[], days)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("", 7, "https://a").contains("invalid user name"));
        assert!(bad("a\nb", 7, "https://a").contains("invalid user name"));
        assert!(bad("a", 0, "https://a").contains("--days"));
        assert!(bad("a", 7, "http://a").contains("--server"));
        let empty = tempfile::tempdir().unwrap();
        assert!(user_kubeconfig(empty.path(), "https://a", "a", &[], 1)
            .unwrap_err()
            .to_string()
            .contains("ca.crt"));
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
    }

    /// `skiff-control user NAME --group a --group b`: the certificate carries both groups, as
    /// the API server's client-certificate authentication reads them.
    #[test]
    fn a_user_kubeconfig_carries_every_group() {
        let dir = tempfile::tempdir().unwrap();
        let creds = load_or_create(dir.path(), &[]).unwrap();
        let groups = [
            "dev".to_owned(),
            "ops".to_owned(),
            "system:viewers".to_owned(),
        ];
        let yaml =
            user_kubeconfig(dir.path(), "https://127.0.0.1:6443", "carol", &groups, 2).unwrap();
        let b64 = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
            .expect("a client certificate");
        let pem = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap();
        let identity = crate::apiserver::auth::x509::identify_pem(&pem, creds.ca_pem.as_bytes());
        let crate::apiserver::auth::x509::PeerIdentity::User(user) = identity else {
            panic!("not accepted: {identity:?}");
        };
        assert_eq!(user.name, "carol");
        assert_eq!(
            user.groups,
            ["dev", "ops", "system:viewers", "system:authenticated"]
        );
        // The admin certificate, issued the same way, is still in system:masters.
        assert!(creds
            .admin_cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
