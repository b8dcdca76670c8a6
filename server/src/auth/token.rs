//! API tokens: `gantry_` followed by 32 random bytes in unpadded base64url (50 characters in all).
//!
//! A token is shown once when it is made and only its SHA-256 is stored. Tokens are long random
//! values, so a fast hash is enough (nothing to brute-force) and a request's token is looked up
//! by its hash in one indexed query, with no argon2 per request.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// What every token starts with, so one found in a log or a repository is recognisable.
pub const TOKEN_PREFIX: &str = "gantry_";

/// Random bytes in a token.
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// A token's length in characters: the prefix and 43 base64url characters.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + (TOKEN_RANDOM_BYTES * 4).div_ceil(3);

/// The longest label a token may have, in characters.
pub const MAX_LABEL_LEN: usize = 100;

/// A new random token.
pub fn generate() -> SecretString {
    let mut random = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut random).expect("the system's random source works");
    SecretString::from(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(random)))
}

/// Whether `value` has a token's shape; anything else cannot be one and is not looked up.
pub fn looks_like_token(value: &str) -> bool {
    value.len() == TOKEN_LEN
        && value
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// The lowercase hex SHA-256 of a token: what the store keeps and looks up.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The hash of a token held as a secret.
pub fn hash_secret(token: &SecretString) -> String {
    hash(token.expose_secret())
}

/// A label is 1 to [`MAX_LABEL_LEN`] characters without control characters; the message says
/// what is wrong.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("give the token a label, e.g. what uses it".to_string());
    }
    if label.chars().count() > MAX_LABEL_LEN {
        return Err(format!("a label is at most {MAX_LABEL_LEN} characters"));
    }
    if label.chars().any(char::is_control) {
        return Err("a label may not contain control characters".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let token = generate();
        let value = token.expose_secret();
        assert_eq!(value.len(), TOKEN_LEN);
        assert_eq!(TOKEN_LEN, 50);
        assert!(looks_like_token(value), "{value}");
        assert_ne!(value, generate().expose_secret());
        assert_eq!(hash_secret(&token).len(), 64);
        assert_eq!(hash("gantry_x"), hash("gantry_x"));
        assert!(!format!("{token:?}").contains(value), "Debug masks the token");
    }

    #[test]
    fn only_token_shaped_values_are_tokens() {
        assert!(!looks_like_token(""));
        assert!(!looks_like_token(&format!("{TOKEN_PREFIX}{}", "a".repeat(42))));
        assert!(!looks_like_token(&format!("{TOKEN_PREFIX}{}", "a".repeat(44))));
        assert!(!looks_like_token(&format!("github_{}", "a".repeat(43))));
        assert!(!looks_like_token(&format!("{TOKEN_PREFIX}{}+", "a".repeat(42))));
        assert!(looks_like_token(&format!("{TOKEN_PREFIX}{}", "a-_".repeat(14) + "Z")));
    }

    #[test]
    fn labels_are_short_printable_text() {
        assert!(check_label("deploy script").is_ok());
        assert!(check_label(" ").is_err());
        assert!(check_label(&"x".repeat(MAX_LABEL_LEN + 1)).is_err());
        assert!(check_label("a\nb").is_err());
    }
}
