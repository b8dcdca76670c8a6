//! The `sessions` table: tower-sessions' [`SessionStore`] (and [`ExpiredDeletion`]) over the
//! store, so the sign-in cookie names a row here and signing out, expiry and removing a user end
//! a session on the server, not just in the browser.
//!
//! A row is keyed by the SHA-256 of the session id, never the id itself: the id is a bearer
//! credential and a copy of the database must not sign anybody in. The signed-in user's id is
//! copied out of the session's data into `user_id`, so removing the user deletes the row by
//! cascade. An expired row is never loaded, whether or not [`ExpiredDeletion`] has removed it yet.
//! What a session holds and means is `http::auth`'s business, not this file's.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::Row;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, ExpiredDeletion, SessionStore};

use super::users::UserId;
use super::{now_ms, Store, StoreError};

/// The key of the session's data that holds the signed-in user's id (a number). Written by
/// `http::auth` at sign-in; read here to fill the `user_id` column.
pub const USER_ID_KEY: &str = "user_id";

/// The hex SHA-256 of the id a session cookie carries: the row's key.
fn id_hash(id: &Id) -> String {
    hex::encode(Sha256::digest(id.to_string().as_bytes()))
}

/// How a session store error whose cause is an unavailable database begins: tower-sessions
/// carries a store's errors as text, so this is how [`says_unavailable`] tells them apart.
const UNAVAILABLE: &str = "database unavailable: ";

fn backend(error: impl Into<StoreError>) -> session_store::Error {
    let error = error.into();
    let mark = if error.is_unavailable() { UNAVAILABLE } else { "" };
    session_store::Error::Backend(format!("{mark}{error}"))
}

/// Whether a session store error came from a database that could not be reached
/// ([`StoreError::is_unavailable`]).
pub fn says_unavailable(error: &session_store::Error) -> bool {
    matches!(error, session_store::Error::Backend(message) if message.starts_with(UNAVAILABLE))
}

/// A point in time as unix milliseconds.
fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn from_unix_ms(ms: i64) -> Result<OffsetDateTime, session_store::Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| session_store::Error::Decode(format!("sessions.expires_at {ms}: {e}")))
}

/// The columns a record is stored as: its data as JSON and the user id it names, if any.
fn columns(record: &Record) -> Result<(String, Option<i64>), session_store::Error> {
    let data = serde_json::to_string(&record.data).map_err(|e| session_store::Error::Encode(e.to_string()))?;
    let user = record.data.get(USER_ID_KEY).and_then(serde_json::Value::as_i64);
    Ok((data, user))
}

