//! Who someone is: user names and passwords (argon2id), API tokens (random values looked up by
//! their SHA-256), the log line of a failed sign-in, and the `gantry user` / `gantry token`
//! commands that manage them from the command line.
//!
//! Nothing here speaks HTTP or decides what a role may do: `http::auth` does, with the
//! extractors every handler takes. Nothing here touches SQL either: rows go through the
//! [`Store`](crate::store::Store). Passwords and tokens travel as [`SecretString`]s; they are
//! never logged, and only their hashes are stored.

pub mod admin;
pub mod password;
pub mod throttle;
pub mod token;

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};

pub use crate::store::Role;

/// The longest user name, in characters (they are ASCII).
pub const MAX_USER_NAME_LEN: usize = 64;

/// The longest password, in bytes. Longer ones are refused before they are hashed, so nobody can
/// make the server hash megabytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a name or password cannot be used. The messages are shown to whoever typed them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("the user name is empty")]
    EmptyName,
    #[error("a user name is at most {MAX_USER_NAME_LEN} characters")]
    NameTooLong,
    #[error("a user name may only contain letters, digits, '.', '_' and '-'")]
    NameCharacters,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("a password is at most {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
}

/// A user name is 1 to [`MAX_USER_NAME_LEN`] characters of `[A-Za-z0-9._-]`.
pub fn check_user_name(name: &str) -> Result<(), CredentialError> {
    if name.is_empty() {
        return Err(CredentialError::EmptyName);
    }
    if name.len() > MAX_USER_NAME_LEN {
        return Err(CredentialError::NameTooLong);
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(CredentialError::NameCharacters);
    }
    Ok(())
}

/// A password is not empty and at most [`MAX_PASSWORD_BYTES`] long.
pub fn check_password(password: &SecretString) -> Result<(), CredentialError> {
    match password.expose_secret().len() {
        0 => Err(CredentialError::EmptyPassword),
        n if n > MAX_PASSWORD_BYTES => Err(CredentialError::PasswordTooLong),
        _ => Ok(()),
    }
}

/// Why a sign-in failed, as the server's log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInFailure {
    /// No user has this name.
    UnknownUser,
    /// The user exists; the password is not theirs.
    WrongPassword,
    /// The name or password could not be a valid one (empty, too long, bad characters).
    BadInput,
    /// Too many failures from this address or for this name: refused unchecked (429).
    Throttled,
}

impl SignInFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            SignInFailure::UnknownUser => "unknown_user",
            SignInFailure::WrongPassword => "wrong_password",
            SignInFailure::BadInput => "bad_input",
            SignInFailure::Throttled => "throttled",
        }
    }
}

/// The one log line of a failed sign-in: `WARN … sign-in failed client=ADDR user="NAME"
/// reason=…`. It names the client's address for fail2ban and never the password. The user name is
/// cut to [`MAX_USER_NAME_LEN`] characters and printed with `Debug`, so whatever was typed
/// (quotes, newlines) stays on one line inside its quotes.
///
/// This is the single place a failed sign-in is reported; brute-force throttling hooks in here.
pub fn log_sign_in_failure(client: IpAddr, user: &str, reason: SignInFailure) {
    let user: String = user.chars().take(MAX_USER_NAME_LEN).collect();
    tracing::warn!(client = %client, user = ?user, reason = reason.as_str(), "sign-in failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_are_short_and_url_safe() {
        for good in ["a", "alice", "bob.smith", "ci_bot-2", &"x".repeat(MAX_USER_NAME_LEN)] {
            assert_eq!(check_user_name(good), Ok(()), "{good}");
        }
        assert_eq!(check_user_name(""), Err(CredentialError::EmptyName));
        assert_eq!(check_user_name(&"x".repeat(MAX_USER_NAME_LEN + 1)), Err(CredentialError::NameTooLong));
        for bad in ["al ice", "alice\n", "ålice", "a/b", "a:b", "<script>"] {
            assert_eq!(check_user_name(bad), Err(CredentialError::NameCharacters), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_not_empty_and_bounded() {
        assert_eq!(check_password(&SecretString::from("")), Err(CredentialError::EmptyPassword));
        assert_eq!(check_password(&SecretString::from("x".repeat(MAX_PASSWORD_BYTES))), Ok(()));
        let long = SecretString::from("x".repeat(MAX_PASSWORD_BYTES + 1));
        assert_eq!(check_password(&long), Err(CredentialError::PasswordTooLong));
        // Bytes, not characters: 513 two-byte characters are too long.
        assert_eq!(check_password(&SecretString::from("é".repeat(513))), Err(CredentialError::PasswordTooLong));
    }
}
