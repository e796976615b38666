//! Key usages as a CSR names them (`spec.usages`, Kubernetes' `KeyUsage` strings) and what
//! each puts into a certificate: a bit of the X.509 KeyUsage extension or an ExtendedKeyUsage
//! purpose, as Kubernetes' CA (`keyUsagesFromStrings`) maps them.

/// A bit of the KeyUsage extension (RFC 5280 4.2.1.3), numbered as the BIT STRING is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsageBit {
    /// `digitalSignature` (0).
    DigitalSignature = 0,
    /// `contentCommitment` (1).
    ContentCommitment = 1,
    /// `keyEncipherment` (2).
    KeyEncipherment = 2,
    /// `dataEncipherment` (3).
    DataEncipherment = 3,
    /// `keyAgreement` (4).
    KeyAgreement = 4,
    /// `keyCertSign` (5).
    CertSign = 5,
    /// `cRLSign` (6).
    CrlSign = 6,
    /// `encipherOnly` (7).
    EncipherOnly = 7,
    /// `decipherOnly` (8).
    DecipherOnly = 8,
}

/// What one usage string means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A KeyUsage bit.
    Key(KeyUsageBit),
    /// An ExtendedKeyUsage purpose, by OID arcs.
    Extended(&'static [u64]),
}

/// The id-kp-serverAuth purpose.
pub const SERVER_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 1];
/// The id-kp-clientAuth purpose.
pub const CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];

/// Every usage a CSR may name, sorted as Kubernetes lists them in its "supported values".
pub const KNOWN: &[(&str, Usage)] = &[
    ("any", Usage::Extended(&[2, 5, 29, 37, 0])),
    ("cert sign", Usage::Key(KeyUsageBit::CertSign)),
    ("client auth", Usage::Extended(CLIENT_AUTH)),
    (
        "code signing",
        Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 3]),
    ),
    (
        "content commitment",
        Usage::Key(KeyUsageBit::ContentCommitment),
    ),
    ("crl sign", Usage::Key(KeyUsageBit::CrlSign)),
    (
        "data encipherment",
        Usage::Key(KeyUsageBit::DataEncipherment),
    ),
    ("decipher only", Usage::Key(KeyUsageBit::DecipherOnly)),
    (
        "digital signature",
        Usage::Key(KeyUsageBit::DigitalSignature),
    ),
    (
        "email protection",
        Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 4]),
    ),
    ("encipher only", Usage::Key(KeyUsageBit::EncipherOnly)),
    (
        "ipsec end system",
        Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 5]),
    ),
    (
        "ipsec tunnel",
        Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 6]),
    ),
    ("ipsec user", Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 7])),
    ("key agreement", Usage::Key(KeyUsageBit::KeyAgreement)),
    ("key encipherment", Usage::Key(KeyUsageBit::KeyEncipherment)),
    (
        "microsoft sgc",
        Usage::Extended(&[1, 3, 6, 1, 4, 1, 311, 10, 3, 3]),
    ),
    (
        "netscape sgc",
        Usage::Extended(&[2, 16, 840, 1, 113_730, 4, 1]),
    ),
    (
        "ocsp signing",
        Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 9]),
    ),
    ("s/mime", Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 4])),
    ("server auth", Usage::Extended(SERVER_AUTH)),
    ("signing", Usage::Key(KeyUsageBit::DigitalSignature)),
    (
        "timestamping",
        Usage::Extended(&[1, 3, 6, 1, 5, 5, 7, 3, 8]),
    ),
];

/// What `name` means, or `None` for a usage Kubernetes does not know.
pub fn lookup(name: &str) -> Option<Usage> {
    KNOWN.iter().find(|(n, _)| *n == name).map(|(_, u)| *u)
}

/// The names of every known usage, for "supported values" messages.
pub fn names() -> Vec<&'static str> {
    KNOWN.iter().map(|(n, _)| *n).collect()
}

/// What a certificate for `names` carries: the KeyUsage bits (a bitmask by
/// [`KeyUsageBit`] number) and the ExtendedKeyUsage purposes, each once, in order. Unknown
/// names are skipped (validation refuses them before anything is signed).
pub fn resolve(names: &[String]) -> (u16, Vec<&'static [u64]>) {
    let mut bits = 0u16;
    let mut purposes: Vec<&'static [u64]> = Vec::new();
    for name in names {
        match lookup(name) {
            Some(Usage::Key(bit)) => bits |= 1 << bit as u16,
            Some(Usage::Extended(oid)) if !purposes.contains(&oid) => purposes.push(oid),
            _ => {}
        }
    }
    (bits, purposes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_list_is_sorted_and_unique() {
        let names = names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 23);
    }

    #[test]
    fn usages_map_to_key_usage_bits_and_purposes() {
        let names: Vec<String> = [
            "digital signature",
            "key encipherment",
            "client auth",
            "signing",
        ]
        .map(String::from)
        .to_vec();
        let (bits, purposes) = resolve(&names);
        assert_eq!(bits, 0b101);
        assert_eq!(purposes, [CLIENT_AUTH]);
        assert_eq!(lookup("s/mime"), lookup("email protection"));
        assert_eq!(lookup("bogus"), None);
    }
}
