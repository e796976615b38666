//! The cluster CA issuing a certificate for an approved request, as kube-controller-manager's
//! signer does (`pkg/controller/certificates/authority`):
//!
//! - the subject and public key are the request's, byte for byte (so a subject with several
//!   Organizations keeps every group), and its DNS, IP, email and URI names are the
//!   certificate's subject alternative names; nothing else the request asks for is copied;
//! - key usages and extended key usages come from the CSR's `spec.usages`; the certificate is
//!   never a CA (`BasicConstraints` CA:FALSE);
//! - it is valid from five minutes ago (clocks differ) for the lifetime [`lifetime`] picks,
//!   the backdating taken off the end of certificates of eight hours or more, and never past
//!   the CA's own expiry;
//! - the serial number is 128 random bits.
//!
//! The DER is written here rather than through rcgen, whose subjects hold one value per
//! attribute type and would drop all but one of a user's groups.

use std::fmt;
use std::time::Duration;

use rand::RngCore;
use rcgen::{KeyPair, PublicKeyData, SigningKey};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use yasna::models::{GeneralizedTime, ObjectIdentifier, UTCTime};
use yasna::{DERWriter, Tag};

use super::request::CertificateRequest;
use super::usages;

/// How far back a certificate's validity starts.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Certificates shorter than this keep their full requested length after the start is
/// backdated (the backdating would eat a visible part of them).
pub const SHORT: Duration = Duration::from_secs(8 * 3600);
/// The shortest lifetime issued, whatever `expirationSeconds` asks.
pub const MIN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// kube-controller-manager's `--cluster-signing-duration` default: one year.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why the CA cannot be loaded or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The CA certificate is not a PEM certificate.
    #[error("the signing certificate: {0}")]
    Certificate(String),
    /// The key is not a PKCS#8 ECDSA, Ed25519 or RSA key.
    #[error("the signing key (PKCS#8 \"PRIVATE KEY\" PEM expected): {0}")]
    Key(String),
    /// The key signs with an algorithm not written here.
    #[error("the signing key's algorithm is not supported")]
    UnsupportedAlgorithm,
    /// The key is not the certificate's.
    #[error("the signing key does not belong to the signing certificate")]
    KeyMismatch,
    /// The CA has expired (or expires before the certificate would start).
    #[error("the signer has expired: NotAfter={0}")]
    Expired(OffsetDateTime),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The lifetime of a certificate for a CSR that asked for `expiration_seconds`, as
/// Kubernetes' signer decides it: the maximum when it asked for nothing or more, at least ten
/// minutes.
pub fn lifetime(expiration_seconds: Option<i64>, max: Duration) -> Duration {
    let Some(requested) = expiration_seconds else {
        return max;
    };
    let requested = Duration::from_secs(u64::try_from(requested).unwrap_or(0));
    if requested > max {
        max
    } else {
        requested.max(MIN_LIFETIME)
    }
}

