//! Registry mirrors and per-host settings: k3s's `registries.yaml` (the agent's
//! `--registry-config`), and the decision of which endpoints a pull tries.
//!
//! The file has k3s's shape and meaning (k3s turns it into containerd's `hosts.toml`):
//!
//! ```yaml
//! mirrors:
//!   docker.io:                                  # the registry an image reference names
//!     endpoint: ["http://172.31.250.1:5000"]    # tried in this order; the scheme decides TLS
//!     rewrite:                                  # repository path at these endpoints
//!       "^(.*)$": "docker.io/$1"                # first matching regex wins
//!   "*":                                        # every registry without an entry of its own
//!     endpoint: ["https://mirror.example:5000"]
//! configs:                                      # keyed by endpoint host[:port] or registry
//!   "mirror.example:5000":
//!     auth: {username: u, password: p}          # or auth: base64("u:p")
//!     tls: {ca_file: ca.pem, cert_file: c.pem, key_file: k.pem, insecure_skip_verify: false}
//!   "*": {...}                                  # hosts without an entry of their own
//! ```
//!
//! [`RegistryConfig::plan`] gives, for one image reference, the endpoints a pull tries in order
//! and the repository path it asks each for:
//! 1. the endpoints of the registry's `mirrors` entry (or of `"*"` when it has none), with the
//!    entry's first matching `rewrite` applied to the repository path (`library/nginx` for
//!    `nginx`: docker.io's implicit `library/` is part of the path the regex sees);
//! 2. then the registry itself, the "default endpoint" (`https://<registry>`, Docker Hub's API
//!    host for `docker.io`, the path not rewritten), as containerd always does, unless
//!    * the agent runs with `--disable-default-registry-endpoint` (k3s's flag, same meaning) and
//!      the registry has a mirror entry, its own or `"*"`: a node configured with a `"*"` entry
//!      and this flag never sends a pull anywhere but to its mirrors; or
//!    * the registry is not allowed (`--local-registries-only`: only loopback registries); mirror
//!      endpoints are the operator's choice and always allowed.
//!
//! A pull moves on to the next endpoint when one fails (unreachable, not found, refused); the
//! image is stored under the name the pod asked for, whichever endpoint served it.
//!
//! Credentials come from `configs` of the endpoint's host (then `configs."*"`); a pod's pull
//! secret is sent only to the registry itself, never to a mirror. The file is read once, at
//! start, bounded in size; every mistake (unknown key, bad URL or regex, unreadable
//! certificate) is an error naming where it is, and no error or log line carries a credential.

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::reference::{valid_domain, valid_path_component, DEFAULT_DOMAIN};
use super::registry::client_builder;
use super::{is_loopback_host, Credentials, Reference, RegistryConfig};

/// Largest registry config file read.
pub const MAX_CONFIG_FILE_SIZE: u64 = 256 << 10;
/// Largest certificate or key file read.
const MAX_PEM_FILE_SIZE: u64 = 1 << 20;
/// Compiled size limit of one rewrite regex.
const MAX_REGEX_SIZE: usize = 1 << 20;
/// k3s's legacy name of Docker Hub, normalised to `docker.io` as references are.
const LEGACY_DOCKER_DOMAIN: &str = "index.docker.io";

/// Failures reading the registry config.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The file cannot be read.
    #[error("reading the registry config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_FILE_SIZE`].
    #[error("the registry config {path} is larger than {MAX_CONFIG_FILE_SIZE} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file does not parse or says something invalid.
    #[error("the registry config {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where (never a credential).
        reason: String,
    },
}

/// The parsed `registries.yaml`: mirrors per registry and settings per host.
#[derive(Clone, Debug, Default)]
pub struct MirrorConfig {
    /// Registry name (or `*`) -> its mirror entry, in file order.
    mirrors: Vec<(String, Mirror)>,
    /// Host (`host[:port]`, registry name, or `*`) -> its settings.
    hosts: Vec<(String, HostSettings)>,
}

/// One registry's mirror entry.
#[derive(Clone, Debug)]
struct Mirror {
    endpoints: Vec<Endpoint>,
    rewrites: Vec<(Regex, String)>,
}

