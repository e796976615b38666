//! Go's formatting of strings, string lists and error lists, as Kubernetes' messages print them.
//!
//! Authorization messages are read by people and matched by tools (kubectl, client libraries,
//! conformance tests), so they must come out byte for byte as kube-apiserver writes them. They
//! are built with Go's `%q` (`strconv.Quote`), which differs from Rust's `{:?}` for control
//! characters and many non-ASCII characters, and with `utilerrors.NewAggregate`, which joins
//! and de-duplicates.

use std::fmt::Write as _;

/// Go's `%q` of a string (`strconv.Quote`): double quotes, with `"` and `\` escaped, the
/// C escapes (`\a \b \f \n \r \t \v`), `\xNN` for other ASCII controls and `\uNNNN` /
/// `\UNNNNNNNN` for other characters Go does not count as printable. Printable characters,
/// including non-ASCII letters and combining marks, stay as they are.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !is_printable(c) => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

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

/// Whether Go's `strconv.IsPrint` holds: letters, marks, numbers, punctuation, symbols and the
/// ASCII space. Without Unicode tables this cannot spot unassigned code points (Go escapes
/// them); every other class Go escapes is recognised: controls, separators other than the
/// space, format characters and private use.
fn is_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    let format_or_private = matches!(
        u,
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xE000..=0xF8FF
            | 0xF0000..=0xFFFFD
            | 0x100000..=0x10FFFD
    );
    let noncharacter = (0xFDD0..=0xFDEF).contains(&u) || u & 0xFFFE == 0xFFFE;
    !format_or_private && !noncharacter
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