/// A CA certificate and its key.
pub struct Authority {
    /// The CA's subject, which is every issued certificate's issuer.
    issuer_der: Vec<u8>,
    /// The CA's subject key identifier, the issued certificates' authority key identifier.
    key_id: Option<Vec<u8>>,
    not_after: OffsetDateTime,
    key: KeyPair,
    algorithm: &'static Algorithm,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from its certificate and key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, AuthorityError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| AuthorityError::Certificate(e.to_string()))?;
        let cert = block
            .parse_x509()
            .map_err(|e| AuthorityError::Certificate(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| AuthorityError::Key(e.to_string()))?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(AuthorityError::KeyMismatch);
        }
        let algorithm = ALGORITHMS
            .iter()
            .find(|a| key.algorithm() == a.rcgen)
            .ok_or(AuthorityError::UnsupportedAlgorithm)?;
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        Ok(Self {
            issuer_der: cert.subject().as_raw().to_vec(),
            key_id,
            not_after: cert.validity().not_after.to_datetime(),
            key,
            algorithm,
        })
    }

    /// When the CA itself expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a certificate (PEM) for `request` with `usage_names`, valid for `lifetime`
    /// from `now` (see the module documentation for the exact window).
    pub fn issue(
        &self,
        request: &CertificateRequest,
        usage_names: &[String],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<String, AuthorityError> {
        let now = now.replace_nanosecond(0).unwrap_or(now);
        if now >= self.not_after {
            return Err(AuthorityError::Expired(self.not_after));
        }
        let not_before = now - BACKDATE;
        let mut not_after = if lifetime < SHORT {
            now + lifetime
        } else {
            now + lifetime.saturating_sub(BACKDATE)
        };
        if not_after > self.not_after {
            not_after = self.not_after;
        }
        let mut serial = [0u8; 16];
        rand::rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        serial[15] |= 1;
        let extensions = extensions(request, usage_names, self.key_id.as_deref());
        let tbs = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_tagged(Tag::context(0), |w| w.write_u8(2));
                w.next().write_bigint_bytes(&serial, true);
                self.algorithm.write(w.next());
                w.next().write_der(&self.issuer_der);
                w.next().write_sequence(|w| {
                    write_time(w.next(), not_before);
                    write_time(w.next(), not_after);
                });
                w.next().write_der(&request.subject_der);
                w.next().write_der(&request.public_key_der);
                if !extensions.is_empty() {
                    w.next().write_tagged(Tag::context(3), |w| {
                        w.write_sequence(|w| {
                            for extension in &extensions {
                                w.next().write_der(extension);
                            }
                        })
                    });
                }
            })
        });
        let signature = self
            .key
            .sign(&tbs)
            .map_err(|e| AuthorityError::Signing(e.to_string()))?;
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_der(&tbs);
                self.algorithm.write(w.next());
                w.next().write_bitvec_bytes(&signature, signature.len() * 8);
            })
        });
        Ok(pem("CERTIFICATE", &der))
    }
}

/// A signature algorithm of a CA key and its AlgorithmIdentifier.
struct Algorithm {
    rcgen: &'static rcgen::SignatureAlgorithm,
    oid: &'static [u64],
    /// RSA identifiers carry an explicit NULL parameter; ECDSA and Ed25519 none.
    null_parameter: bool,
}

impl Algorithm {
    fn write(&self, w: DERWriter<'_>) {
        w.write_sequence(|w| {
            w.next().write_oid(&ObjectIdentifier::from_slice(self.oid));
            if self.null_parameter {
                w.next().write_null();
            }
        });
    }
}

static ALGORITHMS: [Algorithm; 6] = [
    Algorithm {
        rcgen: &rcgen::PKCS_ECDSA_P256_SHA256,
        oid: &[1, 2, 840, 10045, 4, 3, 2],
        null_parameter: false,
    },
    Algorithm {
        rcgen: &rcgen::PKCS_ECDSA_P384_SHA384,
        oid: &[1, 2, 840, 10045, 4, 3, 3],
        null_parameter: false,
    },
    Algorithm {
        rcgen: &rcgen::PKCS_ED25519,
        oid: &[1, 3, 101, 112],
        null_parameter: false,
    },
    Algorithm {
        rcgen: &rcgen::PKCS_RSA_SHA256,
        oid: &[1, 2, 840, 113_549, 1, 1, 11],
        null_parameter: true,
    },
    Algorithm {
        rcgen: &rcgen::PKCS_RSA_SHA384,
        oid: &[1, 2, 840, 113_549, 1, 1, 12],
        null_parameter: true,
    },
    Algorithm {
        rcgen: &rcgen::PKCS_RSA_SHA512,
        oid: &[1, 2, 840, 113_549, 1, 1, 13],
        null_parameter: true,
    },
];

/// The AlgorithmIdentifier DER of `key`'s signatures, for anything else signed with an rcgen
/// key (test CSRs); `None` for an algorithm not listed.
pub fn algorithm_identifier(key: &KeyPair) -> Option<Vec<u8>> {
    let algorithm = ALGORITHMS.iter().find(|a| key.algorithm() == a.rcgen)?;
    Some(yasna::construct_der(|w| algorithm.write(w)))
}

/// UTCTime through 2049, GeneralizedTime after, as RFC 5280 requires.
fn write_time(w: DERWriter<'_>, at: OffsetDateTime) {
    match UTCTime::from_datetime_opt(at) {
        Some(utc) if at.year() < 2050 => w.write_utctime(&utc),
        _ => w.write_generalized_time(&GeneralizedTime::from_datetime(at)),
    }
}

