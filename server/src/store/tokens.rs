//! The `api_tokens` table: the tokens scripts send as `Authorization: Bearer`, stored as the
//! SHA-256 of the token (the token itself is shown once and never stored).
//!
//! A request's token is found by its hash together with its owner in one query, so a token acts
//! with its owner's *current* role and stops working the moment the owner is removed. Generating
//! and hashing tokens is `auth::token`'s job; this file only keeps rows.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::users::{user_from_row, UserId, UserRow};
use super::{now_ms, Result, Store};

/// A token's `last_used_at` is updated when it is older than this, so reading the API does not
/// write to the database on every request.
pub const LAST_USED_RESOLUTION: Duration = Duration::from_secs(60);

/// A token's id: the primary key, used in the settings page's revoke URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenId(pub i64);

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A token as its owner's settings page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: TokenId,
    pub user_id: UserId,
    pub label: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// The token a request presented, with its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    pub token: TokenId,
    pub last_used_at: Option<i64>,
    pub user: UserRow,
}

fn token_from_row(row: &AnyRow) -> Result<TokenRow> {
    Ok(TokenRow {
        id: TokenId(row.try_get("id")?),
        user_id: UserId(row.try_get("user_id")?),
        label: row.try_get("label")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl Store {
    /// Record a new token of `user` by the hex SHA-256 of its value.
    pub async fn insert_token(&self, user: UserId, label: &str, token_hash: &str) -> Result<TokenRow> {
        let row = sqlx::query(
            "INSERT INTO api_tokens (user_id, label, token_hash, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, user_id, label, created_at, last_used_at",
        )
        .bind(user.0)
        .bind(label)
        .bind(token_hash)
        .bind(now_ms())
        .fetch_one(self.writer())
        .await?;
        token_from_row(&row)
    }

    /// A user's tokens, newest first.
    pub async fn tokens_of_user(&self, user: UserId) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query(
            "SELECT id, user_id, label, created_at, last_used_at FROM api_tokens WHERE user_id = $1 ORDER BY id DESC",
        )
        .bind(user.0)
        .fetch_all(self.reader())
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// The token whose hash is `token_hash`, with its owner; `None` for an unknown or revoked
    /// token.
    pub async fn token_user(&self, token_hash: &str) -> Result<Option<TokenOwner>> {
        let row = sqlx::query(
            "SELECT t.id AS token_id, t.last_used_at, u.id, u.name, u.password_hash, u.role, u.created_at \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.reader())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TokenOwner {
            token: TokenId(row.try_get("token_id")?),
            last_used_at: row.try_get("last_used_at")?,
            user: user_from_row(&row)?,
        }))
    }

    /// Record that a token was used now.
    pub async fn touch_token(&self, token: TokenId) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(token.0)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Revoke `user`'s token `token`. `false` when the user has no such token (another user's
    /// token included: nothing changes).
    pub async fn delete_token(&self, user: UserId, token: TokenId) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND user_id = $2")
            .bind(token.0)
            .bind(user.0)
            .execute(self.writer())
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::super::users::Role;
    use super::*;

    #[tokio::test]
    async fn a_token_is_found_by_its_hash_with_its_owner_until_revoked() {
        let (store, _dir) = testing::store().await;
        let alice = store.insert_user("alice", "h", Role::Member).await.unwrap().unwrap();
        let bob = store.insert_user("bob", "h", Role::Member).await.unwrap().unwrap();
        let first = store.insert_token(alice.id, "deploy", &"1".repeat(64)).await.unwrap();
        let second = store.insert_token(alice.id, "laptop", &"2".repeat(64)).await.unwrap();
        assert_eq!((first.label.as_str(), first.last_used_at), ("deploy", None));

        let found = store.token_user(&"1".repeat(64)).await.unwrap().unwrap();
        assert_eq!((found.token, found.user.name.as_str(), found.last_used_at), (first.id, "alice", None));
        assert!(store.token_user(&"3".repeat(64)).await.unwrap().is_none());

        store.touch_token(first.id).await.unwrap();
        assert!(store.token_user(&"1".repeat(64)).await.unwrap().unwrap().last_used_at.is_some());

        let listed: Vec<TokenId> = store.tokens_of_user(alice.id).await.unwrap().iter().map(|t| t.id).collect();
        assert_eq!(listed, [second.id, first.id], "newest first");
        assert!(store.tokens_of_user(bob.id).await.unwrap().is_empty());

        assert!(!store.delete_token(bob.id, first.id).await.unwrap(), "bob cannot revoke alice's token");
        assert!(store.delete_token(alice.id, first.id).await.unwrap());
        assert!(store.token_user(&"1".repeat(64)).await.unwrap().is_none(), "a revoked token is unknown");
        assert!(!store.delete_token(alice.id, first.id).await.unwrap());
    }

    #[tokio::test]
    async fn a_token_hash_is_unique() {
        let (store, _dir) = testing::store().await;
        let alice = store.insert_user("alice", "h", Role::Member).await.unwrap().unwrap();
        store.insert_token(alice.id, "a", &"1".repeat(64)).await.unwrap();
        assert!(store.insert_token(alice.id, "b", &"1".repeat(64)).await.is_err());
    }
}
