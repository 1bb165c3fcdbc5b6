//! kiln's Kubernetes front-end: the Metal3-compatible `BareMetalHost` kind, the Cluster API infrastructure provider
//! kinds, their generated CRDs, and the controllers that mirror them into kiln's engine.
//!
//! kiln's store stays the engine's memory; the custom resources are the user's declarative interface. The controllers
//! talk to the engine only through the narrow [`engine::Engine`] trait.

pub mod bmh;
pub mod capi;
pub mod claim;
pub mod cluster_controller;
pub mod crds;
pub mod data;
pub mod engine;
pub mod host_controller;
pub mod machine_controller;
pub mod runner;
pub mod workload;
