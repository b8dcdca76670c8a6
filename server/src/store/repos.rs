//! The `repos` and `branch_heads` tables: which repositories the server knows, the last fetch
//! error shown on a repo's page, and the branch heads the poller saw last. Also the one rewrite
//! of a repo's stored error texts (its own and its builds'), for taking credentials out of them.
//!
//! The configuration is the source of truth for which repos exist; rows are upserted at start-up
//! and never deleted, so the history of a repo removed from the configuration stays readable.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::Connection;

use super::{now_ms, Result, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRow {
    pub name: String,
    pub url: String,
    pub last_error: Option<String>,
    pub last_polled_at: Option<i64>,
}

fn repo_from_row(row: &AnyRow) -> Result<RepoRow> {
    Ok(RepoRow {
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        last_error: row.try_get("last_error")?,
        last_polled_at: row.try_get("last_polled_at")?,
    })
}

/// Replace a repo's recorded branch heads with `heads` (branch → commit sha).
pub async fn replace_heads(conn: &mut Connection, repo: &str, heads: &BTreeMap<String, String>) -> Result<()> {
    sqlx::query("DELETE FROM branch_heads WHERE repo = $1").bind(repo).execute(&mut *conn).await?;
    for (branch, sha) in heads {
        sqlx::query("INSERT INTO branch_heads (repo, branch, commit_sha) VALUES ($1, $2, $3)")
            .bind(repo)
            .bind(branch)
            .bind(sha)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl Store {
    /// Record a configured repo, or update its URL.
    pub async fn upsert_repo(&self, name: &str, url: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO repos (name, url) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET url = excluded.url",
        )
        .bind(name)
        .bind(url)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    pub async fn repo(&self, name: &str) -> Result<Option<RepoRow>> {
        let row = sqlx::query("SELECT name, url, last_error, last_polled_at FROM repos WHERE name = $1")
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        row.as_ref().map(repo_from_row).transpose()
    }

    /// Record the outcome of a fetch: `Some(error)` is shown on the repo's page until a later
    /// fetch succeeds (`None`).
    pub async fn set_repo_error(&self, name: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE repos SET last_error = $1 WHERE name = $2 AND last_error IS DISTINCT FROM $1")
            .bind(error)
            .bind(name)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// Pass the repo's last fetch error and every build error of the repo through `rewrite`,
    /// storing the texts it changes, in one transaction; returns how many changed. A server
    /// older than `RepoUrl` stored fetch errors with the repo's URL in them, credentials and all.
    pub async fn rewrite_repo_errors(&self, repo: &str, rewrite: impl Fn(&str) -> String) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut changed = 0;
        let last_error: Option<String> = sqlx::query_scalar("SELECT last_error FROM repos WHERE name = $1")
            .bind(repo)
            .fetch_optional(&mut *tx)
            .await?
            .flatten();
        if let Some(text) = last_error.filter(|text| rewrite(text) != *text) {
            sqlx::query("UPDATE repos SET last_error = $1 WHERE name = $2")
                .bind(rewrite(&text))
                .bind(repo)
                .execute(&mut *tx)
                .await?;
            changed += 1;
        }
        let errors = sqlx::query("SELECT id, error FROM builds WHERE repo = $1 AND error IS NOT NULL")
            .bind(repo)
            .fetch_all(&mut *tx)
            .await?;
        for row in errors {
            let (id, text): (i64, String) = (row.try_get("id")?, row.try_get("error")?);
            let rewritten = rewrite(&text);
            if rewritten != text {
                sqlx::query("UPDATE builds SET error = $1 WHERE id = $2")
                    .bind(rewritten)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }

    pub async fn set_repo_polled(&self, name: &str) -> Result<()> {
        sqlx::query("UPDATE repos SET last_polled_at = $1 WHERE name = $2")
            .bind(now_ms())
            .bind(name)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// The branch heads the poller recorded last; empty before the first poll.
    pub async fn branch_heads(&self, repo: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT branch, commit_sha FROM branch_heads WHERE repo = $1")
            .bind(repo)
            .fetch_all(self.reader())
            .await?;
        rows.iter().map(|r| Ok((r.try_get("branch")?, r.try_get("commit_sha")?))).collect()
    }

    /// Whether the poller has recorded heads for this repo at least once.
    pub async fn has_polled(&self, repo: &str) -> Result<bool> {
        Ok(self.repo(repo).await?.is_some_and(|r| r.last_polled_at.is_some()))
    }

    pub async fn set_branch_heads(&self, repo: &str, heads: &BTreeMap<String, String>) -> Result<()> {
        let mut tx = self.begin().await?;
        replace_heads(&mut tx, repo, heads).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use gantry_event::BuildStatus;

    use super::super::{testing, NewBuild, RefKind, Trigger};
    use super::*;

    #[tokio::test]
    async fn upsert_updates_the_url_and_errors_come_and_go() {
        let (store, _dir) = testing::store_with_repo().await;
        store.upsert_repo("acme", "/srv/new.git").await.unwrap();
        store.set_repo_error("acme", Some("unreachable")).await.unwrap();
        let repo = store.repo("acme").await.unwrap().unwrap();
        assert_eq!(repo.url, "/srv/new.git");
        assert_eq!(repo.last_error.as_deref(), Some("unreachable"));
        store.set_repo_error("acme", None).await.unwrap();
        assert_eq!(store.repo("acme").await.unwrap().unwrap().last_error, None);
        assert!(store.repo("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rewriting_errors_changes_only_the_repos_own_texts() {
        let (store, _dir, build) = testing::store_with_build().await;
        store.upsert_repo("other", "/srv/other.git").await.unwrap();
        let other = store
            .insert_build(&NewBuild {
                repo: "other".to_string(),
                commit: "c".repeat(40),
                branch: "main".to_string(),
                ref_kind: RefKind::Branch,
                trigger: Trigger::Push,
            })
            .await
            .unwrap();
        for (repo, id) in [("acme", build.id), ("other", other.id)] {
            store.set_repo_error(repo, Some("fetching https://T0KEN@host failed")).await.unwrap();
            store.finish_build(id, BuildStatus::Errored, Some("fetching https://T0KEN@host failed")).await.unwrap();
        }

        let changed = store.rewrite_repo_errors("acme", |text| text.replace("T0KEN", "***")).await.unwrap();
        assert_eq!(changed, 2);
        assert_eq!(store.repo("acme").await.unwrap().unwrap().last_error.unwrap(), "fetching https://***@host failed");
        assert_eq!(store.build(build.id).await.unwrap().unwrap().error.unwrap(), "fetching https://***@host failed");
        assert!(store.repo("other").await.unwrap().unwrap().last_error.unwrap().contains("T0KEN"));
        assert!(store.build(other.id).await.unwrap().unwrap().error.unwrap().contains("T0KEN"));
        // Nothing left to change: a second start rewrites nothing.
        assert_eq!(store.rewrite_repo_errors("acme", |text| text.replace("T0KEN", "***")).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn branch_heads_are_replaced_whole() {
        let (store, _dir) = testing::store_with_repo().await;
        assert!(!store.has_polled("acme").await.unwrap());
        let first = BTreeMap::from([("main".to_string(), "a".repeat(40)), ("dev".to_string(), "b".repeat(40))]);
        store.set_branch_heads("acme", &first).await.unwrap();
        store.set_repo_polled("acme").await.unwrap();
        assert!(store.has_polled("acme").await.unwrap());
        assert_eq!(store.branch_heads("acme").await.unwrap(), first);
        let second = BTreeMap::from([("main".to_string(), "c".repeat(40))]);
        store.set_branch_heads("acme", &second).await.unwrap();
        assert_eq!(store.branch_heads("acme").await.unwrap(), second);
    }
}
