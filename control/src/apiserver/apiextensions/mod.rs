//! Custom resources (apiextensions-apiserver, in process): what a CustomResourceDefinition
//! declares becomes served resources.
//!
//! - `schema.rs`: a version's `openAPIV3Schema` compiled into a structural tree, with the
//!   causes Kubernetes gives for a schema that is not structural;
//! - `validate.rs`, `prune.rs`: objects checked against it, unknown fields pruned, defaults
//!   applied; `read_defaults.rs`: whether a stored object still lacks a default (lists pass
//!   complete objects through as stored);
//! - `cel.rs`: CEL validation rules (`x-kubernetes-validations`), with `oldSelf` transitions;
//! - `custom.rs`: the `ResourceDef` and `Strategy` of each served version (printer columns,
//!   `/status`, `/scale`, `apiVersion` conversion);
//! - `controller.rs`: follows the stored definitions, registers and unregisters their
//!   resources, writes their conditions, deletes their objects when a definition goes.
//!
//! The definition kind itself (defaults, validation) is `kinds/customresourcedefinition.rs`.

pub mod cel;
pub mod controller;
pub mod custom;
pub mod prune;
pub mod read_defaults;
pub mod schema;
pub mod validate;