/// A mirror endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    /// `scheme://host[:port][/prefix]`, without a trailing `/v2`.
    base: String,
    /// `host[:port]` as the URL gives it: what `configs` is keyed by.
    host: String,
}

/// Credentials and TLS for one host.
#[derive(Clone, Debug, Default)]
pub struct HostSettings {
    credentials: Option<Credentials>,
    tls: Option<Tls>,
}

/// A host's TLS settings, built into the HTTP client that talks to it.
#[derive(Clone)]
struct Tls {
    client: reqwest::Client,
    /// What was configured, for Debug (file names only).
    summary: String,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

/// One endpoint a pull tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// `scheme://host[:port][/prefix]`: the API is under `<base>/v2/`.
    pub base: String,
    /// `host[:port]` of the endpoint (what `configs` is keyed by).
    pub host: String,
    /// The repository path asked for there (rewritten at a mirror).
    pub path: String,
    /// Whether this is the registry itself (the default endpoint) rather than a mirror.
    pub origin: bool,
}

/// The endpoints a pull tries, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullPlan {
    /// Mirrors first, then the default endpoint when it may be used.
    pub attempts: Vec<Attempt>,
    /// Why the registry itself is not among the attempts, if it is not.
    pub origin_skipped: Option<String>,
}

impl MirrorConfig {
    /// Reads and validates the file (at most [`MAX_CONFIG_FILE_SIZE`] bytes). Relative
    /// certificate paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self, MirrorError> {
        let read_err = |source| MirrorError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut data = Vec::new();
        file.take(MAX_CONFIG_FILE_SIZE + 1)
            .read_to_end(&mut data)
            .map_err(read_err)?;
        if data.len() as u64 > MAX_CONFIG_FILE_SIZE {
            return Err(MirrorError::TooLarge {
                path: path.to_owned(),
            });
        }
        let invalid = |reason: String| MirrorError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let text = String::from_utf8(data).map_err(|_| invalid("not UTF-8 text".into()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(invalid)
    }

    /// Parses and validates the file's text; `dir` anchors relative certificate paths. The
    /// error says what is wrong and where, and never shows a credential of the text.
    pub fn parse(text: &str, dir: &Path) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        // The parser's messages may quote a value; ours never quote a credential.
        let raw: RawFile =
            serde_yaml::from_str(text).map_err(|e| redact(&e.to_string(), &secrets_in(text)))?;
        let mut config = Self::default();
        for (name, m) in raw.mirrors.0 {
            let name = normalise_registry(&name)?;
            if config.mirrors.iter().any(|(n, _)| *n == name) {
                return Err(format!("mirrors: {name} appears twice"));
            }
            let at = |what: &str| format!("mirrors.{name}.{what}");
            let mut endpoints = Vec::with_capacity(m.endpoint.len());
            for (i, e) in m.endpoint.iter().enumerate() {
                endpoints.push(
                    parse_endpoint(e)
                        .map_err(|r| format!("{}: {r}", at(&format!("endpoint[{i}]"))))?,
                );
            }
            let mut rewrites = Vec::with_capacity(m.rewrite.0.len());
            for (pattern, replacement) in m.rewrite.0 {
                let re = regex::RegexBuilder::new(&pattern)
                    .size_limit(MAX_REGEX_SIZE)
                    .build()
                    .map_err(|e| format!("{}: invalid regex {pattern:?}: {e}", at("rewrite")))?;
                rewrites.push((re, replacement));
            }
            config.mirrors.push((
                name,
                Mirror {
                    endpoints,
                    rewrites,
                },
            ));
        }
        for (name, c) in raw.configs.0 {
            let name = normalise_registry(&name)
                .map_err(|_| format!("configs: {name:?} is not a host[:port] or \"*\""))?;
            if config.hosts.iter().any(|(n, _)| *n == name) {
                return Err(format!("configs: {name} appears twice"));
            }
            let settings = host_settings(&name, c, dir)?;
            config.hosts.push((name, settings));
        }
        Ok(config)
    }

    /// The mirror entry for a registry: its own, else `"*"`.
    fn mirror_for(&self, domain: &str) -> Option<&Mirror> {
        let find = |n: &str| self.mirrors.iter().find(|(k, _)| k == n).map(|(_, m)| m);
        find(domain).or_else(|| find("*"))
    }

