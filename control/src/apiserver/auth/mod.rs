//! Authentication and authorization of API requests.
pub mod rbac;
