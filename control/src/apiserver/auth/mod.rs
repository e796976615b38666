//! Authentication and authorization of API requests.

pub mod x509;
