//! A CSR's `spec.request`: a PEM-encoded PKCS#10 certificate request, read as Kubernetes'
//! `ParseCSR` reads it (the first PEM block, which must be a `CERTIFICATE REQUEST`) and its
//! self-signature checked (`CheckSignature`), so the requester holds the key it asks a
//! certificate for.
//!
//! What the signers and approvers look at is extracted once: the subject's CommonNames and
//! Organizations (the user and groups the API server's client-certificate authenticator will
//! read), the subject alternative names, and the raw subject and public key the CA copies
//! into the certificate unchanged. Subject names and SANs must be text the authenticator can
//! read: a request whose names it could not decode is refused here rather than signed into a
//! certificate that names someone else for other readers.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Why a request is unusable. The messages follow Go's where Kubernetes shows them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No PEM block, or a block of another type.
    #[error("PEM block type must be CERTIFICATE REQUEST")]
    NotPem,
    /// The DER inside is not a PKCS#10 request.
    #[error("x509: malformed certificate request: {0}")]
    Malformed(String),
    /// The request is not signed by the key it carries (or with an algorithm not supported).
    #[error("x509: {0}")]
    Signature(String),
    /// A subject attribute or alternative name is not readable text.
    #[error("x509: unreadable {0}")]
    Unreadable(&'static str),
}

/// A parsed, signature-checked certificate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    /// The DER of the subject Name, which the certificate repeats byte for byte.
    pub subject_der: Vec<u8>,
    /// The DER of the SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
    /// Every CommonName of the subject, in order.
    pub common_names: Vec<String>,
    /// Every Organization of the subject, in order (the groups of a client certificate).
    pub organizations: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Email (rfc822Name) subject alternative names.
    pub email_addresses: Vec<String>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// Whether the key is RSA (for which `key encipherment` is a meaningful usage).
    pub rsa_key: bool,
}

impl CertificateRequest {
    /// The subject's (first) CommonName, the user a client certificate authenticates as;
    /// empty when there is none.
    pub fn common_name(&self) -> &str {
        self.common_names.first().map_or("", String::as_str)
    }
}

impl CertificateRequest {
    /// A client certificate request for `key` made here rather than received: subject
    /// `O=<group>...` then `CN=<user>`, the order Go's `pkix.Name` writes (what kubeadm's
    /// certificates carry). A request for the CA to [`issue`](super::authority::Authority::issue)
    /// directly; nothing checks a self-signature because the key never left this process.
    pub fn client(user: &str, groups: &[String], key: &rcgen::KeyPair) -> Self {
        use rcgen::PublicKeyData as _;
        // id-at-organizationName and id-at-commonName.
        const ORGANIZATION: &[u64] = &[2, 5, 4, 10];
        const COMMON_NAME: &[u64] = &[2, 5, 4, 3];
        let attributes = groups
            .iter()
            .map(|g| (ORGANIZATION, g.as_str()))
            .chain(std::iter::once((COMMON_NAME, user)));
        let subject_der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                for (oid, value) in attributes {
                    w.next().write_set(|w| {
                        w.next().write_sequence(|w| {
                            w.next()
                                .write_oid(&yasna::models::ObjectIdentifier::from_slice(oid));
                            w.next().write_utf8_string(value);
                        });
                    });
                }
            });
        });
        Self {
            subject_der,
            public_key_der: key.subject_public_key_info(),
            common_names: vec![user.to_owned()],
            organizations: groups.to_vec(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            email_addresses: Vec::new(),
            uris: Vec::new(),
            rsa_key: false,
        }
    }
}

/// Reads and checks `pem` (the bytes of `spec.request`).
pub fn parse(pem: &[u8]) -> Result<CertificateRequest, RequestError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|_| RequestError::NotPem)?;
    if block.label != "CERTIFICATE REQUEST" {
        return Err(RequestError::NotPem);
    }
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| RequestError::Malformed(e.to_string()))?;
    csr.verify_signature().map_err(|e| {
        RequestError::Signature(match e {
            x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                "cannot verify signature: algorithm unimplemented".to_owned()
            }
            _ => "certificate request signature verification failure".to_owned(),
        })
    })?;
    let info = &csr.certification_request_info;
    let mut request = CertificateRequest {
        subject_der: info.subject.as_raw().to_vec(),
        public_key_der: info.subject_pki.raw.to_vec(),
        common_names: texts(&info.subject, X509Name::iter_common_name, "common name")?,
        organizations: texts(&info.subject, X509Name::iter_organization, "organization")?,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        email_addresses: Vec::new(),
        uris: Vec::new(),
        rsa_key: info.subject_pki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION,
    };
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                add_name(&mut request, name)?;
            }
        }
    }
    Ok(request)
}

/// The attributes `pick` selects from `name`, as text.
fn texts<'a, 'b, I>(
    name: &'b X509Name<'a>,
    pick: fn(&'b X509Name<'a>) -> I,
    what: &'static str,
) -> Result<Vec<String>, RequestError>
where
    I: Iterator<Item = &'b AttributeTypeAndValue<'a>>,
    'a: 'b,
{
    pick(name)
        .map(|a| {
            a.as_str()
                .map(str::to_owned)
                .map_err(|_| RequestError::Unreadable(what))
        })
        .collect()
}

