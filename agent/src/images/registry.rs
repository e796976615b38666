//! Pulls from registries speaking the OCI Distribution API (v2).
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: none, `Basic` (the
//! credentials as they are) or `Bearer` (a token from the realm, fetched with the credentials
//! as basic auth if there are any, for `repository:<path>:pull`). Loopback registries and the
//! hosts in [`RegistryConfig::plain_http`] are spoken to over plain HTTP, the rest over HTTPS
//! with the webpki roots (rustls). Every manifest and blob is verified against its digest.
//!
//! Which endpoints a pull tries (mirrors, rewritten paths, the registry itself) and with which
//! credentials and TLS settings is decided in [`super::mirrors`]; a pull tries them in order
//! until one serves the whole image.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use reqwest::{Response, StatusCode};
use tokio::io::AsyncWriteExt;

use super::digest::Hasher;
use super::mirrors::{Attempt, MirrorConfig};
use super::{
    is_index, is_loopback_host, select_platform, Digest, Image, ImageError, ImageStore, Reference,
    MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE,
};

/// The manifest types we accept, best first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A user name and password (or token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or access token.
    pub password: String,
}

/// Never shows the password (configs end up in debug logs).
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the store talks to registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Registry hosts (`host:port`) spoken to over plain HTTP besides the loopback ones.
    pub plain_http: Vec<String>,
    /// If set, only these registry hosts are contacted; pulls from others fail at once. A test
    /// cluster sets it so that nothing tries to leave the machine.
    pub allowed: Option<Vec<String>>,
    /// Credentials per registry host, used when a pull brings none.
    pub credentials: HashMap<String, Credentials>,
    /// Mirrors and per-host credentials and TLS (`--registry-config`, k3s's registries.yaml).
    pub mirrors: MirrorConfig,
    /// Registries with a mirror entry are pulled from their mirrors only, never from
    /// themselves (k3s's `--disable-default-registry-endpoint`).
    pub disable_default_endpoint: bool,
}

impl RegistryConfig {
    /// Only registries on this machine.
    pub fn loopback_only() -> Self {
        Self {
            allowed: Some(Vec::new()),
            ..Self::default()
        }
    }

    pub(crate) fn is_allowed(&self, domain: &str) -> bool {
        is_loopback_host(domain)
            || self
                .allowed
                .as_ref()
                .is_none_or(|a| a.iter().any(|h| h == domain))
    }
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` / `Bearer realm="...",service="...",scope="..."`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut map = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            match after.find(',') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            }
        };
        map.insert(key, value.to_owned());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: map.remove("realm")?,
            service: map.remove("service"),
            scope: map.remove("scope"),
        }),
        _ => None,
    }
}

/// One pull's connection to a repository at one endpoint, with the authorization it has earned.
struct Session<'a> {
    http: &'a reqwest::Client,
    /// `scheme://host[:port][/prefix]` of the endpoint.
    base: String,
    /// The repository path at this endpoint (rewritten at a mirror).
    path: String,
    /// What the pod asked for (in messages).
    reference: &'a Reference,
    credentials: Option<Credentials>,
    authorization: Option<HeaderValue>,
}

