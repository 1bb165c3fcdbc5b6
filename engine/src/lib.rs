//! kiln's engine: everything that decides and acts on hosts, with no front-end in it.
//!
//! Start reading at [`machine`] (the pure host state machine and the table of what each state does), then
//! [`executor`] (which performs its decisions against BMCs), [`store`] (SQLite/PostgreSQL), [`netboot`] and
//! [`pxe_lookup`] (what the DHCP/TFTP/iPXE services may hand out), [`vmedia`] (the per-boot agent ISOs of virtual-media
//! boot and the ramdisk's static network), and [`wire`] (the request and response vocabulary
//! every front-end speaks, with its validation into the model). The front-ends (`kiln-http`, `kiln-kube` and the
//! `kiln` binary's CLI) depend on this crate; it depends on none of them.

pub mod bmcs;
pub mod crypto;
pub mod drivers;
pub mod executor;
pub mod machine;
pub mod metrics;
pub mod model;
pub mod netboot;
pub mod policy;
pub mod pxe_lookup;
pub mod sim;
pub mod store;
pub mod types;
pub mod vmedia;
pub mod wire;
