//! Controllers that run inside skiff-control. Each is level-triggered and goes through the
//! same object operations as API clients.

pub mod namespace;
