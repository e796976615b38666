//! Kubernetes' pure rules, shared by skiff-control and skiff-agent: what apimachinery's
//! validation and component-helpers hold in Kubernetes. A rule belongs here when both programs
//! need it (or a program needs it in two places) and it does no I/O: no tokio, no HTTP, no
//! store, no clock reads except [`time::now`]. Each module is one concept with its own error
//! enum.

pub mod affinity;
pub mod cidr;
pub mod crash;
pub mod cron;
pub mod events;
pub mod go;
pub mod ingress;
pub mod labels;
pub mod names;
pub mod pod;
pub mod portforward;
pub mod portforward_spdy;
pub mod quantity;
pub mod spdy;
pub mod taints;
pub mod time;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
