//! Rules for environment variables shared by the pipeline and the transports: what a variable's
//! name may be. It holds no values and reads no environment.

/// Whether `name` is a portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_names_are_identifiers() {
        assert!(is_env_name("DATABASE_URL"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A=B"));
        assert!(!is_env_name(""));
    }
}