/// One Extension: its OID, criticality and value (DER).
fn extension(oid: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_oid(&ObjectIdentifier::from_slice(oid));
            if critical {
                w.next().write_bool(true);
            }
            w.next().write_bytes(value);
        })
    })
}

/// The KeyUsage bits (by [`usages::KeyUsageBit`] number) as a DER BIT STRING without
/// trailing zero bits.
fn key_usage_value(bits: u16) -> Vec<u8> {
    let len = 16 - bits.leading_zeros() as usize;
    let mut bytes = vec![0u8; len.div_ceil(8)];
    for bit in 0..len {
        if bits & (1 << bit) != 0 {
            bytes[bit / 8] |= 0x80 >> (bit % 8);
        }
    }
    yasna::construct_der(|w| w.write_bitvec_bytes(&bytes, len))
}

/// The DER of GeneralNames holding the request's names.
pub fn general_names(request: &CertificateRequest) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            for email in &request.email_addresses {
                w.next()
                    .write_tagged_implicit(Tag::context(1), |w| w.write_ia5_string(email));
            }
            for dns in &request.dns_names {
                w.next()
                    .write_tagged_implicit(Tag::context(2), |w| w.write_ia5_string(dns));
            }
            for uri in &request.uris {
                w.next()
                    .write_tagged_implicit(Tag::context(6), |w| w.write_ia5_string(uri));
            }
            for ip in &request.ip_addresses {
                let octets = match ip {
                    std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
                };
                w.next()
                    .write_tagged_implicit(Tag::context(7), |w| w.write_bytes(&octets));
            }
        })
    })
}

/// The extensions of a certificate for `request`, in the order Go writes them.
fn extensions(
    request: &CertificateRequest,
    names: &[String],
    key_id: Option<&[u8]>,
) -> Vec<Vec<u8>> {
    let (bits, purposes) = usages::resolve(names);
    let mut out = Vec::new();
    if bits != 0 {
        out.push(extension(&[2, 5, 29, 15], true, &key_usage_value(bits)));
    }
    if !purposes.is_empty() {
        let value = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                for oid in &purposes {
                    w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                }
            })
        });
        out.push(extension(&[2, 5, 29, 37], false, &value));
    }
    // CA:FALSE, the default, is the empty sequence.
    let constraints = yasna::construct_der(|w| w.write_sequence(|_| {}));
    out.push(extension(&[2, 5, 29, 19], true, &constraints));
    if let Some(id) = key_id {
        let value = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next()
                    .write_tagged_implicit(Tag::context(0), |w| w.write_bytes(id))
            })
        });
        out.push(extension(&[2, 5, 29, 35], false, &value));
    }
    let has_names = !(request.dns_names.is_empty()
        && request.ip_addresses.is_empty()
        && request.email_addresses.is_empty()
        && request.uris.is_empty());
    if has_names {
        // With an empty subject the names are the only identity: then they are critical.
        let empty_subject = request.subject_der == [0x30, 0x00];
        out.push(extension(
            &[2, 5, 29, 17],
            empty_subject,
            &general_names(request),
        ));
    }
    out
}

