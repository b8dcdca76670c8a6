//! PostgreSQL's `LISTEN`/`NOTIFY` between the servers sharing a database: a server that stored
//! some of a build's events says which (`EVENTS`), so the others relay them to their live
//! streams and pages; a server asked to cancel a build another server runs tells that one
//! (`CANCEL`). On SQLite there is one server: notifying does nothing and nobody listens.

use secrecy::ExposeSecret;
use sqlx::postgres::PgListener;

use super::{Backend, BuildId, Result, Store};

/// `"<build> <first> <last> <server>"`: the build's events `first..=last` are stored;
/// `"<build> final <server>"`: its final status is. `<server>` is the sender's `server_id` (never
/// empty, never a space in it): a server skips its own notices, whose events its listeners
/// already had.
pub const EVENTS: &str = "gantry_events";

/// `"<build> user <server>"` or `"<build> superseded <server>"`: the server running the build
/// should cancel it, for that reason.
pub const CANCEL: &str = "gantry_cancel";

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Stored { build: BuildId, first: i64, last: i64 },
    Final(BuildId),
    Cancel { build: BuildId, superseded: bool },
}

impl Notice {
    /// The channel and the payload of the notice as `from` sends it.
    pub(super) fn channel_and_payload(&self, from: &str) -> (&'static str, String) {
        match self {
            Notice::Stored { build, first, last } => (EVENTS, format!("{} {first} {last} {from}", build.0)),
            Notice::Final(build) => (EVENTS, format!("{} final {from}", build.0)),
            Notice::Cancel { build, superseded } => {
                (CANCEL, format!("{} {} {from}", build.0, if *superseded { "superseded" } else { "user" }))
            }
        }
    }

    /// The notice and the server that sent it.
    fn parse<'p>(channel: &str, payload: &'p str) -> Option<(Notice, &'p str)> {
        let (said, from) = payload.rsplit_once(' ')?;
        let mut words = said.split(' ');
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
        (words.next().is_none() && !from.is_empty()).then_some((notice, from))
    }
}

/// This server's subscription to the other servers' notices.
pub struct Listener {
    listener: PgListener,
    /// This server's `server_id`: its own notices are skipped.
    me: String,
}

impl Listener {
    /// The next notice of another server. After a lost connection the listener connects again
    /// by itself; notices sent meanwhile are lost (streams then find the gap and read the store).
    pub async fn recv(&mut self) -> Result<Notice> {
        loop {
            let notification = self.listener.recv().await?;
            match Notice::parse(notification.channel(), notification.payload()) {
                Some((notice, from)) if from != self.me => return Ok(notice),
                Some(_) => {}
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
        let (channel, payload) = notice.channel_and_payload(self.server());
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(self.writer()).await?;
        Ok(())
    }

    /// Listen to the other servers' notices; `None` on SQLite.
    pub async fn listen(&self) -> Result<Option<Listener>> {
        let Some(url) = &self.url else { return Ok(None) };
        let mut listener = PgListener::connect(url.expose_secret()).await?;
        listener.listen_all([EVENTS, CANCEL]).await?;
        Ok(Some(Listener { listener, me: self.server().to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_with_their_sender_and_anything_else_is_refused() {
        for notice in [
            Notice::Stored { build: BuildId(7), first: 12, last: 2059 },
            Notice::Final(BuildId(7)),
            Notice::Cancel { build: BuildId(9), superseded: false },
            Notice::Cancel { build: BuildId(9), superseded: true },
        ] {
            let (channel, payload) = notice.channel_and_payload("gantry-1");
            assert_eq!(Notice::parse(channel, &payload), Some((notice, "gantry-1")));
        }
        for (channel, payload) in [
            (EVENTS, "7"),
            (EVENTS, "7 final"),
            (EVENTS, "7 final "),
            (EVENTS, "7 1 s"),
            (EVENTS, "7 1 2 3 s"),
            (EVENTS, "x final s"),
            (CANCEL, "7 s"),
            (CANCEL, "7 1 s"),
            ("other", "7 final s"),
        ] {
            assert_eq!(Notice::parse(channel, payload), None, "{channel} {payload}");
        }
    }

    #[tokio::test]
    async fn a_notice_reaches_the_other_servers_listeners_but_not_its_own() {
        let (store, _dir) = super::super::testing::store().await;
        let other = store.clone().for_server("other");
        let (Some(mut mine), Some(mut theirs)) = (store.listen().await.unwrap(), other.listen().await.unwrap()) else {
            assert_eq!(store.backend(), Backend::Sqlite, "only SQLite has nobody to tell");
            store.notify(&Notice::Final(BuildId(1))).await.unwrap();
            return;
        };
        store.notify(&Notice::Cancel { build: BuildId(3), superseded: false }).await.unwrap();
        store.notify(&Notice::Stored { build: BuildId(3), first: 1, last: 4 }).await.unwrap();
        other.notify(&Notice::Final(BuildId(3))).await.unwrap();
        assert_eq!(theirs.recv().await.unwrap(), Notice::Cancel { build: BuildId(3), superseded: false });
        assert_eq!(theirs.recv().await.unwrap(), Notice::Stored { build: BuildId(3), first: 1, last: 4 });
        // The first notice this store's listener hears is the other server's, sent last.
        assert_eq!(mine.recv().await.unwrap(), Notice::Final(BuildId(3)));
    }
}
