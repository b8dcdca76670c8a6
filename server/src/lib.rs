//! The Gantry server.

pub mod config;
pub mod store;