/// PEM armour of `der` with `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificates::request::{parse, testing::csr};
    use x509_parser::extensions::ParsedExtension;

    /// A CA like the one `pki::load_or_create` makes.
    fn ca() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "skiff-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn names(u: &[&str]) -> Vec<String> {
        u.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn lifetimes_follow_kubernetes() {
        let year = DEFAULT_MAX_LIFETIME;
        assert_eq!(lifetime(None, year), year);
        assert_eq!(lifetime(Some(3600), year), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(60), year), MIN_LIFETIME);
        assert_eq!(lifetime(Some(i64::MAX), year), year);
    }

    #[test]
    fn an_issued_client_certificate_authenticates_with_every_group() {
        let (ca_pem, ca_key) = ca();
        let authority = Authority::from_pem(&ca_pem, &ca_key).unwrap();
        let (request_pem, key) = csr("alice", &["dev", "ops"], &[]);
        let request = parse(request_pem.as_bytes()).unwrap();
        let now = OffsetDateTime::now_utc();
        let issued = authority
            .issue(
                &request,
                &names(&["client auth", "digital signature"]),
                Duration::from_secs(3600),
                now,
            )
            .unwrap();

        let (_, block) = x509_parser::pem::parse_x509_pem(issued.as_bytes()).unwrap();
        let cert = block.parse_x509().unwrap();
        assert_eq!(cert.subject().as_raw(), request.subject_der);
        assert_eq!(cert.public_key().raw, request.public_key_der);
        let ca_block = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .unwrap()
            .1;
        let ca_cert = ca_block.parse_x509().unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert!(!cert.is_ca());
        let start = now.unix_timestamp() - 300;
        assert_eq!(cert.validity().not_before.timestamp(), start);
        assert_eq!(
            cert.validity().not_after.timestamp(),
            now.unix_timestamp() + 3600
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        let aki = cert.extensions().iter().any(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::AuthorityKeyIdentifier(_)
            )
        });
        assert!(aki, "the issuer's key id is named");

        // The API server's own client-certificate authentication reads the user and groups.
        let identity =
            crate::apiserver::auth::x509::identify_pem(issued.as_bytes(), ca_pem.as_bytes());
        let crate::apiserver::auth::x509::PeerIdentity::User(user) = identity else {
            panic!("not accepted: {identity:?}");
        };
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["dev", "ops", "system:authenticated"]);
        drop(key);
    }

    #[test]
    fn serving_certificates_carry_the_requested_names() {
        let (ca_pem, ca_key) = ca();
        let authority = Authority::from_pem(&ca_pem, &ca_key).unwrap();
        let (request_pem, _) = csr(
            "system:node:n1",
            &["system:nodes"],
            &["10.0.0.5", "n1", "fd00::5"],
        );
        let request = parse(request_pem.as_bytes()).unwrap();
        let now = OffsetDateTime::now_utc();
        let year = DEFAULT_MAX_LIFETIME;
        let issued = authority
            .issue(
                &request,
                &names(&["digital signature", "server auth"]),
                year,
                now,
            )
            .unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(issued.as_bytes()).unwrap();
        let cert = block.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(!san.critical);
        assert_eq!(san.value.general_names.len(), 3);
        let raw = cert
            .extensions()
            .iter()
            .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME)
            .unwrap()
            .value;
        assert_eq!(raw, general_names(&request));
        assert_eq!(request.dns_names, ["n1"]);
        assert_eq!(request.ip_addresses.len(), 2);
        // A long certificate gives the backdating back at its end.
        assert_eq!(
            cert.validity().not_after.timestamp(),
            now.unix_timestamp() + year.as_secs() as i64 - 300
        );
        // Never past the CA.
        let late = OffsetDateTime::from_unix_timestamp(2_082_758_400 - 3600).unwrap(); // 2035-12-31T23:00Z
        let issued = authority
            .issue(&request, &names(&["server auth"]), year, late)
            .unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(issued.as_bytes()).unwrap();
        assert_eq!(
            block.parse_x509().unwrap().validity().not_after.timestamp(),
            authority.not_after().unix_timestamp()
        );
        let expired = OffsetDateTime::from_unix_timestamp(2_082_758_400 + 1).unwrap();
        assert!(matches!(
            authority.issue(&request, &names(&["server auth"]), year, expired),
            Err(AuthorityError::Expired(_))
        ));
    }

    #[test]
    fn a_key_that_is_not_the_cas_is_refused() {
        let (ca_pem, _) = ca();
        let other = KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            Authority::from_pem(&ca_pem, &other),
            Err(AuthorityError::KeyMismatch)
        ));
        assert!(Authority::from_pem("nope", &other).is_err());
    }

    #[test]
    fn key_usage_bits_are_minimal_bit_strings() {
        // digitalSignature only: one bit, seven unused.
        assert_eq!(key_usage_value(0b1), [0x03, 0x02, 0x07, 0x80]);
        // digitalSignature + keyEncipherment: 101, five unused.
        assert_eq!(key_usage_value(0b101), [0x03, 0x02, 0x05, 0xa0]);
        // decipherOnly (bit 8) needs a second byte.
        assert_eq!(key_usage_value(1 << 8), [0x03, 0x03, 0x07, 0x00, 0x80]);
    }
}
