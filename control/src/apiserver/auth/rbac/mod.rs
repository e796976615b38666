//! Role-based access control: rule matching and comparison ([`rules`]).

pub mod rules;
