//! The Starling server: configuration, the HTTP API, the WebSocket endpoint, auth,
//! metrics and graceful shutdown, around the hub of `starling-core`.

pub mod accept;
pub mod admin;
pub mod allocator;
pub mod analytics;
pub mod api;
pub mod app;
pub mod archive;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod encoder;
pub mod idempotency;
pub mod journal;
mod lane;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod readiness;
pub mod rlimit;
pub mod session;
pub mod subscriptions;
#[cfg(test)]
mod testing;
pub mod tools;
pub mod upgrade;
pub mod web;
pub mod wheel;
