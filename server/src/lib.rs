//! The Gantry server.

pub mod config;
pub mod git;
pub mod store;
