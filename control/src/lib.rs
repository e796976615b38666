//! skiff-control: the control plane of skiff. A Kubernetes-compatible API server on an
//! embedded redb store, and the controllers that run beside it.

pub mod apiserver;
pub mod bootstrap;
pub mod certificates;
pub mod client;
pub mod controllers;
pub mod manager;
pub mod memory;
pub mod pki;
pub mod scheduler;
pub mod server;
pub mod snapshot_file;
pub mod store;
pub mod token_admin;