fn add_name(request: &mut CertificateRequest, name: &GeneralName<'_>) -> Result<(), RequestError> {
    let ascii = |s: &str, what| {
        if s.is_ascii() {
            Ok(s.to_owned())
        } else {
            Err(RequestError::Unreadable(what))
        }
    };
    match name {
        GeneralName::DNSName(s) => request
            .dns_names
            .push(ascii(s, "DNS subject alternative name")?),
        GeneralName::RFC822Name(s) => request
            .email_addresses
            .push(ascii(s, "email subject alternative name")?),
        GeneralName::URI(s) => request.uris.push(ascii(s, "URI subject alternative name")?),
        GeneralName::IPAddress(bytes) => {
            let ip = match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("length checked")),
                16 => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("length checked")),
                _ => return Err(RequestError::Unreadable("IP subject alternative name")),
            };
            request.ip_addresses.push(ip);
        }
        GeneralName::Invalid(..) => {
            return Err(RequestError::Unreadable("subject alternative name"))
        }
        // Other name forms are not copied into certificates (Go's x509 ignores them too).
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! CSRs for tests, with any subject (rcgen's hold one value per attribute type).

    use rcgen::{KeyPair, PublicKeyData, SigningKey};
    use yasna::models::ObjectIdentifier;
    use yasna::Tag;

    use super::CertificateRequest;
    use crate::certificates::authority;

    /// A PEM CSR for `cn` (none when empty) in `orgs` with `sans` (IP addresses or DNS
    /// names), and its key.
    pub fn csr(cn: &str, orgs: &[&str], sans: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate().expect("a key");
        (csr_with(&key, cn, orgs, sans), key)
    }

    /// [`csr`] signed by `key`.
    pub fn csr_with(key: &KeyPair, cn: &str, orgs: &[&str], sans: &[&str]) -> String {
        let mut attributes: Vec<(&[u64], &str)> = Vec::new();
        if !cn.is_empty() {
            attributes.push((&[2, 5, 4, 3], cn));
        }
        for org in orgs {
            attributes.push((&[2, 5, 4, 10], org));
        }
        let mut names = CertificateRequest {
            subject_der: Vec::new(),
            public_key_der: Vec::new(),
            common_names: Vec::new(),
            organizations: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            email_addresses: Vec::new(),
            uris: Vec::new(),
            rsa_key: false,
        };
        for san in sans {
            match san.parse() {
                Ok(ip) => names.ip_addresses.push(ip),
                Err(_) => names.dns_names.push((*san).to_owned()),
            }
        }
        let info = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_u8(0);
                w.next().write_sequence(|w| {
                    for (oid, value) in &attributes {
                        w.next().write_set(|w| {
                            w.next().write_sequence(|w| {
                                w.next().write_oid(&ObjectIdentifier::from_slice(oid));
                                w.next().write_utf8_string(value);
                            })
                        });
                    }
                });
                w.next().write_der(&key.subject_public_key_info());
                w.next().write_tagged_implicit(Tag::context(0), |w| {
                    w.write_set(|w| {
                        if sans.is_empty() {
                            return;
                        }
                        w.next().write_sequence(|w| {
                            let request = [1, 2, 840, 113_549, 1, 9, 14];
                            w.next().write_oid(&ObjectIdentifier::from_slice(&request));
                            w.next().write_set(|w| {
                                w.next().write_sequence(|w| {
                                    w.next().write_sequence(|w| {
                                        let san = [2, 5, 29, 17];
                                        w.next().write_oid(&ObjectIdentifier::from_slice(&san));
                                        w.next().write_bytes(&authority::general_names(&names));
                                    })
                                })
                            })
                        })
                    })
                });
            })
        });
        let signature = key.sign(&info).expect("signed");
        let algorithm = authority::algorithm_identifier(key).expect("a known algorithm");
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_der(&info);
                w.next().write_der(&algorithm);
                w.next().write_bitvec_bytes(&signature, signature.len() * 8);
            })
        });
        authority::pem("CERTIFICATE REQUEST", &der)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::csr;
    use super::*;

    #[test]
    fn a_request_is_read_with_its_names() {
        let (pem, _) = csr(
            "system:node:n1",
            &["system:nodes"],
            &["10.0.0.5", "n1.local"],
        );
        let r = parse(pem.as_bytes()).unwrap();
        assert_eq!(r.common_name(), "system:node:n1");
        assert_eq!(r.organizations, ["system:nodes"]);
        assert_eq!(r.dns_names, ["n1.local"]);
        assert_eq!(r.ip_addresses, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
        assert!(!r.rsa_key);
        assert!(r.email_addresses.is_empty() && r.uris.is_empty());
        // Leading text before the block is skipped, as Go's pem.Decode does.
        let noisy = format!("comment\n{pem}");
        assert_eq!(parse(noisy.as_bytes()).unwrap(), r);
        // Every Organization is read, in order (a user's groups).
        let (pem, _) = csr("alice", &["dev", "ops"], &[]);
        assert_eq!(parse(pem.as_bytes()).unwrap().organizations, ["dev", "ops"]);
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(parse(b"hello"), Err(RequestError::NotPem));
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(parse(cert.as_bytes()), Err(RequestError::NotPem));
        let junk =
            "-----BEGIN CERTIFICATE REQUEST-----\naGVsbG8=\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(
            parse(junk.as_bytes()),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn a_request_must_be_signed_by_its_own_key() {
        let (pem, _) = csr("alice", &[], &[]);
        let block = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1;
        let mut der = block.contents.clone();
        // Flip a bit of the CommonName: the signature no longer matches.
        let at = der
            .windows(5)
            .position(|w| w == b"alice")
            .expect("the CN is in the DER");
        der[at] ^= 0x01;
        let tampered = crate::certificates::authority::pem("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            parse(tampered.as_bytes()),
            Err(RequestError::Signature(_))
        ));
    }
}
