//! Password hashing: argon2id with the `ARGON2_*` parameters below, stored as PHC strings
//! (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
//!
//! Hashing and verifying take tens of milliseconds of one core on purpose; callers on the async
//! runtime run them with `spawn_blocking`. Verifying uses the parameters recorded in the stored
//! hash, so a hash made with older parameters keeps working after these change.

use std::sync::LazyLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use secrecy::{ExposeSecret, SecretString};

/// Memory cost of one hash, in KiB (32 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 32_768;

/// Passes over that memory.
pub const ARGON2_ITERATIONS: u32 = 3;

/// Lanes; one, since a sign-in runs on one blocking thread.
pub const ARGON2_PARALLELISM: u32 = 1;

/// argon2id with 32 MiB, 3 passes, 1 lane. Measured on the 2-core development machine, release
/// build, median of 9 verifications each: 19 MiB × 2 (OWASP's minimum) 27 ms, 32 MiB × 2 58 ms,
/// 32 MiB × 3 86 ms, 46 MiB × 2 112 ms, 64 MiB × 2 151 ms (the machine was busy with builds). 32 MiB
/// × 3 sits inside the 50–100 ms the issue asks for, above OWASP's minimum in both memory and
/// passes; a whole `POST /login` then takes about 70 ms on an idle machine (README's benchmarks). A sign-in holds 32 MiB while it runs; the blocking pool bounds how many run at once.
pub fn argon2_params() -> Params {
    Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_PARALLELISM, None)
        .expect("the argon2 parameters are within argon2's limits")
}

fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon2_params())
}

#[derive(Debug, thiserror::Error)]
#[error("hashing the password failed: {0}")]
pub struct HashError(String);

/// Hash a password with a fresh random salt. Blocks for the length of one hash.
pub fn hash_password(password: &SecretString) -> Result<String, HashError> {
    let hash: PasswordHash =
        hasher().hash_password(password.expose_secret().as_bytes()).map_err(|e| HashError(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` is the one `stored` was made from. A stored hash that does not parse
/// matches nothing. Blocks for the length of one hash.
pub fn verify_password(password: &SecretString, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        tracing::error!("a stored password hash does not parse; nobody can sign in with it");
        return false;
    };
    hasher().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok()
}

/// Spend the time of one verification and match nothing: what a sign-in does for a user name
/// that does not exist, so the answer's timing does not tell the two apart.
pub fn verify_nobody(password: &SecretString) {
    static DUMMY: LazyLock<String> = LazyLock::new(|| {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).expect("the system's random source works");
        hash_password(&SecretString::from(hex::encode(random))).expect("hashing a random password works")
    });
    let _ = verify_password(password, &DUMMY);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let password = SecretString::from("correct horse battery staple");
        let hash = hash_password(&password).unwrap();
        assert!(hash.starts_with(&format!(
            "$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_ITERATIONS},p={ARGON2_PARALLELISM}$"
        )));
        assert!(!hash.contains("correct horse"));
        assert!(verify_password(&password, &hash));
        assert!(!verify_password(&SecretString::from("correct horse battery stapler"), &hash));
        assert_ne!(hash, hash_password(&password).unwrap(), "every hash has its own salt");
        assert!(!verify_password(&password, "not a phc string"));
        verify_nobody(&password);
    }
}
