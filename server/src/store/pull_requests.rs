//! Builds of pull (merge) requests: queueing one with the request it belongs to, and cancelling
//! the queued builds of a request that was closed or merged.
//!
//! The request's columns live on `builds` (see the `20241004000000_deliveries_queue` migration);
//! the queries that every build shares stay in `builds.rs`. Nothing here decides which request
//! events build: that is the scheduler's job.

use sqlx::Row;

use super::Connection;

use super::builds::{NewBuild, PullRequest};
use super::{now_ms, BuildId, BuildRow, Result};

/// Queue a build of a pull request; its number is the repo's next one. `new.ref_kind` must be
/// `PullRequest` and `new.branch` the request's source branch.
pub async fn insert(conn: &mut Connection, new: &NewBuild, pr: &PullRequest) -> Result<BuildRow> {
    debug_assert_eq!(new.branch, pr.source);
    super::builds::insert_with(conn, new, None, Some(pr)).await
}

/// Cancel the queued builds of request `number` of `repo` with `reason`. Returns them.
pub async fn cancel_queued(conn: &mut Connection, repo: &str, number: i64, reason: &str) -> Result<Vec<BuildId>> {
    let rows = sqlx::query(
        "UPDATE builds SET status = 'cancelled', finished_at = $1, error = $2 \
         WHERE repo = $3 AND ref_kind = 'pull_request' AND pr_number = $4 AND status = 'queued' RETURNING id",
    )
    .bind(now_ms())
    .bind(reason)
    .bind(repo)
    .bind(number)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok(BuildId(r.try_get("id")?))).collect()
}

#[cfg(test)]
mod tests {
    use gantry_event::BuildStatus;

    use super::super::testing;
    use super::super::{builds, RefKind, Trigger};
    use super::*;

    fn pr(number: i64, source: &str) -> (NewBuild, PullRequest) {
        let new = NewBuild {
            repo: "acme".into(),
            commit: "c".repeat(40),
            branch: source.into(),
            ref_kind: RefKind::PullRequest,
            trigger: Trigger::Push,
        };
        let pr = PullRequest {
            number,
            source: source.into(),
            target: "main".into(),
            head_ref: format!("refs/pull/{number}/head"),
        };
        (new, pr)
    }

    #[tokio::test]
    async fn a_request_build_keeps_its_request_and_supersedes_only_its_own() {
        let (store, _dir) = testing::store_with_repo().await;
        let mut tx = store.begin().await.unwrap();
        let (new, seven) = pr(7, "feature");
        let first = insert(&mut tx, &new, &seven).await.unwrap();
        // Another fork's request from a branch of the same name, and a push of that branch.
        let (other_new, eight) = pr(8, "feature");
        let other = insert(&mut tx, &other_new, &eight).await.unwrap();
        let push = builds::insert(&mut tx, &NewBuild { ref_kind: RefKind::Branch, ..new.clone() }).await.unwrap();
        let newer = insert(&mut tx, &new, &seven).await.unwrap();
        assert_eq!(builds::supersede_queued(&mut tx, &newer).await.unwrap(), vec![first.id]);
        tx.commit().await.unwrap();
        assert_eq!(newer.pull_request.as_ref(), Some(&seven));
        assert_eq!(newer.ref_kind, RefKind::PullRequest);
        for id in [other.id, push.id, newer.id] {
            assert_eq!(store.build(id).await.unwrap().unwrap().status, BuildStatus::Queued);
        }
        assert_eq!(store.build(push.id).await.unwrap().unwrap().pull_request, None);
    }

    #[tokio::test]
    async fn closing_a_request_cancels_its_queued_builds_only() {
        let (store, _dir) = testing::store_with_repo().await;
        let mut tx = store.begin().await.unwrap();
        let (new, seven) = pr(7, "feature");
        let queued = insert(&mut tx, &new, &seven).await.unwrap();
        let (other_new, eight) = pr(8, "other");
        let other = insert(&mut tx, &other_new, &eight).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let cancelled = cancel_queued(&mut tx, "acme", 7, "pull request #7 was closed").await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(cancelled, vec![queued.id]);
        let row = store.build(queued.id).await.unwrap().unwrap();
        assert_eq!((row.status, row.error.as_deref()), (BuildStatus::Cancelled, Some("pull request #7 was closed")));
        assert_eq!(store.build(other.id).await.unwrap().unwrap().status, BuildStatus::Queued);
    }
}
