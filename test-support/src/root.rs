//! Privileged tests (network namespaces, BPF, containers, mounts) need root. Without it they
//! skip with a message saying what they need, rather than fail: a developer's plain
//! `cargo test` stays green, and CI runs as root.

/// Whether this process runs with root's effective uid.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether this process runs as root; when not, prints `SKIPPING <test>: needs root
/// (<needs>)`. For helpers that set up a privileged fixture for several tests; a test itself
/// uses [`require_root!`](crate::require_root), which names it.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("SKIPPING {test}: needs root ({needs})");
    }
    root
}

/// The path of the function the macro is expanded in (`module::function`), for skip
/// messages: the name of a nested item's type minus that item.
#[doc(hidden)]
#[macro_export]
macro_rules! __function_path {
    () => {{
        fn here() {}
        fn type_name_of<T>(_: T) -> &'static str {
            ::std::any::type_name::<T>()
        }
        let name = type_name_of(here);
        name.strip_suffix("::here").unwrap_or(name)
    }};
}

/// Returns from the calling test (with `$ret`, if given) unless it runs as root, after printing
/// `SKIPPING <test>: needs root (<needs>)`.
///
/// ```ignore
/// #[test]
/// fn routes_in_a_namespace() {
///     require_root!("network namespaces");
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! require_root {
    ($needs:expr) => {
        $crate::require_root!($needs, ())
    };
    ($needs:expr, $ret:expr) => {
        if !$crate::root::root_or_skip($crate::__function_path!(), $needs) {
            return $ret;
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn function_path_names_the_enclosing_function() {
        let path = crate::__function_path!();
        assert_eq!(
            path,
            "skiff_test_support::root::tests::function_path_names_the_enclosing_function"
        );
    }

    fn skipped_unless_root() -> Option<u8> {
        crate::require_root!("nothing really", None);
        Some(1)
    }

    #[test]
    fn require_root_returns_early_without_root() {
        assert_eq!(skipped_unless_root().is_some(), crate::is_root());
    }
}