    /// The settings for a host: its own, else `"*"`.
    pub fn host(&self, host: &str) -> Option<&HostSettings> {
        self.own_host(host).or_else(|| self.own_host("*"))
    }

    fn own_host(&self, host: &str) -> Option<&HostSettings> {
        self.hosts.iter().find(|(k, _)| k == host).map(|(_, s)| s)
    }

    /// Whether the file configures nothing.
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty() && self.hosts.is_empty()
    }
}

impl Mirror {
    /// The path at this mirror: the first matching rewrite applied, checked to be a path.
    fn rewrite(&self, path: &str) -> Result<String, String> {
        let Some((re, replacement)) = self.rewrites.iter().find(|(re, _)| re.is_match(path)) else {
            return Ok(path.to_owned());
        };
        let new = re.replace_all(path, replacement.as_str()).into_owned();
        if new.is_empty() || new.len() > 255 || !new.split('/').all(valid_path_component) {
            return Err(format!(
                "the rewrite {:?} turns {path:?} into {new:?}, which is not a repository path",
                re.as_str()
            ));
        }
        Ok(new)
    }
}

impl HostSettings {
    /// The credentials configured for the host.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The HTTP client with the host's TLS settings, if it has any.
    pub fn client(&self) -> Option<&reqwest::Client> {
        self.tls.as_ref().map(|t| &t.client)
    }
}

impl RegistryConfig {
    /// The endpoints a pull of `r` tries, in order, and why the registry itself is not among
    /// them if it is not. An error if no endpoint is left or a rewrite gives no valid path.
    pub fn plan(&self, r: &Reference) -> Result<PullPlan, String> {
        let mirror = self.mirrors.mirror_for(&r.domain);
        let mut attempts = Vec::new();
        if let Some(m) = mirror {
            let path = m.rewrite(&r.path)?;
            attempts.extend(m.endpoints.iter().map(|e| Attempt {
                base: e.base.clone(),
                host: e.host.clone(),
                path: path.clone(),
                origin: false,
            }));
        }
        let host = r.api_host();
        let origin_skipped = if mirror.is_some() && self.disable_default_endpoint {
            Some(format!(
                "the default endpoint of {} is disabled (--disable-default-registry-endpoint)",
                r.domain
            ))
        } else if !self.is_allowed(&r.domain) {
            Some(format!("registry {} is not in the allowed list", r.domain))
        } else if attempts.iter().any(|a| a.host == host && a.path == r.path) {
            // A mirror entry already says how to talk to the registry itself.
            Some(format!("{host} is already among the mirror endpoints"))
        } else {
            let plain = is_loopback_host(host)
                || self.plain_http.iter().any(|h| h == host || *h == r.domain);
            attempts.push(Attempt {
                base: format!("{}://{host}", if plain { "http" } else { "https" }),
                host: host.to_owned(),
                path: r.path.clone(),
                origin: true,
            });
            None
        };
        if attempts.is_empty() {
            return Err(match origin_skipped {
                Some(why) if mirror.is_some() => {
                    format!(
                        "no mirror endpoint is configured for {} and {why}",
                        r.domain
                    )
                }
                Some(why) => why,
                None => format!("no endpoint for {}", r.domain),
            });
        }
        Ok(PullPlan {
            attempts,
            origin_skipped,
        })
    }

    /// The credentials an attempt sends: at a mirror only those configured for its host; at
    /// the registry itself the pull's own (a pod's pull secret) first.
    pub fn credentials_for(
        &self,
        attempt: &Attempt,
        r: &Reference,
        pull: Option<&Credentials>,
    ) -> Option<Credentials> {
        let configured = |h: &str| {
            self.mirrors
                .own_host(h)
                .and_then(HostSettings::credentials)
                .cloned()
        };
        let wildcard = || {
            self.mirrors
                .own_host("*")
                .and_then(HostSettings::credentials)
                .cloned()
        };
        if !attempt.origin {
            return configured(&attempt.host).or_else(wildcard);
        }
        pull.cloned()
            .or_else(|| configured(&r.domain))
            .or_else(|| configured(&attempt.host))
            .or_else(|| self.credentials.get(&r.domain).cloned())
            .or_else(wildcard)
    }

