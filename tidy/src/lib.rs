//! Tidy: the rules ARCHITECTURE.md states as invariants, checked over the workspace's sources and
//! manifests by `cargo test`, so a change that breaks one fails CI with the rule's name and the
//! place that breaks it.
//!
//! The checks read files as text: they are cheap, need no compiler, and say exactly where a rule is
//! broken. They do not judge style; they guard the boundaries between the crates.

#[cfg(test)]
mod tests;
