//! Image references, normalised the way Kubernetes and containerd do (docker/distribution's
//! `ParseNormalizedNamed`): `kubia:v1` is `docker.io/library/kubia:v1`, a missing tag is `latest`.

use std::fmt;

use super::digest::Digest;
use super::ImageError;

/// The registry that short names refer to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag of a reference without tag or digest.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalised image reference: `domain/path[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/kubia`).
    pub path: String,
    /// Tag; `latest` when the reference had neither tag nor digest.
    pub tag: Option<String>,
    /// Digest pinning the manifest, if the reference had one.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises a reference as written in a pod spec.
    pub fn parse(input: &str) -> Result<Self, ImageError> {
        let invalid = |why: &str| ImageError::InvalidReference {
            reference: input.to_owned(),
            reason: why.to_owned(),
        };
        if input.is_empty() || input.len() > 512 {
            return Err(invalid("empty or too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((name, d)) => (
                name,
                Some(Digest::parse(d).map_err(|_| invalid("invalid digest"))?),
            ),
            None => (input, None),
        };
        // A tag is a ':' after the last '/' (a ':' before it is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_owned()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(invalid("invalid tag"));
            }
        }
        let (mut domain, mut path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), remainder.to_owned())
            }
            _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
        };
        if domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN.clone_into(&mut domain);
        }
        if !valid_domain(&domain) {
            return Err(invalid("invalid registry host"));
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            path = format!("{OFFICIAL_REPO_PREFIX}{path}");
        }
        if path.len() > 255 || !path.split('/').all(valid_path_component) {
            return Err(invalid(
                "invalid repository name (lowercase letters, digits and separators . _ - only)",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (t, _) => t,
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, the name without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The host to talk the registry API to (Docker Hub's API host for `docker.io`).
    pub fn api_host(&self) -> &str {
        if self.domain == DEFAULT_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            &self.domain
        }
    }

    /// What to ask the registry for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ImageError> {
        Self::parse(&format!("{}:{tag}", self.repository()))
    }

    /// The same repository pinned to a digest (no tag): `repo@sha256:...`.
    pub fn with_digest(&self, digest: &Digest) -> Self {
        Self {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.clone()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Lowercase alphanumerics separated by `.`, `_`, `__` or runs of `-`.
pub(crate) fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) if alnum(first) && alnum(last) => {}
        _ => return false,
    }
    if c.contains("..") || c.contains("___") || c.contains("._") || c.contains("_.") {
        return false;
    }
    b.iter()
        .all(|x| alnum(x) || matches!(x, b'.' | b'_' | b'-'))
}

/// A host name or IPv4 address with an optional port, or a bracketed IPv6 address.
pub(crate) fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 255 {
        return false;
    }
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip6, tail)) => {
                if ip6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, tail.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return false;
        }
    }
    host.is_none_or(|h| {
        !h.is_empty()
            && h.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|x| x.is_ascii_alphanumeric() || x == b'-')
            })
    })
}

/// Whether a registry host is on this machine (such registries are spoken to over plain HTTP,
/// as Docker and containerd treat 127.0.0.0/8 and localhost as insecure registries).
pub fn is_loopback_host(domain: &str) -> bool {
    let host = if let Some(rest) = domain.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        domain.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn short_names_get_docker_io_library_and_latest() {
        assert_eq!(norm("kubia:v1"), "docker.io/library/kubia:v1");
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("luksa/kubia"), "docker.io/luksa/kubia:latest");
        assert_eq!(
            norm("index.docker.io/library/nginx:1.27"),
            "docker.io/library/nginx:1.27"
        );
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
    }

    #[test]
    fn registry_hosts_and_ports() {
        assert_eq!(norm("127.0.0.1:5000/kubia:v2"), "127.0.0.1:5000/kubia:v2");
        assert_eq!(norm("localhost/a/b"), "localhost/a/b:latest");
        assert_eq!(norm("localhost:5000/a"), "localhost:5000/a:latest");
        assert_eq!(
            norm("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(norm("[::1]:5000/x:y"), "[::1]:5000/x:y");
        let r = Reference::parse("127.0.0.1:5000/kubia").unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert!(is_loopback_host(&r.domain));
        assert!(is_loopback_host("localhost:80"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("docker.io"));
        assert_eq!(
            Reference::parse("nginx").unwrap().api_host(),
            DOCKER_HUB_API_HOST
        );
    }

    #[test]
    fn digests() {
        let d = "sha256:".to_owned() + &"ab".repeat(32);
        let r = Reference::parse(&format!("kubia@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), format!("docker.io/library/kubia@{d}"));
        assert_eq!(r.manifest_reference(), d);
        let r = Reference::parse(&format!("kubia:v1@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), d);
        assert!(Reference::parse("kubia@sha256:abc").is_err());
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "Kubia:v1",
            "kubia:",
            "kubia:-x",
            "kubia/../x",
            "/kubia",
            "kubia/",
            "a//b",
            "exa mple/x",
            "host:notaport/x",
            "kubia:v1:v2",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn with_tag_and_digest() {
        let r = Reference::parse("kubia:v1").unwrap();
        assert_eq!(
            r.with_tag("v2").unwrap().to_string(),
            "docker.io/library/kubia:v2"
        );
        let d = Digest::parse(&("sha256:".to_owned() + &"0".repeat(64))).unwrap();
        assert_eq!(
            r.with_digest(&d).to_string(),
            format!("docker.io/library/kubia@{d}")
        );
    }
}
