//! Bootstrap tokens (Kubernetes' `cluster-bootstrap/token`): a bearer token `<id>.<secret>`
//! (`[a-z0-9]{6}.[a-z0-9]{16}`) stored as a Secret of type `bootstrap.kubernetes.io/token`
//! named `bootstrap-token-<id>` in `kube-system`, holding `token-id`, `token-secret`, an
//! optional RFC 3339 `expiration`, the usages it is good for (`usage-bootstrap-authentication`,
//! `usage-bootstrap-signing`: `"true"`), an optional `description` and `auth-extra-groups`
//! (`system:bootstrappers:...`, comma-separated).
//!
//! The id is public (it names the Secret and the signatures in `cluster-info`); the secret is
//! what authenticates, so it is never logged and `Debug` leaves it out.

use std::fmt;

use base64::Engine as _;
use rand::Rng;
use serde_json::{json, Map, Value};

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Token Secrets are named this followed by the token id.
pub const SECRET_PREFIX: &str = "bootstrap-token-";
/// Where token Secrets live.
pub const NAMESPACE: &str = "kube-system";
/// The data key of the token id.
pub const KEY_ID: &str = "token-id";
/// The data key of the token secret.
pub const KEY_SECRET: &str = "token-secret";
/// The data key of the RFC 3339 expiry.
pub const KEY_EXPIRATION: &str = "expiration";
/// The data key of a human description.
pub const KEY_DESCRIPTION: &str = "description";
/// The data key of the extra groups.
pub const KEY_EXTRA_GROUPS: &str = "auth-extra-groups";
/// `"true"`: the token authenticates API requests.
pub const USAGE_AUTHENTICATION: &str = "usage-bootstrap-authentication";
/// `"true"`: the bootstrap signer signs `cluster-info` with the token.
pub const USAGE_SIGNING: &str = "usage-bootstrap-signing";
/// The user a token authenticates as is this followed by its id.
pub const USER_PREFIX: &str = "system:bootstrap:";
/// The group of every bootstrap token.
pub const GROUP: &str = "system:bootstrappers";

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn is_token_text(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The public part, `[a-z0-9]{6}`.
    pub id: String,
    /// The secret part, `[a-z0-9]{16}`.
    pub secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Reads `<id>.<secret>`; `None` if it is not one (then it is some other kind of token).
    pub fn parse(text: &str) -> Option<Self> {
        let (id, secret) = text.split_once('.')?;
        (is_token_text(id, ID_LEN) && is_token_text(secret, SECRET_LEN)).then(|| Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// A new random token.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        Self {
            id: pick(ID_LEN),
            secret: pick(SECRET_LEN),
        }
    }

    /// `<id>.<secret>`, the bearer token itself.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The name of the token's Secret.
    pub fn secret_name(&self) -> String {
        format!("{SECRET_PREFIX}{}", self.id)
    }
}

/// Whether `id` is a token id (`[a-z0-9]{6}`).
pub fn is_id(id: &str) -> bool {
    is_token_text(id, ID_LEN)
}

/// Whether `group` may be an extra group of a token (`system:bootstrappers:...`).
pub fn valid_extra_group(group: &str) -> bool {
    let Some(rest) = group.strip_prefix("system:bootstrappers:") else {
        return false;
    };
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !rest.is_empty()
        && rest.len() <= 256
        && rest.bytes().all(|b| ok(b) || b == b':' || b == b'-')
        && rest.bytes().last().is_some_and(ok)
}

/// What to make a token Secret with.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// When it stops working, or never.
    pub expiration: Option<jiff::Timestamp>,
    /// Authenticate API requests with it.
    pub authentication: bool,
    /// Have `cluster-info` signed with it.
    pub signing: bool,
    /// A human description.
    pub description: Option<String>,
    /// Groups beyond `system:bootstrappers` (each `system:bootstrappers:...`).
    pub extra_groups: Vec<String>,
}

/// The Secret (JSON) holding `token` with `options`.
pub fn secret(token: &Token, options: &Options) -> Value {
    let b64 = |s: &str| json!(base64::engine::general_purpose::STANDARD.encode(s));
    let mut data = Map::new();
    data.insert(KEY_ID.into(), b64(&token.id));
    data.insert(KEY_SECRET.into(), b64(&token.secret));
    if let Some(at) = options.expiration {
        data.insert(KEY_EXPIRATION.into(), b64(&skiff_k8s::time::format(at)));
    }
    if options.authentication {
        data.insert(USAGE_AUTHENTICATION.into(), b64("true"));
    }
    if options.signing {
        data.insert(USAGE_SIGNING.into(), b64("true"));
    }
    if let Some(description) = &options.description {
        data.insert(KEY_DESCRIPTION.into(), b64(description));
    }
    if !options.extra_groups.is_empty() {
        data.insert(
            KEY_EXTRA_GROUPS.into(),
            b64(&options.extra_groups.join(",")),
        );
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": SECRET_TYPE,
        "metadata": {"name": token.secret_name(), "namespace": NAMESPACE},
        "data": data})
}