impl Session<'_> {
    fn fail(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Pull {
            reference: self.reference.to_string(),
            reason: reason.into(),
        }
    }

    /// GET with the current authorization; on 401 answers the challenge once and retries.
    async fn get(&mut self, url: &str, accept: Option<&str>) -> Result<Response, ImageError> {
        let mut retried = false;
        loop {
            let mut req = self.http.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(auth) = &self.authorization {
                req = req.header(AUTHORIZATION, auth.clone());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| self.fail(format!("GET {url}: {}", error_chain(&e))))?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried {
                if resp.status() == StatusCode::UNAUTHORIZED {
                    return Err(
                        self.fail(format!("GET {url}: unauthorized (check the credentials)"))
                    );
                }
                return Ok(resp);
            }
            retried = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(parse_challenge)
                .ok_or_else(|| self.fail(format!("GET {url}: 401 without a usable challenge")))?;
            self.authorization = Some(self.authorize(challenge).await?);
        }
    }

    async fn authorize(&self, challenge: Challenge) -> Result<HeaderValue, ImageError> {
        match challenge {
            Challenge::Basic => {
                let c = self.credentials.as_ref().ok_or_else(|| {
                    self.fail("the registry wants credentials and none were given")
                })?;
                basic_header(c).map_err(|e| self.fail(e))
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.path));
                let mut req = self.http.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = &self.credentials {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| self.fail(format!("token from {realm}: {}", error_chain(&e))))?;
                if !resp.status().is_success() {
                    return Err(self.fail(format!("token from {realm}: {}", resp.status())));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = read_limited(resp, 1 << 20)
                    .await
                    .map_err(|e| self.fail(format!("token from {realm}: {e}")))?;
                let t: Token = serde_json::from_slice(&body)
                    .map_err(|e| self.fail(format!("token from {realm}: {e}")))?;
                let token = t.token.or(t.access_token).ok_or_else(|| {
                    self.fail(format!("token from {realm}: no token in the answer"))
                })?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| self.fail("the token is not a valid header value"))
            }
        }
    }

    /// Fetches a manifest or index by tag or digest; returns its bytes, digest and media type.
    async fn manifest(
        &mut self,
        reference: &str,
    ) -> Result<(Vec<u8>, Digest, Option<String>), ImageError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.path);
        let resp = self.get(&url, Some(MANIFEST_ACCEPT)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(self.fail(format!("manifest {reference} not found")));
        }
        if !resp.status().is_success() {
            return Err(self.fail(format!("GET {url}: {}", resp.status())));
        }
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or_default().trim().to_owned());
        let data = read_limited(resp, MAX_MANIFEST_SIZE)
            .await
            .map_err(|e| self.fail(format!("manifest {reference}: {e}")))?;
        let digest = Digest::of(&data);
        if let Ok(expected) = Digest::parse(reference) {
            if expected != digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {}", self.reference),
                    expected,
                    actual: digest,
                });
            }
        }
        Ok((data, digest, media_type))
    }

    /// Downloads a blob into the store unless it is there, verifying it; more than the `size`
    /// its descriptor announced is refused as soon as it arrives.
    async fn blob(
        &mut self,
        store: &ImageStore,
        digest: &Digest,
        size: u64,
    ) -> Result<(), ImageError> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.path);
        let mut resp = self.get(&url, None).await?;
        if !resp.status().is_success() {
            return Err(self.fail(format!("GET {url}: {}", resp.status())));
        }
        let tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())
            .map_err(|e| ImageError::io("creating a temporary blob", e))?;
        let std_file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| ImageError::io("opening a temporary blob", e))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Hasher::default();
        let mut received = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.fail(format!("downloading {digest}: {}", error_chain(&e))))?
        {
            received += chunk.len() as u64;
            if received > size {
                return Err(self.fail(format!(
                    "blob {digest} is larger than the {size} bytes its descriptor says"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ImageError::io(format!("writing blob {digest}"), e))?;
        }
        file.flush()
            .await
            .map_err(|e| ImageError::io(format!("writing blob {digest}"), e))?;
        let actual = hasher.finish();
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob of {}", self.reference),
                expected: digest.clone(),
                actual,
            });
        }
        let store = store.clone();
        let d = digest.clone();
        tokio::task::spawn_blocking(move || store.commit_blob(tmp, &d))
            .await
            .map_err(|e| ImageError::io("storing a blob", std::io::Error::other(e)))?
    }
}

async fn read_limited(mut resp: Response, limit: u64) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(format!("larger than {limit} bytes"));
    }
    let mut data = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        data.extend_from_slice(&chunk);
        if data.len() as u64 > limit {
            return Err(format!("larger than {limit} bytes"));
        }
    }
    Ok(data)
}

fn basic_header(c: &Credentials) -> Result<HeaderValue, String> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", c.username, c.password).as_bytes());
    HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| "credentials are not a valid header value".to_owned())
}

/// An error with its causes (reqwest's Display hides the interesting part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The HTTP client settings every registry connection shares (TLS settings per host are
/// added to it in [`super::mirrors`]).
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::USER_AGENT,
        HeaderValue::from_static(concat!("skiff-agent/", env!("CARGO_PKG_VERSION"))),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
}

impl ImageStore {
    fn http(&self) -> Result<&reqwest::Client, ImageError> {
        if let Some(c) = self.inner.http.get() {
            return Ok(c);
        }
        let client = client_builder()
            .build()
            .map_err(|e| ImageError::io("building the HTTP client", std::io::Error::other(e)))?;
        Ok(self.inner.http.get_or_init(|| client))
    }

