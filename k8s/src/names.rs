//! Name syntax: DNS-1123 labels and subdomains (object names), qualified names (label and
//! annotation keys) and label values, each failing with Kubernetes' own message (what
//! `kubectl` shows in a 422 Invalid).

/// One way a name breaks a rule. `Display` is Kubernetes' message for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Longer than the rule allows (63 for a label, 253 for a subdomain).
    #[error("must be no more than {0} characters")]
    TooLong(usize),
    /// Not a DNS-1123 label.
    #[error("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")]
    Dns1123Label,
    /// Not a DNS-1123 subdomain.
    #[error("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")]
    Dns1123Subdomain,
    /// The `prefix/` of a qualified name is not a DNS-1123 subdomain.
    #[error("prefix part must be a lowercase RFC 1123 subdomain")]
    QualifiedNamePrefix,
    /// The name part of a qualified name is malformed or longer than 63.
    #[error("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with at most 63 characters")]
    QualifiedNamePart,
    /// Not a label value.
    #[error("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?') with at most 63 characters")]
    LabelValue,
    /// A path-segment name that is `.` or `..`.
    #[error("may not be '{0}'")]
    MayNotBe(&'static str),
    /// A path-segment name holding `/` or `%`.
    #[error("may not contain '{0}'")]
    MayNotContain(&'static str),
}

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Errors for a DNS-1123 label (namespaces, services, container names).
pub fn dns_label_errors(s: &str) -> Vec<NameError> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(NameError::TooLong(63));
    }
    let ok = !s.is_empty()
        && s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower);
    if !ok {
        errs.push(NameError::Dns1123Label);
    }
    errs
}

/// Whether `s` is a DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    dns_label_errors(s).is_empty()
}

/// Errors for a DNS-1123 subdomain (most object names).
pub fn dns_subdomain_errors(s: &str) -> Vec<NameError> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(NameError::TooLong(253));
    }
    let ok = !s.is_empty()
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| is_alnum_lower(c) || c == '-')
                && part.starts_with(is_alnum_lower)
                && part.ends_with(is_alnum_lower)
        });
    if !ok {
        errs.push(NameError::Dns1123Subdomain);
    }
    errs
}

fn qualified_name_part_ok(s: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(inner)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Errors for a qualified name, i.e. a label or annotation key: `[prefix/]name`.
pub fn label_key_errors(key: &str) -> Vec<NameError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errs = Vec::new();
    if let Some(prefix) = prefix {
        if !dns_subdomain_errors(prefix).is_empty() {
            errs.push(NameError::QualifiedNamePrefix);
        }
    }
    if !qualified_name_part_ok(name) {
        errs.push(NameError::QualifiedNamePart);
    }
    errs
}

/// Errors for a label value (may be empty).
pub fn label_value_errors(value: &str) -> Vec<NameError> {
    if value.is_empty() || qualified_name_part_ok(value) {
        Vec::new()
    } else {
        vec![NameError::LabelValue]
    }
}

/// Errors for a name that only has to be one URL path segment (`IsValidPathSegmentName`):
/// RBAC objects, whose names like `system:basic-user` are not DNS subdomains. `.` and `..`
/// end the check, as in Kubernetes; otherwise every forbidden character is reported.
pub fn path_segment_errors(name: &str) -> Vec<NameError> {
    if let Some(whole) = [".", ".."].into_iter().find(|w| name == *w) {
        return vec![NameError::MayNotBe(whole)];
    }
    ["/", "%"]
        .into_iter()
        .filter(|c| name.contains(c))
        .map(NameError::MayNotContain)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label_errors("kubia-1").is_empty());
        assert!(!dns_label_errors("Kubia").is_empty());
        assert!(!dns_label_errors("a.b").is_empty());
        assert!(dns_subdomain_errors("a.b-c").is_empty());
        assert!(!dns_subdomain_errors("-a").is_empty());
        assert!(!dns_subdomain_errors(&"a".repeat(254)).is_empty());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key_errors("app").is_empty());
        assert!(label_key_errors("example.com/My_Key").is_empty());
        assert!(!label_key_errors("Example.com/x").is_empty());
        assert!(!label_key_errors("bad key").is_empty());
        assert!(label_value_errors("").is_empty());
        assert!(!label_value_errors("has space").is_empty());
    }

    #[test]
    fn path_segments() {
        assert!(path_segment_errors("system:basic-user").is_empty());
        assert!(path_segment_errors("Any Thing").is_empty());
        assert_eq!(path_segment_errors("..")[0].to_string(), "may not be '..'");
        let both: Vec<String> = path_segment_errors("a/b%c")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(both, ["may not contain '/'", "may not contain '%'"]);
    }

    #[test]
    fn messages_are_kubernetes_words() {
        assert_eq!(
            dns_label_errors(&"a".repeat(64))[0].to_string(),
            "must be no more than 63 characters"
        );
        assert!(dns_subdomain_errors("A")[0]
            .to_string()
            .starts_with("a lowercase RFC 1123 subdomain must consist of"));
    }
}
