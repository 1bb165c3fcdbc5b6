//! kiln: the appliance library. `main.rs` only parses arguments and calls into [`server`] or [`cli`].
//!
//! Start reading at [`machine`] (the pure host state machine), then [`executor`] (which performs its decisions),
//! [`store`] (SQLite/PostgreSQL), [`api`] and [`agent_api`] (HTTP), and [`server`] (how `kiln serve` runs them).

pub mod agent_api;
pub mod api;
pub mod bmcs;
pub mod cli;
pub mod cli_bmc;
pub mod cli_image;
pub mod crypto;
pub mod drivers;
pub mod executor;
pub mod fuzzing;
pub mod http_util;
pub mod import;
pub mod kube;
pub mod machine;
pub mod metrics;
pub mod model;
pub mod netboot;
pub mod openapi;
pub mod policy;
pub mod pxe_lookup;
pub mod server;
pub mod sim;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod tls;
pub mod types;
