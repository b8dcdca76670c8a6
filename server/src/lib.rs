//! The Gantry server. Owned by the server helper.
