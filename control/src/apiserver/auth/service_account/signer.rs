//! The key that signs and checks ServiceAccount tokens: ES256 (ECDSA P-256) JWTs, with the
//! key id Kubernetes derives (`pkg/serviceaccount/jwt.go`: the SHA-256 of the public key's
//! DER, base64url), and the public half published as a JWKS for OIDC discovery.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PublicKeyData as _};
use serde_json::{json, Value};

use super::claims::Claims;

/// The issuer Kubernetes clusters set up by kubeadm use; `--service-account-issuer`.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How far the clocks of the issuer and the checker may disagree (Kubernetes allows a minute
/// on `nbf`, `iat` and `exp`).
const LEEWAY_SECONDS: u64 = 60;

/// Issues and verifies tokens.
pub struct TokenSigner {
    issuer: String,
    audiences: Vec<String>,
    max_expiration_seconds: Option<i64>,
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwks: Value,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What the signer's settings are (kube-apiserver's `--service-account-*` and `--api-audiences`).
#[derive(Debug, Clone)]
pub struct SignerConfig {
    /// `iss` of every token; also the base of the published `jwks_uri`.
    pub issuer: String,
    /// The audiences the API server accepts, and a token request gets when it names none;
    /// empty means the issuer alone, as kube-apiserver defaults `--api-audiences`.
    pub audiences: Vec<String>,
    /// The longest lifetime a TokenRequest may get; longer requests are shortened to it.
    pub max_expiration_seconds: Option<i64>,
}

impl Default for SignerConfig {
    fn default() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.into(),
            audiences: Vec::new(),
            max_expiration_seconds: None,
        }
    }
}

/// Why a token was not accepted (worded as Kubernetes' authenticator words it).
pub type Rejection = String;

