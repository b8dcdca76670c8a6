//! The `users` table: who may sign in, with which role, and the argon2id hash of their password.
//!
//! This file stores and reads rows; it never sees a password, only its hash, and it decides
//! nothing about who may do what (`http::auth` does). Removing a user removes their API tokens and
//! sessions through the schema's `ON DELETE CASCADE`, so they are signed out everywhere at once.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, parse_column, Result, Store};

/// A user's id: the primary key. Sessions and tokens refer to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub i64);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a user may do (contract §5): admins manage users and tokens, members queue, cancel and
/// re-run builds, read-only users only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::ReadOnly => "read_only",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "member" => Role::Member,
            "read_only" => Role::ReadOnly,
            _ => return None,
        })
    }

    /// Whether this role may change state: queue, cancel and re-run builds, manage its tokens.
    pub fn may_change_state(self) -> bool {
        matches!(self, Role::Admin | Role::Member)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as stored. `Debug` leaves the password hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: UserId,
    pub name: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: i64,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// What removing a user took with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub sessions: u64,
    pub tokens: u64,
}

pub(super) fn user_from_row(row: &AnyRow) -> Result<UserRow> {
    Ok(UserRow {
        id: UserId(row.try_get("id")?),
        name: row.try_get("name")?,
        password_hash: row.try_get("password_hash")?,
        role: parse_column("users.role", row.try_get("role")?, Role::parse)?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Add a user. `None` when the name is taken (nothing changes).
    pub async fn insert_user(&self, name: &str, password_hash: &str, role: Role) -> Result<Option<UserRow>> {
        let row = sqlx::query(
            "INSERT INTO users (name, password_hash, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING RETURNING id, name, password_hash, role, created_at",
        )
        .bind(name)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_ms())
        .fetch_optional(self.writer())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user(&self, id: UserId) -> Result<Option<UserRow>> {
        let row = sqlx::query("SELECT id, name, password_hash, role, created_at FROM users WHERE id = $1")
            .bind(id.0)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>> {
        let row = sqlx::query("SELECT id, name, password_hash, role, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query("SELECT id, name, password_hash, role, created_at FROM users ORDER BY name")
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Remove a user with their sessions and tokens. `None` when there is no such user.
    pub async fn delete_user(&self, name: &str) -> Result<Option<Removed>> {
        let mut tx = self.begin().await?;
        let Some(id) = sqlx::query_scalar::<_, i64>("SELECT id FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let sessions: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE user_id = $1").bind(id).fetch_one(&mut *tx).await?;
        let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE user_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(Some(Removed { sessions: u64::try_from(sessions).unwrap_or(0), tokens: u64::try_from(tokens).unwrap_or(0) }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[tokio::test]
    async fn users_are_added_once_per_name_and_read_back() {
        let (store, _dir) = testing::store().await;
        let alice = store.insert_user("alice", "$argon2id$x", Role::Admin).await.unwrap().unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Admin));
        assert!(store.insert_user("alice", "$argon2id$y", Role::Member).await.unwrap().is_none(), "names are unique");
        assert_eq!(store.user_by_name("alice").await.unwrap().unwrap().password_hash, "$argon2id$x");
        assert_eq!(store.user(alice.id).await.unwrap().unwrap(), alice);
        store.insert_user("bob", "h", Role::ReadOnly).await.unwrap().unwrap();
        let names: Vec<String> = store.users().await.unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(store.user_by_name("carol").await.unwrap().is_none());
        assert!(!format!("{alice:?}").contains("argon2"), "Debug leaves the hash out");
    }

    #[tokio::test]
    async fn removing_a_user_takes_their_tokens_and_sessions() {
        let (store, _dir) = testing::store().await;
        let alice = store.insert_user("alice", "h", Role::Member).await.unwrap().unwrap();
        let bob = store.insert_user("bob", "h", Role::Member).await.unwrap().unwrap();
        store.insert_token(alice.id, "ci", &"a".repeat(64)).await.unwrap();
        store.insert_token(bob.id, "ci", &"b".repeat(64)).await.unwrap();
        testing::insert_session(&store, Some(alice.id)).await;
        testing::insert_session(&store, Some(bob.id)).await;

        let removed = store.delete_user("alice").await.unwrap().unwrap();
        assert_eq!(removed, Removed { sessions: 1, tokens: 1 });
        assert!(store.user(alice.id).await.unwrap().is_none());
        assert!(store.token_user(&"a".repeat(64)).await.unwrap().is_none());
        assert!(store.token_user(&"b".repeat(64)).await.unwrap().is_some(), "bob keeps his token");
        assert_eq!(testing::session_count(&store).await, 1, "bob keeps his session");
        assert!(store.delete_user("alice").await.unwrap().is_none());
    }

    #[test]
    fn roles_round_trip_and_only_read_only_may_not_change_state() {
        for role in [Role::Admin, Role::Member, Role::ReadOnly] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert!(Role::parse("root").is_none());
        assert!(Role::Admin.may_change_state() && Role::Member.may_change_state());
        assert!(!Role::ReadOnly.may_change_state());
    }
}