    /// The HTTP client for an attempt's host if `configs` gives it TLS settings.
    pub fn client_for(&self, attempt: &Attempt, r: &Reference) -> Option<&reqwest::Client> {
        let own = |h: &str| self.mirrors.own_host(h).and_then(HostSettings::client);
        own(&attempt.host)
            .or_else(|| attempt.origin.then(|| own(&r.domain)).flatten())
            .or_else(|| own("*"))
    }
}

fn normalise_registry(name: &str) -> Result<String, String> {
    if name == "*" {
        return Ok(name.to_owned());
    }
    if !valid_domain(name) {
        return Err(format!(
            "mirrors: {name:?} is not a registry host[:port] or \"*\""
        ));
    }
    let name = name.to_ascii_lowercase();
    Ok(if name == LEGACY_DOCKER_DOMAIN {
        DEFAULT_DOMAIN.to_owned()
    } else {
        name
    })
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let url = url::Url::parse(s).map_err(|e| {
        // The text is not shown: it could hold user:password.
        format!("not a URL ({e}); write http://host[:port] or https://host[:port]")
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not accepted; put them under configs".into());
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{s:?}: the scheme must be http or https (it decides plain HTTP or TLS)"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?}: a query or fragment has no meaning here"));
    }
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => return Err(format!("{s:?} has no host")),
    };
    let mut path = url.path().trim_end_matches('/');
    path = path.strip_suffix("/v2").unwrap_or(path);
    Ok(Endpoint {
        base: format!("{}://{host}{path}", url.scheme()),
        host,
    })
}

fn host_settings(name: &str, raw: RawHost, dir: &Path) -> Result<HostSettings, String> {
    let at = |what: &str| format!("configs.{name}.{what}");
    let credentials = match raw.auth {
        None => None,
        Some(a) => {
            if a.identitytoken.is_some() {
                return Err(format!(
                    "{}: identity tokens are not supported; use username and password",
                    at("auth.identitytoken")
                ));
            }
            match (a.username, a.password, a.auth) {
                (Some(u), Some(p), None) if !u.0.is_empty() => Some(Credentials {
                    username: u.0,
                    password: p.0,
                }),
                (None, None, Some(encoded)) => Some(decode_auth(&encoded.0).ok_or_else(|| {
                    format!("{}: not base64 of \"username:password\"", at("auth.auth"))
                })?),
                (None, None, None) => None,
                _ => {
                    return Err(format!(
                        "{}: give username and password, or auth (base64 of \"username:password\")",
                        at("auth")
                    ))
                }
            }
        }
    };
    let tls = match raw.tls {
        None => None,
        Some(t) => Some(build_tls(&t, dir).map_err(|e| format!("{}: {e}", at("tls")))?),
    };
    Ok(HostSettings { credentials, tls })
}

fn decode_auth(encoded: &str) -> Option<Credentials> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    (!u.is_empty()).then(|| Credentials {
        username: u.to_owned(),
        password: p.to_owned(),
    })
}

fn read_pem(dir: &Path, file: &Path, what: &str) -> Result<Vec<u8>, String> {
    let path = dir.join(file);
    let f = std::fs::File::open(&path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mut data = Vec::new();
    f.take(MAX_PEM_FILE_SIZE + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if data.len() as u64 > MAX_PEM_FILE_SIZE {
        return Err(format!(
            "{what} {} is larger than {MAX_PEM_FILE_SIZE} bytes",
            path.display()
        ));
    }
    Ok(data)
}

fn build_tls(t: &RawTls, dir: &Path) -> Result<Tls, String> {
    let mut builder = client_builder();
    let mut summary = Vec::new();
    if let Some(ca) = &t.ca_file {
        let pem = read_pem(dir, ca, "ca_file")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "ca_file {}: no PEM certificate in it",
                ca.display()
            ));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
        summary.push(format!("ca_file={}", ca.display()));
    }
    match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let mut pem = read_pem(dir, cert, "cert_file")?;
            pem.push(b'\n');
            pem.extend(read_pem(dir, key, "key_file")?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "cert_file {} with key_file {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(identity);
            summary.push(format!("cert_file={}", cert.display()));
        }
        (None, None) => {}
        _ => return Err("cert_file and key_file go together".into()),
    }
    if t.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
        summary.push("insecure_skip_verify".into());
    }
    let client = builder
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    Ok(Tls {
        client,
        summary: format!("Tls({})", summary.join(", ")),
    })
}

