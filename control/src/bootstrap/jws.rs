//! Detached JWS signatures in compact form, `<protected header>..<signature>` (the payload
//! left out), as Kubernetes' `cluster-bootstrap/token/jws` computes them for `cluster-info`:
//! HS256 keyed by a bootstrap token's secret, the protected header exactly
//! `{"alg":"HS256","kid":"<token id>"}`. A verifier recomputes the signature over the content
//! it received and compares, so the header bytes must match Kubernetes' to the byte.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

/// The detached signature of `content` with the token `id`/`secret`.
pub fn detached_signature(content: &str, id: &str, secret: &str) -> String {
    let header = serde_json::json!({"alg": "HS256", "kid": id}).to_string();
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.as_bytes()),
        URL_SAFE_NO_PAD.encode(content.as_bytes())
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, signing_input.as_bytes());
    let (protected, _) = signing_input
        .split_once('.')
        .expect("the signing input has a dot");
    format!("{protected}..{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// Whether `signature` is the detached signature of `content` with the token `id`/`secret`
/// (compared in constant time).
pub fn verify(content: &str, signature: &str, id: &str, secret: &str) -> bool {
    let expected = detached_signature(content, id, secret);
    crate::apiserver::constant_time_eq(expected.as_bytes(), signature.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_kubernetes_and_the_payload_is_detached() {
        let sig = detached_signature("hello", "abcdef", "0123456789abcdef");
        let (header, rest) = sig.split_once("..").unwrap();
        assert!(!rest.contains('.'));
        let header = URL_SAFE_NO_PAD.decode(header).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","kid":"abcdef"}"#);
        // The signature is HMAC-SHA256 over header.payload, as any JWS library checks it.
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&header),
            URL_SAFE_NO_PAD.encode("hello")
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let tag = URL_SAFE_NO_PAD.decode(rest).unwrap();
        hmac::verify(&key, input.as_bytes(), &tag).unwrap();
    }

    #[test]
    fn only_the_right_token_and_content_verify() {
        let sig = detached_signature("kubeconfig", "abcdef", "0123456789abcdef");
        assert!(verify("kubeconfig", &sig, "abcdef", "0123456789abcdef"));
        assert!(!verify("kubeconfig", &sig, "abcdef", "0123456789abcdeg"));
        assert!(!verify("kubeconfig", &sig, "abcdeg", "0123456789abcdef"));
        assert!(!verify("kubeconfig!", &sig, "abcdef", "0123456789abcdef"));
    }

    /// The protected header as go-jose encodes it for Kubernetes' `ComputeDetachedSignature`
    /// (keys sorted, no spaces), so the byte-level format cannot drift.
    #[test]
    fn the_protected_header_is_encoded_as_go_jose_does() {
        let sig = detached_signature("content", "abcdef", "abcdef0123456789");
        assert_eq!(
            sig.split_once("..").unwrap().0,
            "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9"
        );
    }
}