impl TokenSigner {
    /// A signer from a PEM ECDSA P-256 private key (`pki/sa.key`).
    pub fn new(key_pem: &str, config: SignerConfig) -> Result<Self, String> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| format!("reading the key: {e}"))?;
        Self::from_key(&key, config)
    }

    /// A signer with a fresh key that lives as long as the process (tests, and states built
    /// without a data directory).
    pub fn ephemeral(config: SignerConfig) -> Self {
        let key = KeyPair::generate().expect("ring generates P-256 keys");
        Self::from_key(&key, config).expect("a generated P-256 key is usable")
    }

    fn from_key(key: &KeyPair, config: SignerConfig) -> Result<Self, String> {
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("the service account key must be an ECDSA P-256 key".into());
        }
        // The uncompressed point: 0x04, then x and y of 32 bytes each.
        let point = key.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err("unexpected P-256 public key encoding".into());
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..]),
        );
        let kid = URL_SAFE_NO_PAD.encode(
            ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info()).as_ref(),
        );
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
        let jwks = json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y,
        }]});
        let audiences = if config.audiences.is_empty() {
            vec![config.issuer.clone()]
        } else {
            config.audiences
        };
        Ok(Self {
            issuer: config.issuer,
            audiences,
            max_expiration_seconds: config.max_expiration_seconds,
            kid,
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            decoding,
            jwks,
        })
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API server accepts.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The longest lifetime a token may be given.
    pub fn max_expiration_seconds(&self) -> Option<i64> {
        self.max_expiration_seconds
    }

    /// Signs `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// The claims of `token` if this signer issued it and it has not expired; `Ok(None)` when
    /// it is not a token of this issuer at all (another authenticator may know it).
    pub fn verify(&self, token: &str) -> Result<Option<Claims>, Rejection> {
        // Cheap checks first: most bearer tokens that are not JWTs fail here without any
        // signature work.
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(None);
        };
        if header.kid.as_deref().is_some_and(|kid| kid != self.kid) {
            return Ok(None);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => Ok(Some(data.claims)),
            Err(e) => match e.kind() {
                ErrorKind::InvalidIssuer => Ok(None),
                ErrorKind::ExpiredSignature => Err("service account token has expired".into()),
                ErrorKind::ImmatureSignature => {
                    Err("service account token is not valid yet".into())
                }
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    Err("invalid signature".into())
                }
                _ => Err(format!("invalid service account token: {e}")),
            },
        }
    }

    /// The public key set (`/openid/v1/jwks`).
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The OIDC discovery document (`/.well-known/openid-configuration`), whose `jwks_uri`
    /// is the issuer's URL with the JWKS path, as kube-apiserver publishes it when no
    /// `--service-account-jwks-uri` is given.
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}{}", self.issuer.trim_end_matches('/'), super::discovery::JWKS_PATH),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::claims::{Private, Ref};
    use super::*;

    fn claims(issuer: &str, exp: i64) -> Claims {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        Claims {
            iss: issuer.into(),
            sub: "system:serviceaccount:prod:builder".into(),
            aud: vec![issuer.into()],
            exp,
            iat: now,
            nbf: now,
            jti: "j1".into(),
            kubernetes: Private {
                namespace: "prod".into(),
                serviceaccount: Ref {
                    name: "builder".into(),
                    uid: "u1".into(),
                },
                ..Private::default()
            },
        }
    }

    fn now() -> i64 {
        jsonwebtoken::get_current_timestamp() as i64
    }

    #[test]
    fn signed_tokens_verify_and_others_do_not() {
        let signer = TokenSigner::ephemeral(SignerConfig::default());
        let c = claims(DEFAULT_ISSUER, now() + 600);
        let token = signer.sign(&c).unwrap();
        assert_eq!(signer.verify(&token).unwrap(), Some(c.clone()));

        // Another key with the same issuer: its tokens carry a kid this signer does not have.
        let other = TokenSigner::ephemeral(SignerConfig::default());
        assert_eq!(signer.verify(&other.sign(&c).unwrap()), Ok(None));
        // ...and with the kid stripped, the signature fails.
        let forged = other.sign(&c).unwrap();
        let mut parts: Vec<&str> = forged.split('.').collect();
        let own_header = token.split('.').next().unwrap().to_owned();
        parts[0] = &own_header;
        assert_eq!(
            signer.verify(&parts.join(".")),
            Err("invalid signature".into())
        );
        // A changed payload breaks the signature.
        let mut tampered = claims(DEFAULT_ISSUER, now() + 600);
        tampered.sub = "system:serviceaccount:kube-system:admin".into();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered).unwrap());
        let t: Vec<&str> = token.split('.').collect();
        assert_eq!(
            signer.verify(&format!("{}.{payload}.{}", t[0], t[2])),
            Err("invalid signature".into())
        );
        // Not a JWT, or another issuer's: not ours.
        assert_eq!(signer.verify("0123abcd"), Ok(None));
        let foreign = signer
            .sign(&claims("https://elsewhere", now() + 600))
            .unwrap();
        assert_eq!(signer.verify(&foreign), Ok(None));
    }

    #[test]
    fn expired_tokens_are_rejected_after_the_leeway() {
        let signer = TokenSigner::ephemeral(SignerConfig::default());
        let stale = signer.sign(&claims(DEFAULT_ISSUER, now() - 120)).unwrap();
        assert_eq!(
            signer.verify(&stale),
            Err("service account token has expired".into())
        );
        let within_leeway = signer.sign(&claims(DEFAULT_ISSUER, now() - 10)).unwrap();
        assert!(signer.verify(&within_leeway).unwrap().is_some());
    }

    #[test]
    fn the_key_persists_and_publishes_its_public_half() {
        let key = KeyPair::generate().unwrap();
        let a = TokenSigner::new(&key.serialize_pem(), SignerConfig::default()).unwrap();
        let b = TokenSigner::new(&key.serialize_pem(), SignerConfig::default()).unwrap();
        let token = a.sign(&claims(DEFAULT_ISSUER, now() + 600)).unwrap();
        assert!(b.verify(&token).unwrap().is_some());
        let jwk = &a.jwks()["keys"][0];
        assert_eq!(jwk["kid"], json!(a.kid));
        assert_eq!(jwk["alg"], "ES256");
        assert_eq!(a.audiences(), [DEFAULT_ISSUER.to_owned()]);
        assert_eq!(
            a.openid_configuration()["jwks_uri"],
            "https://kubernetes.default.svc.cluster.local/openid/v1/jwks"
        );
        let rsa_like = TokenSigner::new("not a key", SignerConfig::default());
        assert!(rsa_like.is_err());
    }
}
