//! kiln: the appliance binary's library. `main.rs` parses arguments and calls into [`server`] (which composes the
//! engine, the HTTP and Kubernetes front-ends and the netboot services into `kiln serve`) or the CLI commands
//! ([`cli`], one module per command group).

pub mod cli;
pub mod fuzzing;
pub mod server;