/// A token Secret as read from the API or the store (JSON, `data` base64).
#[derive(Clone)]
pub struct TokenSecret {
    name: String,
    deleting: bool,
    type_: String,
    data: Map<String, Value>,
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSecret")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TokenSecret {
    /// Reads a Secret.
    pub fn from_json(secret: &Value) -> Self {
        let s = |p: &str| {
            secret
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            name: s("/metadata/name"),
            deleting: secret.pointer("/metadata/deletionTimestamp").is_some(),
            type_: s("/type"),
            data: secret
                .get("data")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// The decoded value of data key `key`, empty when absent or not text.
    pub fn get(&self, key: &str) -> String {
        self.data
            .get(key)
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    }

    /// The Secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token it holds, if it is a well-formed token Secret: the right type and name,
    /// and an id and secret of the right form, not being deleted.
    pub fn token(&self) -> Option<Token> {
        if self.deleting || self.type_ != SECRET_TYPE {
            return None;
        }
        let token = Token {
            id: self.get(KEY_ID),
            secret: self.get(KEY_SECRET),
        };
        let well_formed = is_id(&token.id)
            && is_token_text(&token.secret, SECRET_LEN)
            && self.name == token.secret_name();
        well_formed.then_some(token)
    }

    /// When it expires; `Err` for an expiry that does not parse (which counts as expired).
    pub fn expiration(&self) -> Result<Option<jiff::Timestamp>, String> {
        let text = self.get(KEY_EXPIRATION);
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<jiff::Timestamp>()
            .map(Some)
            .map_err(|e| format!("invalid expiration time {text:?}: {e}"))
    }

    /// Whether it has expired at `now` (Kubernetes' `HasExpired`: an unreadable expiry has).
    pub fn expired(&self, now: jiff::Timestamp) -> bool {
        match self.expiration() {
            Ok(Some(at)) => now > at,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Whether the usage key (`usage-bootstrap-*`) is `"true"`.
    pub fn usable_for(&self, usage: &str) -> bool {
        self.get(usage) == "true"
    }

    /// The token's groups: `system:bootstrappers` and its extra groups, sorted and unique
    /// (Kubernetes' `GetGroups`); an error names an extra group that is not allowed.
    pub fn groups(&self) -> Result<Vec<String>, String> {
        let mut groups = vec![GROUP.to_owned()];
        let extra = self.get(KEY_EXTRA_GROUPS);
        for group in extra.split(',').map(str::trim).filter(|g| !g.is_empty()) {
            if !valid_extra_group(group) {
                return Err(format!(
                    "{group:?} (must match system:bootstrappers:[a-z0-9:-]{{0,255}}[a-z0-9])"
                ));
            }
            groups.push(group.to_owned());
        }
        groups.sort();
        groups.dedup();
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_generate_in_their_form() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(
            (t.id.as_str(), t.secret_name().as_str()),
            ("abcdef", "bootstrap-token-abcdef")
        );
        assert_eq!(t.bearer(), "abcdef.0123456789abcdef");
        for bad in [
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef.x",
            "eyJ.eyJ.sig",
        ] {
            assert!(Token::parse(bad).is_none(), "{bad}");
        }
        let g = Token::generate();
        assert_eq!(Token::parse(&g.bearer()), Some(g.clone()));
        assert_ne!(Token::generate(), g);
        assert!(
            !format!("{g:?}").contains(&g.secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn a_secret_made_for_a_token_reads_back() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let at: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let s = TokenSecret::from_json(&secret(
            &t,
            &Options {
                expiration: Some(at),
                authentication: true,
                signing: false,
                description: Some("for n1".into()),
                extra_groups: vec!["system:bootstrappers:workers".into()],
            },
        ));
        assert_eq!(s.token(), Some(t));
        assert_eq!(s.expiration(), Ok(Some(at)));
        assert!(!s.expired("2029-12-31T23:59:59Z".parse().unwrap()));
        assert!(s.expired("2030-01-01T00:00:01Z".parse().unwrap()));
        assert!(s.usable_for(USAGE_AUTHENTICATION) && !s.usable_for(USAGE_SIGNING));
        assert_eq!(
            s.groups().unwrap(),
            ["system:bootstrappers", "system:bootstrappers:workers"]
        );
        assert_eq!(s.get(KEY_DESCRIPTION), "for n1");
    }

    #[test]
    fn malformed_secrets_hold_no_token() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let good = secret(&t, &Options::default());
        let mut wrong_type = good.clone();
        wrong_type["type"] = json!("Opaque");
        let mut wrong_name = good.clone();
        wrong_name["metadata"]["name"] = json!("bootstrap-token-zzzzzz");
        let mut deleting = good.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        for s in [wrong_type, wrong_name, deleting] {
            assert_eq!(TokenSecret::from_json(&s).token(), None);
        }
        let mut bad_expiry = good.clone();
        bad_expiry["data"][KEY_EXPIRATION] =
            json!(base64::engine::general_purpose::STANDARD.encode("soon"));
        assert!(TokenSecret::from_json(&bad_expiry).expired(jiff::Timestamp::now()));
        let mut bad_group = good;
        bad_group["data"][KEY_EXTRA_GROUPS] =
            json!(base64::engine::general_purpose::STANDARD.encode("system:masters"));
        assert!(TokenSecret::from_json(&bad_group).groups().is_err());
        assert!(valid_extra_group(
            "system:bootstrappers:kubeadm:default-node-token"
        ));
        assert!(!valid_extra_group("system:bootstrappers:"));
        assert!(!valid_extra_group("system:bootstrappers:x-"));
    }
}
