//! kiln: the appliance library. `main.rs` only parses arguments and calls into [`server`] or [`cli`].

pub mod crypto;
pub mod machine;
pub mod model;
pub mod server;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod types;