    /// Pulls an image (linux/amd64 if the reference names an index) and returns it unpacked,
    /// from the first endpoint (mirror or the registry itself, see [`super::mirrors`]) that
    /// serves it. Blobs already stored are not downloaded again.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        let registry = &self.inner.registry;
        let plan = registry.plan(&r).map_err(|reason| ImageError::Pull {
            reference: r.to_string(),
            reason,
        })?;
        let _ingest = self.ingest();
        let mut failures = Vec::new();
        for attempt in &plan.attempts {
            tracing::debug!(reference = %r, endpoint = %attempt.base, path = %attempt.path, "pulling");
            let session = Session {
                http: match registry.client_for(attempt, &r) {
                    Some(c) => c,
                    None => self.http()?,
                },
                base: attempt.base.clone(),
                path: attempt.path.clone(),
                reference: &r,
                credentials: registry.credentials_for(attempt, &r, credentials),
                authorization: None,
            };
            match self.pull_from(session, &r).await {
                Ok(image) => return Ok(image),
                Err(e) => {
                    if plan.attempts.len() > 1 {
                        tracing::info!(reference = %r, endpoint = %attempt.base, error = %e, "pull from this endpoint failed");
                    }
                    failures.push((attempt, e));
                }
            }
        }
        if failures.len() == 1 && plan.origin_skipped.is_none() {
            if let Some((_, e)) = failures.pop() {
                return Err(e);
            }
        }
        Err(ImageError::Pull {
            reference: r.to_string(),
            reason: failure_report(&failures, plan.origin_skipped.as_deref()),
        })
    }

    /// The pull from one endpoint.
    async fn pull_from(
        &self,
        mut session: Session<'_>,
        r: &Reference,
    ) -> Result<Image, ImageError> {
        let (mut data, top_digest, media_type) = session.manifest(&r.manifest_reference()).await?;
        let mut digest = top_digest.clone();
        if is_index(&data, media_type.as_deref()) {
            self.put_blob(&data[..], Some(&digest), "index")?;
            let index = oci_spec::image::ImageIndex::from_reader(&data[..])
                .map_err(|e| ImageError::malformed(format!("index of {r}"), e))?;
            let chosen = select_platform(&index)
                .ok_or_else(|| session.fail("the index has no linux/amd64 image"))?;
            let (d, got, _) = session.manifest(&chosen.to_string()).await?;
            data = d;
            digest = got;
        }
        let manifest = oci_spec::image::ImageManifest::from_reader(&data[..])
            .map_err(|e| ImageError::malformed(format!("manifest of {r}"), e))?;
        let config = Digest::parse(manifest.config().digest().as_ref())?;
        if manifest.config().size() > MAX_CONFIG_SIZE {
            return Err(session.fail("the image config is too large"));
        }
        session
            .blob(self, &config, manifest.config().size())
            .await?;
        for l in manifest.layers() {
            session
                .blob(self, &Digest::parse(l.digest().as_ref())?, l.size())
                .await?;
        }
        self.put_blob(&data[..], Some(&digest), "manifest")?;
        let mut refs = vec![r.clone(), r.with_digest(&top_digest)];
        if r.digest.is_some() {
            refs.remove(0);
            if let Some(t) = &r.tag {
                refs.push(r.with_tag(t)?);
            }
        }
        let store = self.clone();
        let mut image = tokio::task::spawn_blocking(move || store.tag(&refs, &digest))
            .await
            .map_err(|e| ImageError::io("unpacking layers", std::io::Error::other(e)))??;
        image.reference = r.to_string();
        Ok(image)
    }
}

/// Every endpoint's failure, in the order tried, and why the registry itself was not tried.
fn failure_report(failures: &[(&Attempt, ImageError)], origin_skipped: Option<&str>) -> String {
    let mut parts: Vec<String> = failures
        .iter()
        .map(|(a, e)| {
            let why = match e {
                ImageError::Pull { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            let what = if a.origin { "registry" } else { "mirror" };
            format!("{what} {} (repository {}): {why}", a.base, a.path)
        })
        .collect();
    if let Some(why) = origin_skipped {
        parts.push(format!("not trying the registry itself: {why}"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge("Bearer realm=http://127.0.0.1:1/token"),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn basic_authorization() {
        let c = Credentials {
            username: "user".into(),
            password: "pass".into(),
        };
        assert_eq!(basic_header(&c).unwrap(), "Basic dXNlcjpwYXNz");
    }

    #[test]
    fn allowed_registries() {
        let c = RegistryConfig::loopback_only();
        assert!(c.is_allowed("127.0.0.1:5000"));
        assert!(c.is_allowed("localhost"));
        assert!(!c.is_allowed("docker.io"));
        assert!(RegistryConfig::default().is_allowed("docker.io"));
    }
}
