//! kiln: the appliance library. `main.rs` only parses arguments and calls [`server::run`].

pub mod kube;
pub mod server;