#[async_trait]
impl SessionStore for Store {
    /// Insert a new session; on the (astronomically unlikely) collision of ids, draw another.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let (data, user) = columns(record)?;
        loop {
            let done = sqlx::query(
                "INSERT INTO sessions (id_hash, user_id, data, expires_at) \
                 VALUES ($1, (SELECT id FROM users WHERE id = $2), $3, $4) ON CONFLICT (id_hash) DO NOTHING",
            )
            .bind(id_hash(&record.id))
            .bind(user)
            .bind(&data)
            .bind(unix_ms(record.expiry_date))
            .execute(self.writer())
            .await
            .map_err(backend)?;
            if done.rows_affected() > 0 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    /// Write a session's data and expiry. A user removed meanwhile is not brought back: the
    /// `user_id` column is then NULL and the session names nobody who exists.
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let (data, user) = columns(record)?;
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, data, expires_at) \
             VALUES ($1, (SELECT id FROM users WHERE id = $2), $3, $4) \
             ON CONFLICT (id_hash) DO UPDATE SET user_id = excluded.user_id, data = excluded.data, \
             expires_at = excluded.expires_at",
        )
        .bind(id_hash(&record.id))
        .bind(user)
        .bind(&data)
        .bind(unix_ms(record.expiry_date))
        .execute(self.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }

    /// The session, unless it is unknown or expired.
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let row = sqlx::query("SELECT data, expires_at FROM sessions WHERE id_hash = $1 AND expires_at > $2")
            .bind(id_hash(id))
            .bind(now_ms())
            .fetch_optional(self.reader())
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Ok(None) };
        let data: String = row.try_get("data").map_err(backend)?;
        let expires_at: i64 = row.try_get("expires_at").map_err(backend)?;
        Ok(Some(Record {
            id: *id,
            data: serde_json::from_str(&data).map_err(|e| session_store::Error::Decode(e.to_string()))?,
            expiry_date: from_unix_ms(expires_at)?,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(id_hash(id))
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[async_trait]
impl ExpiredDeletion for Store {
    async fn delete_expired(&self) -> session_store::Result<()> {
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(self.writer())
            .await
            .map_err(backend)?;
        Ok(())
    }
}

impl Store {
    /// How many live (unexpired) sessions name `user` as signed in.
    pub async fn session_count_of_user(&self, user: UserId) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND expires_at > $2")
            .bind(user.0)
            .bind(now_ms())
            .fetch_one(self.reader())
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;
    use time::Duration;

    use super::super::testing;
    use super::super::users::Role;
    use super::*;

    fn record(user: Option<UserId>, expires_in: Duration) -> Record {
        let mut data = HashMap::from([("csrf".to_string(), json!("t0k3n"))]);
        if let Some(user) = user {
            data.insert(USER_ID_KEY.to_string(), json!(user.0));
        }
        Record { id: Id::default(), data, expiry_date: OffsetDateTime::now_utc() + expires_in }
    }

    #[tokio::test]
    async fn a_session_is_created_saved_loaded_and_deleted_by_its_id() {
        let (store, _dir) = testing::store().await;
        let alice = store.insert_user("alice", "h", Role::Member).await.unwrap().unwrap();
        let mut anonymous = record(None, Duration::hours(1));
        store.create(&mut anonymous).await.unwrap();
        let loaded = store.load(&anonymous.id).await.unwrap().unwrap();
        assert_eq!(loaded.data, anonymous.data);
        assert_eq!(unix_ms(loaded.expiry_date), unix_ms(anonymous.expiry_date));
        assert_eq!(store.session_count_of_user(alice.id).await.unwrap(), 0);

        // Signing in writes the user's id into the data; the column follows.
        let mut signed_in = anonymous.clone();
        signed_in.data.insert(USER_ID_KEY.to_string(), json!(alice.id.0));
        store.save(&signed_in).await.unwrap();
        assert_eq!(store.load(&anonymous.id).await.unwrap().unwrap().data, signed_in.data);
        assert_eq!(store.session_count_of_user(alice.id).await.unwrap(), 1);

        store.delete(&anonymous.id).await.unwrap();
        assert!(store.load(&anonymous.id).await.unwrap().is_none());
        assert!(store.load(&Id::default()).await.unwrap().is_none(), "an unknown id loads nothing");
    }

    #[tokio::test]
    async fn the_id_itself_is_never_stored() {
        let (store, _dir) = testing::store().await;
        let mut session = record(None, Duration::hours(1));
        store.create(&mut session).await.unwrap();
        let keys: Vec<String> =
            sqlx::query_scalar("SELECT id_hash FROM sessions").fetch_all(store.reader()).await.unwrap();
        assert_eq!(keys, [id_hash(&session.id)]);
        assert!(!keys[0].contains(&session.id.to_string()));
    }

    #[tokio::test]
    async fn an_expired_session_is_never_loaded_and_is_swept() {
        let (store, _dir) = testing::store().await;
        let mut expired = record(None, Duration::seconds(-1));
        let mut live = record(None, Duration::hours(1));
        store.create(&mut expired).await.unwrap();
        store.create(&mut live).await.unwrap();
        assert!(store.load(&expired.id).await.unwrap().is_none());
        assert_eq!(testing::session_count(&store).await, 2);
        store.delete_expired().await.unwrap();
        assert_eq!(testing::session_count(&store).await, 1);
        assert!(store.load(&live.id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_session_naming_a_removed_user_names_nobody() {
        let (store, _dir) = testing::store().await;
        let alice = store.insert_user("alice", "h", Role::Member).await.unwrap().unwrap();
        let mut session = record(Some(alice.id), Duration::hours(1));
        store.create(&mut session).await.unwrap();
        store.delete_user("alice").await.unwrap().unwrap();
        assert!(store.load(&session.id).await.unwrap().is_none(), "removed with the user");
        // A request that was in flight saves the session again: it comes back without a user.
        store.save(&session).await.unwrap();
        let users: Vec<Option<i64>> =
            sqlx::query_scalar("SELECT user_id FROM sessions").fetch_all(store.reader()).await.unwrap();
        assert_eq!(users, [None]);
    }
}
