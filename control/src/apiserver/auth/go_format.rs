//! Go's formatting of strings, string lists and error lists, as Kubernetes' messages print them.
//!
//! Authorization messages are read by people and matched by tools (kubectl, client libraries,
//! conformance tests), so they must come out byte for byte as kube-apiserver writes them. They
//! are built with Go's `%q` (`strconv.Quote`), which differs from Rust's `{:?}` for control
//! characters and many non-ASCII characters, and with `utilerrors.NewAggregate`, which joins
//! and de-duplicates.

pub use skiff_k8s::go::quote;

/// Go's `%q` of a `[]string`: each element quoted, space-separated, in brackets
/// (`["get" "list"]`).
pub fn quote_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&quote(item.as_ref()));
    }
    out.push(']');
    out
}

/// The message of `utilerrors.NewAggregate(errors)`: empty for none, the message itself for
/// one, otherwise the distinct messages in first-seen order, comma-joined in brackets (a single
/// distinct message repeated stays unbracketed).
pub fn aggregate<S: AsRef<str>>(errors: &[S]) -> String {
    match errors {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        many => {
            let mut seen: Vec<&str> = Vec::with_capacity(many.len());
            for e in many {
                if !seen.contains(&e.as_ref()) {
                    seen.push(e.as_ref());
                }
            }
            if seen.len() == 1 {
                seen[0].to_owned()
            } else {
                format!("[{}]", seen.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_as_go_does() {
        assert_eq!(quote("alice"), r#""alice""#);
        assert_eq!(quote(""), r#""""#);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("a\nb\tc\u{7}"), r#""a\nb\tc\a""#);
        assert_eq!(quote("\u{1}\u{7f}"), r#""\x01\x7f""#);
        // Printable non-ASCII stays; a combining mark too (Rust's Debug would escape it).
        assert_eq!(quote("héllo e\u{301} 日本"), "\"héllo e\u{301} 日本\"");
        // Non-printable non-ASCII: NBSP, zero-width space, BOM, C1 control, private use.
        assert_eq!(
            quote("\u{a0}\u{200b}\u{feff}\u{85}\u{e000}\u{f0000}"),
            r#""\u00a0\u200b\ufeff\u0085\ue000\U000f0000""#
        );
    }

    #[test]
    fn lists_quote_each_item_space_separated() {
        assert_eq!(quote_list::<&str>(&[]), "[]");
        assert_eq!(quote_list(&[""]), r#"[""]"#);
        assert_eq!(quote_list(&["get", "list"]), r#"["get" "list"]"#);
    }

    #[test]
    fn aggregates_join_distinct_messages() {
        assert_eq!(aggregate::<&str>(&[]), "");
        assert_eq!(aggregate(&["a"]), "a");
        assert_eq!(aggregate(&["a", "a"]), "a");
        assert_eq!(aggregate(&["a", "b", "a"]), "[a, b]");
    }
}
