//! Cluster DNS, answered on every node by the agent (issue: cluster DNS). So far: the zone
//! ([`zone`]), built from the Services and EndpointSlices the service proxy watches, and the
//! protocol around it ([`respond`]).

pub mod forward;
pub mod respond;
pub mod zone;