/// Every string under an `auth` key of the text, to blank out of error messages.
fn secrets_in(text: &str) -> Vec<String> {
    fn walk(v: &serde_yaml::Value, under_auth: bool, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                for (k, v) in m {
                    walk(v, under_auth || k.as_str() == Some("auth"), out);
                }
            }
            serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| walk(v, under_auth, out)),
            serde_yaml::Value::Tagged(t) => walk(&t.value, under_auth, out),
            serde_yaml::Value::String(s) if under_auth => out.push(s.clone()),
            serde_yaml::Value::Number(n) if under_auth => out.push(n.to_string()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_yaml::from_str::<serde_yaml::Value>(text) {
        walk(&v, false, &mut out);
    }
    out.retain(|s| !s.is_empty());
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

fn redact(message: &str, secrets: &[String]) -> String {
    let mut m = message.to_owned();
    for s in secrets {
        m = m.replace(s.as_str(), "<redacted>");
    }
    m
}

// The file as written. `deny_unknown_fields` turns a misspelt key into an error.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map with `mirrors` and `configs`")]
struct RawFile {
    #[serde(default)]
    mirrors: Ordered<RawMirror>,
    #[serde(default)]
    configs: Ordered<RawHost>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mirror entry: a map with `endpoint` and `rewrite`"
)]
struct RawMirror {
    #[serde(default)]
    endpoint: Vec<String>,
    #[serde(default)]
    rewrite: Ordered<String>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a host's settings: a map with `auth` and `tls`"
)]
struct RawHost {
    auth: Option<RawAuth>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `username` and `password`, or `auth`"
)]
struct RawAuth {
    username: Option<Secret>,
    password: Option<Secret>,
    auth: Option<Secret>,
    identitytoken: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with `ca_file`, `cert_file`, `key_file`, `insecure_skip_verify`"
)]
struct RawTls {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

/// A string whose parse errors never show it.
struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
        }
        d.deserialize_string(V)
    }
}

/// A map kept in file order; a key given twice is an error.
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered<T>, E> {
                Ok(Ordered::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(format!("{k:?} appears twice")));
                    }
                    let v = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> MirrorConfig {
        MirrorConfig::parse(text, Path::new("/nonexistent")).unwrap()
    }

    fn parse_err(text: &str) -> String {
        MirrorConfig::parse(text, Path::new("/nonexistent")).unwrap_err()
    }

    fn config(text: &str) -> RegistryConfig {
        RegistryConfig {
            mirrors: parse(text),
            ..RegistryConfig::default()
        }
    }

    /// `(base/v2/path, origin)` of each attempt.
    fn urls(c: &RegistryConfig, image: &str) -> Vec<String> {
        let r = Reference::parse(image).unwrap();
        c.plan(&r)
            .unwrap()
            .attempts
            .iter()
            .map(|a| format!("{}/v2/{}", a.base, a.path))
            .collect()
    }

    const LAB: &str = r#"
mirrors:
  docker.io:
    endpoint: ["http://172.31.250.1:5000"]
    rewrite:
      "^(.*)$": "docker.io/$1"
  gcr.io:
    endpoint: ["http://172.31.250.1:5000"]
    rewrite:
      "^(.*)$": "gcr.io/$1"
  registry.k8s.io:
    endpoint:
      - http://172.31.250.1:5000
    rewrite:
      "^(.*)$": "registry.k8s.io/$1"
