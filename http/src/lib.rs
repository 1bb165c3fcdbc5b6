//! kiln's HTTP front-end: the REST API under `/api/v1` ([`api`]), the agent API ([`agent_api`]), the web page, the
//! generated OpenAPI document ([`openapi`]), and the HTTPS listener with its limits ([`listener`], [`tls`]).
//!
//! Handlers validate through [`kiln_engine::wire`] and write intent to the store; they never call a BMC or change a
//! host's state (the engine's executor does).

pub mod agent_api;
pub mod api;
pub mod http_util;
pub mod import;
pub mod import_api;
pub mod listener;
pub mod media;
pub mod openapi;
pub mod ratelimit;
pub mod tls;
