//! kiln-agent: runs inside the netboot ramdisk; inspects the host and writes images on the appliance's command.
//!
//! Start reading at [`exec::run`] (the heartbeat loop) and [`exec::Agent::execute`] (one command). Inspection is in
//! [`inspect`] (pure parsers over `/proc` and `/sys`), disk cleaning in [`erase`], image writing in [`write`] (on
//! top of `kiln_images`), the API client in [`api`], boot parameters in [`cmdline`].

pub mod api;
pub mod bmc_lan;
pub mod cmdline;
pub mod console;
pub mod erase;
pub mod error;
pub mod exec;
pub mod inspect;
pub mod pin;
pub mod power;
pub mod write;

pub use error::AgentError;
