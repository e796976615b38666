//! Helpers shared by skiff's tests, one copy each (they used to be copied into every test
//! file that needed them):
//!
//! - [`root`]: whether the test runs as root, and [`require_root!`], which skips a privileged
//!   test with a clear message when it does not;
//! - [`wait`]: waiting for a condition with a deadline instead of sleeping, in async
//!   ([`eventually`], [`eventually_within`]) and blocking ([`wait_for`], [`wait_until`]) forms;
//! - [`netns`]: the pieces of a network-namespace lab (named namespaces and veth pairs removed
//!   on drop, running code inside a namespace, sweeping what killed runs left behind);
//! - [`etcd`]: a real etcd process on loopback for the etcd store's tests ([`TestEtcd`]),
//!   killed and its data removed on drop.
//!
//! The crate is a dev-dependency of the crates whose tests use it (and a dependency of
//! skiff-e2e, whose benchmark binaries build labs too). It depends on no workspace crate.

pub mod etcd;
pub mod netns;
pub mod root;
pub mod wait;

pub use etcd::TestEtcd;
pub use root::is_root;
pub use wait::{eventually, eventually_within, wait_for, wait_until};
