//! The client layer every controller and the scheduler build on: how they reach the API
//! server ([`Context`]), what they share of it (one [`informers::Informer`] per kind), how they
//! know their cache has caught up with their own writes ([`expectations`]) and how they write
//! Events ([`events`]).
//!
//! Layers, lowest first: rules (pure functions) <- client <- controllers and scheduler <-
//! manager. Nothing here imports a controller or the scheduler, so the two can use it without
//! importing each other.

pub mod events;
pub mod expectations;
pub mod guard;
pub mod informers;
pub mod trim;

use kube::Client;
use tokio_util::sync::CancellationToken;

/// What every client-side controller gets.
#[derive(Clone)]
pub struct Context {
    /// A client of this control plane's API server (admin credentials).
    pub client: Client,
    /// Cancelled at shutdown (or when this instance loses leadership).
    pub shutdown: CancellationToken,
    /// The caches the controllers and the scheduler of this context share.
    pub informers: informers::Informers,
}

impl Context {
    /// A context whose informers live until `shutdown`.
    pub fn new(client: Client, shutdown: CancellationToken) -> Self {
        Self {
            informers: informers::Informers::new(client.clone(), shutdown.clone()),
            client,
            shutdown,
        }
    }

    /// An event recorder writing as `component`.
    pub fn recorder(&self, component: &str) -> events::Recorder {
        events::Recorder::new(self.client.clone(), component)
    }
}
