//! Role-based access control: rule matching and comparison ([`rules`]), the in-memory index
//! of Roles, ClusterRoles and their bindings that decisions are read from ([`index`]),
//! Kubernetes' default roles and bindings ([`bootstrap`]), ClusterRole aggregation
//! ([`aggregation`]) and the escalation check of RBAC writes ([`escalation`]).

pub mod aggregation;
pub mod bootstrap;
pub mod escalation;
pub mod index;
pub mod rules;
#[cfg(test)]
pub(crate) mod test_objects;

pub use index::{RbacIndex, Snapshot};
