//! Serde types that mirror `.gantry.yml` as written. Owned by the pipeline helper.
