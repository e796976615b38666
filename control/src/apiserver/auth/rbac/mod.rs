//! Role-based access control: rule matching and comparison ([`rules`]), the in-memory index
//! of Roles, ClusterRoles and their bindings that decisions are read from ([`index`]),
//! Kubernetes' default roles and bindings ([`bootstrap`]) and ClusterRole aggregation
//! ([`aggregation`]).

pub mod aggregation;
pub mod bootstrap;
pub mod index;
pub mod rules;
#[cfg(test)]
pub(crate) mod test_objects;

pub use index::{RbacIndex, Snapshot};
