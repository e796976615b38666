//! Role-based access control: rule matching and comparison ([`rules`]) and the in-memory index
//! of Roles, ClusterRoles and their bindings that decisions are read from ([`index`]).

pub mod index;
pub mod rules;
#[cfg(test)]
pub(crate) mod test_objects;

pub use index::{RbacIndex, Snapshot};