"#;

    #[test]
    fn docker_io_rewrite_sees_the_library_prefix() {
        let c = config(LAB);
        assert_eq!(
            urls(&c, "nginx"),
            [
                "http://172.31.250.1:5000/v2/docker.io/library/nginx",
                "https://registry-1.docker.io/v2/library/nginx",
            ]
        );
        assert_eq!(
            urls(&c, "docker.io/library/nginx:latest")[0],
            "http://172.31.250.1:5000/v2/docker.io/library/nginx"
        );
        assert_eq!(
            urls(&c, "python:3.12")[0],
            "http://172.31.250.1:5000/v2/docker.io/library/python"
        );
        assert_eq!(
            urls(&c, "gcr.io/google_containers/pause:latest"),
            [
                "http://172.31.250.1:5000/v2/gcr.io/google_containers/pause",
                "https://gcr.io/v2/google_containers/pause",
            ]
        );
        assert_eq!(
            urls(&c, "registry.k8s.io/pause:3.10")[0],
            "http://172.31.250.1:5000/v2/registry.k8s.io/pause"
        );
        // No entry, no "*": straight to the registry.
        assert_eq!(urls(&c, "quay.io/a/b"), ["https://quay.io/v2/a/b"]);
        let plan = c.plan(&Reference::parse("nginx").unwrap()).unwrap();
        assert!(!plan.attempts[0].origin && plan.attempts[1].origin);
        assert_eq!(plan.attempts[0].host, "172.31.250.1:5000");
        assert_eq!(plan.origin_skipped, None);
    }

    #[test]
    fn endpoints_in_order_first_matching_rewrite_wins() {
        let c = config(
            r#"
mirrors:
  docker.io:
    endpoint: ["https://a.example:5000/", "http://b.example/v2", "https://c.example/prefix/v2/"]
    rewrite:
      "^rancher/(.*)": "mirrorproject/rancher-images/$1"
      "^library/(.*)": "lib/${1}-x"
      "^(.*)$": "never/$1"
"#,
        );
        assert_eq!(
            urls(&c, "rancher/coredns-coredns:1.6.3"),
            [
                "https://a.example:5000/v2/mirrorproject/rancher-images/coredns-coredns",
                "http://b.example/v2/mirrorproject/rancher-images/coredns-coredns",
                "https://c.example/prefix/v2/mirrorproject/rancher-images/coredns-coredns",
                "https://registry-1.docker.io/v2/rancher/coredns-coredns",
            ]
        );
        assert_eq!(
            urls(&c, "busybox")[0],
            "https://a.example:5000/v2/lib/busybox-x"
        );
        assert_eq!(
            urls(&c, "luksa/kubia")[0],
            "https://a.example:5000/v2/never/luksa/kubia"
        );
    }

    #[test]
    fn wildcard_covers_registries_without_an_entry() {
        let c = config(
            r#"
mirrors:
  "*":
    endpoint: ["http://127.0.0.1:5000"]
  quay.io:
    endpoint: ["https://quay-mirror.example"]
"#,
        );
        assert_eq!(
            urls(&c, "ghcr.io/x/y:1"),
            ["http://127.0.0.1:5000/v2/x/y", "https://ghcr.io/v2/x/y"]
        );
        // An own entry replaces "*".
        assert_eq!(
            urls(&c, "quay.io/a/b"),
            [
                "https://quay-mirror.example/v2/a/b",
                "https://quay.io/v2/a/b"
            ]
        );
    }

    #[test]
    fn disabled_default_endpoint_never_reaches_the_origin() {
        let mut c = config(LAB);
        c.disable_default_endpoint = true;
        let plan = c.plan(&Reference::parse("nginx:1.27").unwrap()).unwrap();
        assert_eq!(plan.attempts.len(), 1);
        assert!(plan.attempts.iter().all(|a| !a.origin));
        assert!(plan
            .origin_skipped
            .unwrap()
            .contains("--disable-default-registry-endpoint"));
        // As in k3s, it applies to registries with a mirror entry only ...
        assert_eq!(urls(&c, "quay.io/a/b"), ["https://quay.io/v2/a/b"]);
        // ... so an offline node has a "*" entry: nothing goes anywhere but to its mirrors.
        let mut offline = config(
            "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:5000\"]\n  \"*\":\n    endpoint: [\"http://127.0.0.1:5001\"]\n",
        );
        offline.disable_default_endpoint = true;
        for image in [
            "nginx",
            "quay.io/a/b",
            "registry.k8s.io/pause:3.10",
            "10.1.2.3:5000/x",
        ] {
            let r = Reference::parse(image).unwrap();
            let plan = offline.plan(&r).unwrap();
            assert!(
                plan.attempts
                    .iter()
                    .all(|a| !a.origin && a.host.starts_with("127.0.0.1:")),
                "{image}: {plan:?}"
            );
        }
        // An entry without endpoints and no default endpoint: nothing to try, said clearly.
        let mut empty = config("mirrors:\n  docker.io: {}\n");
        empty.disable_default_endpoint = true;
        let err = empty.plan(&Reference::parse("nginx").unwrap()).unwrap_err();
        assert!(
            err.contains("no mirror endpoint") && err.contains("disabled"),
            "{err}"
        );
    }

    #[test]
    fn local_registries_only_still_allows_mirrors() {
        let mut c = config(LAB);
        c.allowed = Some(Vec::new());
        let plan = c.plan(&Reference::parse("nginx").unwrap()).unwrap();
        assert_eq!(plan.attempts.len(), 1);
        assert!(plan.origin_skipped.unwrap().contains("allowed"));
        let err = c
            .plan(&Reference::parse("quay.io/a/b").unwrap())
            .unwrap_err();
        assert!(err.contains("allowed"), "{err}");
        // Loopback registries stay reachable.
        assert_eq!(urls(&c, "127.0.0.1:5000/a"), ["http://127.0.0.1:5000/v2/a"]);
    }

    #[test]
    fn insecure_registry_and_same_host_mirror() {
        let mut c = config(
            "mirrors:\n  172.31.250.1:5000:\n    endpoint: [\"http://172.31.250.1:5000\"]\n",
        );
        // The entry says how to talk to the registry itself: no second, https attempt.
        let plan = c
            .plan(&Reference::parse("172.31.250.1:5000/x/y").unwrap())
            .unwrap();
        assert_eq!(plan.attempts.len(), 1);
        assert_eq!(plan.attempts[0].base, "http://172.31.250.1:5000");
        c.plain_http = vec!["10.0.0.1:5000".into()];
        assert_eq!(urls(&c, "10.0.0.1:5000/x"), ["http://10.0.0.1:5000/v2/x"]);
        assert_eq!(urls(&c, "10.0.0.2:5000/x"), ["https://10.0.0.2:5000/v2/x"]);
    }

    #[test]
    fn rewrite_to_an_invalid_path_is_an_error() {
        let c = config(
            "mirrors:\n  docker.io:\n    endpoint: [\"http://127.0.0.1:1\"]\n    rewrite:\n      \"^(.*)$\": \"Upper/$1\"\n",
        );
        let err = c.plan(&Reference::parse("nginx").unwrap()).unwrap_err();
        assert!(err.contains("not a repository path"), "{err}");
    }

    #[test]
    fn credentials_per_host() {
        let c = config(
            r#"
mirrors:
  docker.io:
    endpoint: ["https://mirror.example:5000", "https://other.example"]
configs:
  mirror.example:5000:
    auth: {username: mirror-user, password: mirror-pass}
  docker.io:
    auth:
      auth: aHViLXVzZXI6aHViOnBhc3M=
  "*":
    auth: {username: any, password: thing}
"#,
        );
        let r = Reference::parse("nginx").unwrap();
        let plan = c.plan(&r).unwrap();
        let pod = Credentials {
            username: "pod".into(),
            password: "secret".into(),
        };
        let user = |i: usize, pull: Option<&Credentials>| {
            c.credentials_for(&plan.attempts[i], &r, pull)
                .map(|c| format!("{}:{}", c.username, c.password))
        };
        assert_eq!(
            user(0, Some(&pod)).as_deref(),
            Some("mirror-user:mirror-pass")
        );
        // A pod's pull secret never goes to a mirror.
        assert_eq!(user(1, Some(&pod)).as_deref(), Some("any:thing"));
        assert_eq!(user(2, Some(&pod)).as_deref(), Some("pod:secret"));
        // docker.io's own entry, base64 "user:pass" (the password may hold ':').
        assert_eq!(user(2, None).as_deref(), Some("hub-user:hub:pass"));
    }

    #[test]
    fn malformed_files_give_readable_errors() {
        let cases = [
            ("mirrors: [", "mirrors"),
            ("mirors: {}", "unknown field `mirors`"),
            (
                "mirrors:\n  docker.io:\n    endpoints: []\n",
                "unknown field `endpoints`",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"ftp://x\"]\n",
                "scheme",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"172.31.250.1:5000\"]\n",
                "endpoint[0]",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"not a url\"]\n",
                "not a URL",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"http://\"]\n",
                "endpoint[0]",
            ),
            (
                "mirrors:\n  docker.io:\n    endpoint: [\"http://x/?q=1\"]\n",
                "query",
            ),
            (
                "mirrors:\n  docker.io:\n    rewrite: {\"(unclosed\": \"x\"}\n",
                "invalid regex",
            ),
            ("mirrors:\n  \"bad host!\": {}\n", "not a registry host"),
            ("mirrors:\n  a.io: {}\n  a.io: {}\n", "twice"),
            (
                "configs:\n  x.io:\n    tls: {ca_file: missing.pem}\n",
                "missing.pem",
            ),
            (
                "configs:\n  x.io:\n    tls: {cert_file: c.pem}\n",
                "go together",
            ),
            (
                "configs:\n  x.io:\n    tls: {insecure: true}\n",
                "unknown field `insecure`",
            ),
            (
                "configs:\n  x.io:\n    auth: {username: u}\n",
                "username and password",
            ),
            (
                "configs:\n  x.io:\n    auth: {identitytoken: t}\n",
                "not supported",
            ),
            ("configs:\n  x.io:\n    auth: {auth: \"%%%\"}\n", "base64"),
            ("- a\n- b\n", "a map with `mirrors` and `configs`"),
        ];
        for (text, expected) in cases {
            let err = parse_err(text);
            assert!(
                err.contains(expected),
                "{text:?}: {err:?} lacks {expected:?}"
            );
        }
        assert!(parse("").is_empty());
        assert!(parse("# nothing\n").is_empty());
        assert!(parse("mirrors:\nconfigs:\n").is_empty());
    }

    #[test]
    fn credentials_stay_out_of_errors_and_debug() {
        for text in [
            // The error is elsewhere in the file.
            "configs:\n  x.io:\n    auth: {username: hunter-user, password: hunter2secret}\n    tls: {bogus: 1}\n",
            // The credential is where the error is.
            "configs:\n  x.io:\n    auth: {username: hunter-user, password: [hunter2secret]}\n",
            "configs:\n  x.io:\n    auth: hunter2secret\n",
            "configs:\n  x.io:\n    auth: {username: hunter-user, passwd: hunter2secret}\n",
            "mirrors:\n  docker.io:\n    endpoint: [\"http://hunter-user:hunter2secret@mirror.example\"]\n",
            "mirrors:\n  docker.io:\n    endpoint: [\"http://hunter-user:hunter2secret@\"]\n",
        ] {
            let err = parse_err(text);
            assert!(
                !err.contains("hunter2secret") && !err.contains("hunter-user"),
                "{text:?} gave {err:?}"
            );
        }
        let c = parse(
            "configs:\n  x.io:\n    auth: {username: hunter-user, password: hunter2secret}\n",
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("hunter2secret"), "{debug}");
        assert!(c.host("x.io").unwrap().credentials().is_some());
    }

    #[test]
    fn load_bounds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = MirrorConfig::load(&dir.path().join("nope.yaml")).unwrap_err();
        assert!(matches!(missing, MirrorError::Read { .. }), "{missing}");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, "#".repeat(MAX_CONFIG_FILE_SIZE as usize + 1)).unwrap();
        assert!(matches!(
            MirrorConfig::load(&big).unwrap_err(),
            MirrorError::TooLarge { .. }
        ));
        let ok = dir.path().join("ok.yaml");
        std::fs::write(&ok, LAB).unwrap();
        assert_eq!(MirrorConfig::load(&ok).unwrap().mirrors.len(), 3);
    }

    #[test]
    fn tls_settings_build_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["mirror.example".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ca.signing_key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let c = MirrorConfig::parse(
            "configs:\n  mirror.example:\n    tls:\n      ca_file: ca.pem\n      cert_file: ca.pem\n      key_file: key.pem\n",
            dir.path(),
        )
        .unwrap();
        assert!(c.host("mirror.example").unwrap().client().is_some());
        assert!(c.host("other.example").is_none());
        let err = MirrorConfig::parse(
            "configs:\n  mirror.example:\n    tls: {ca_file: junk.pem}\n",
            dir.path(),
        )
        .unwrap_err();
        assert!(err.contains("junk.pem"), "{err}");
    }
}
