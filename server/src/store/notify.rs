//! PostgreSQL's `LISTEN`/`NOTIFY` between the servers sharing a database: a server that stored
//! some of a build's events says which (`EVENTS`), so the others relay them to their live
//! streams and pages; a server asked to cancel a build another server runs tells that one
//! (`CANCEL`). On SQLite there is one server: notifying does nothing and nobody listens.

use secrecy::ExposeSecret;
use sqlx::postgres::PgListener;

use super::{Backend, BuildId, Result, Store};

/// `"<build> <first> <last>"`: the build's events `first..=last` are stored; `"<build> final"`:
/// its final status is.
pub const EVENTS: &str = "gantry_events";

/// `"<build> user"` or `"<build> superseded"`: the server running the build should cancel it, for
/// that reason.
pub const CANCEL: &str = "gantry_cancel";

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Stored { build: BuildId, first: i64, last: i64 },
    Final(BuildId),
    Cancel { build: BuildId, superseded: bool },
}

impl Notice {
    pub(super) fn channel_and_payload(&self) -> (&'static str, String) {
        match self {
            Notice::Stored { build, first, last } => (EVENTS, format!("{} {first} {last}", build.0)),
            Notice::Final(build) => (EVENTS, format!("{} final", build.0)),
            Notice::Cancel { build, superseded } => {
                (CANCEL, format!("{} {}", build.0, if *superseded { "superseded" } else { "user" }))
            }
        }
    }

    fn parse(channel: &str, payload: &str) -> Option<Notice> {
        let mut words = payload.split(' ');
        let build = BuildId(words.next()?.parse().ok()?);
        let notice = match (channel, words.next(), words.next()) {
            (EVENTS, Some("final"), None) => Notice::Final(build),
            (EVENTS, Some(first), Some(last)) => {
                Notice::Stored { build, first: first.parse().ok()?, last: last.parse().ok()? }
            }
            (CANCEL, Some("user"), None) => Notice::Cancel { build, superseded: false },
            (CANCEL, Some("superseded"), None) => Notice::Cancel { build, superseded: true },
            _ => return None,
        };
        words.next().is_none().then_some(notice)
    }
}

/// This server's subscription to the other servers' notices.
pub struct Listener(PgListener);

impl Listener {
    /// The next notice. After a lost connection the listener connects again by itself; notices
    /// sent meanwhile are lost (streams then find the gap and read the store).
    pub async fn recv(&mut self) -> Result<Notice> {
        loop {
            let notification = self.0.recv().await?;
            match Notice::parse(notification.channel(), notification.payload()) {
                Some(notice) => return Ok(notice),
                None => tracing::warn!(channel = notification.channel(), "a notice this server does not read"),
            }
        }
    }
}

impl Store {
    /// Tell the other servers (PostgreSQL; nothing on SQLite).
    pub async fn notify(&self, notice: &Notice) -> Result<()> {
        if self.backend() == Backend::Sqlite {
            return Ok(());
        }
        let (channel, payload) = notice.channel_and_payload();
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(self.writer()).await?;
        Ok(())
    }

    /// Listen to the other servers' notices; `None` on SQLite.
    pub async fn listen(&self) -> Result<Option<Listener>> {
        let Some(url) = &self.url else { return Ok(None) };
        let mut listener = PgListener::connect(url.expose_secret()).await?;
        listener.listen_all([EVENTS, CANCEL]).await?;
        Ok(Some(Listener(listener)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_and_anything_else_is_refused() {
        for notice in [
            Notice::Stored { build: BuildId(7), first: 12, last: 2059 },
            Notice::Final(BuildId(7)),
            Notice::Cancel { build: BuildId(9), superseded: false },
            Notice::Cancel { build: BuildId(9), superseded: true },
        ] {
            let (channel, payload) = notice.channel_and_payload();
            assert_eq!(Notice::parse(channel, &payload), Some(notice));
        }
        for (channel, payload) in [
            (EVENTS, "7"),
            (EVENTS, "7 1"),
            (EVENTS, "7 1 2 3"),
            (EVENTS, "x final"),
            (CANCEL, "7"),
            (CANCEL, "7 1"),
            ("other", "7"),
        ] {
            assert_eq!(Notice::parse(channel, payload), None, "{channel} {payload}");
        }
    }

    #[tokio::test]
    async fn a_notice_reaches_a_listener_on_postgresql() {
        let (store, _dir) = super::super::testing::store().await;
        let Some(mut listener) = store.listen().await.unwrap() else {
            assert_eq!(store.backend(), Backend::Sqlite, "only SQLite has nobody to tell");
            store.notify(&Notice::Final(BuildId(1))).await.unwrap();
            return;
        };
        store.notify(&Notice::Cancel { build: BuildId(3), superseded: false }).await.unwrap();
        store.notify(&Notice::Stored { build: BuildId(3), first: 1, last: 4 }).await.unwrap();
        assert_eq!(listener.recv().await.unwrap(), Notice::Cancel { build: BuildId(3), superseded: false });
        assert_eq!(listener.recv().await.unwrap(), Notice::Stored { build: BuildId(3), first: 1, last: 4 });
    }
}
