//! A fresh database per test on the shared PostgreSQL server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};

use crate::{database_url, unique_name};

/// Databases made by the harness start with this prefix; ones older than [`STALE_AFTER`] are
/// leftovers of killed test runs and are dropped by the next run.
const PREFIX: &str = "outbox_t";
const STALE_AFTER: Duration = Duration::from_secs(3 * 3600);

/// A database of one test's own, created empty on the server named by `DATABASE_URL` and dropped
/// (with any connections still open to it) when this value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
    server_url: String,
}

impl TestDatabase {
    /// Creates a new, empty database.
    pub async fn create() -> Self {
        let server_url = database_url().await;
        Self::create_on(&server_url).await
    }

    /// Creates a new, empty database on the server at `server_url` (a URL whose database the
    /// role can connect to; the role needs `CREATEDB`).
    pub async fn create_on(server_url: &str) -> Self {
        let name = unique_name(PREFIX);
        let admin = connect(server_url, 1).await;
        drop_stale_databases(&admin).await;
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name} at {server_url}: {e}"));
        admin.close().await.ok();
        Self {
            url: with_database(server_url, &name),
            name,
            server_url: server_url.to_owned(),
        }
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A SeaORM connection pool (up to 8 connections) to this database.
    pub async fn connect(&self) -> DatabaseConnection {
        connect(&self.url, 8).await
    }

    /// A pool with at most `max_connections` connections.
    pub async fn connect_with(&self, max_connections: u32) -> DatabaseConnection {
        connect(&self.url, max_connections).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        // Drop may run inside a Tokio runtime, which must not be blocked on: do the async work on
        // a thread of its own and wait for it, a while. `DROP DATABASE` waits until every
        // backend of the server has accepted its barrier, and a backend still authenticating a
        // connection does not, until its client answers: when that client is a task of the very
        // runtime this drop blocks (a pool or listener of the test reconnecting), only the
        // server's `authentication_timeout` (60 s) would end the wait. So after a few seconds the
        // drop returns and lets the test's runtime go on or shut down (which ends that
        // connection); the database is dropped in the background meanwhile, or by the next test
        // binary's sweep of stale databases if this process exits first.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let dropped = (|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                runtime.block_on(async {
                    let admin = Database::connect(small_options(&server_url, 1))
                        .await
                        .ok()?;
                    let result = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                    admin.close().await.ok();
                    result.ok()
                })
            })();
            let _ = done.send(dropped.is_some());
        });
        match finished.recv_timeout(DROP_WAIT) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "outbox-test-harness: could not drop test database {}",
                self.name
            ),
            Err(_) => eprintln!(
                "outbox-test-harness: test database {} is still being dropped after {:?} (a \
                 connection of this test is mid-handshake); it goes on in the background",
                self.name, DROP_WAIT
            ),
        }
    }
}

/// How long dropping a [`TestDatabase`] blocks before it goes on in the background.
const DROP_WAIT: Duration = Duration::from_secs(5);

fn small_options(url: &str, max_connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    options
}

async fn connect(url: &str, max_connections: u32) -> DatabaseConnection {
    Database::connect(small_options(url, max_connections))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {url}: {e}\n\
                 start the services with `scripts/services.sh up`, or set DATABASE_URL"
            )
        })
}

/// Drops harness databases left behind by test runs that were killed before they cleaned up.
async fn drop_stale_databases(admin: &DatabaseConnection) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let Ok(rows) = admin
        .query_all(Statement::from_string(
            admin.get_database_backend(),
            format!("SELECT datname FROM pg_database WHERE datname LIKE '{PREFIX}\\_%'"),
        ))
        .await
    else {
        return;
    };
    for row in rows {
        let Ok(name) = row.try_get::<String>("", "datname") else {
            continue;
        };
        let created = name
            .split('_')
            .nth(2)
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| now.saturating_sub(secs) > STALE_AFTER.as_secs()) {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await;
        }
    }
}

/// `url` with its database name replaced by `database`, keeping any query string.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/outbox", "t1"),
            "postgres://u:p@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432/outbox?sslmode=disable", "t1"),
            "postgres://u:p@h:5432/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t1"), "postgres://h/t1");
    }
}
