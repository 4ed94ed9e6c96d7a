//! SQL, the truth (DESIGN.md §7): every statement the control plane runs, one code path for
//! SQLite and PostgreSQL through sqlx's `Any` driver.
//!
//! Portability rules: ids are TEXT (hyphenated UUID v7), times BIGINT Unix milliseconds, flags
//! INTEGER 0/1; placeholders are `$n` (SQLite accepts them); conflicts are settled by unique
//! indexes and `ON CONFLICT DO NOTHING`, never by read-then-write transactions (which deadlock
//! or fail fast on SQLite). The schema lives in `migrations/{sqlite,postgres}`, embedded at build
//! time and applied on connect. This module knows nothing about HTTP.

mod attachments;
mod auth_sessions;
mod group_log;
mod groups;
mod location;
mod participants;
mod places;
mod push;
mod second_factor;
mod sessions;
mod signing_keys;
mod users;

pub(crate) use attachments::{AttachmentRefusal, NewAttachment, object_key};
pub(crate) use auth_sessions::{NewAuthSession, Refreshed};
pub(crate) use group_log::{Deleted, MessageRefusal, NewMessage, Posted};
pub(crate) use groups::{GroupChanges, GroupRow, MemberGroup, MemberRefusal};
pub(crate) use participants::ParticipantRow;
pub(crate) use places::{PlaceRefusal, PlaceRow, PlacesChange};
pub(crate) use push::{DueDelivery, NewDelivery, PushTarget};
pub(crate) use sessions::SessionRow;
pub(crate) use signing_keys::SigningKeyRow;
pub(crate) use users::{AccountChanges, AccountRow, DeviceRow, NewDevice, NewUser, UserRow};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _, Row as _};
use std::time::Duration;
use uuid::Uuid;

/// How long a request waits for a pooled connection before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("unsupported database URL scheme (expected sqlite: or postgres:)")]
    Scheme,
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which SQL engine the URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub(crate) fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Engine::Sqlite),
            "postgres" | "postgresql" => Some(Engine::Postgres),
            _ => None,
        }
    }
}

/// Whether an insert took effect or hit a unique key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    Done,
    Duplicate,
}

/// A connection pool and the queries over it.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: AnyPool,
}

impl Store {
    /// Connects, tunes SQLite (WAL, foreign keys, busy timeout) and applies the migrations.
    pub(crate) async fn open(url: &str) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let engine = Engine::of_url(url).ok_or(OpenError::Scheme)?;
        if engine == Engine::Sqlite {
            create_sqlite_parent(url);
        }
        let options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let options = match engine {
            // Each execution is planned with its parameters. A prepared statement's generic plan
            // is fixed by the statistics of the moment: made while a table was nearly empty, a
            // sequential scan stays until the next ANALYZE (measured: the idempotency lookup of
            // a message batch took 5-40 ms on 24,000 events instead of 0.1 ms). Our statements
            // are short; planning them costs tens of microseconds.
            Engine::Postgres => options.max_connections(16).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                    Ok(())
                })
            }),
            Engine::Sqlite => options.max_connections(8).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
                         PRAGMA synchronous = NORMAL;",
                    )
                    .await?;
                    Ok(())
                })
            }),
        };
        let pool = options.connect(url).await.map_err(OpenError::Connect)?;
        if engine == Engine::Sqlite {
            // Persistent in the file; set once, while this is the only connection.
            pool.execute("PRAGMA journal_mode = WAL")
                .await
                .map_err(OpenError::Connect)?;
        }
        match engine {
            Engine::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Engine::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        Ok(Self { pool })
    }

    /// Closes the pool: every later query fails (tests of the unready path).
    #[cfg(test)]
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database answers.
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        self.pool.execute("SELECT 1").await.map(drop)
    }
}

/// Reads a TEXT column holding a hyphenated UUID into an id newtype.
fn uuid_column<T>(row: &AnyRow, column: &str, wrap: fn(Uuid) -> T) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    let uuid = Uuid::parse_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })?;
    Ok(wrap(uuid))
}

/// A value of a TEXT column that must parse; a bad one is a decode error, not a panic.
fn parsed_column<T>(
    row: &AnyRow,
    column: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(column)?;
    parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unexpected value {text:?}").into(),
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// SQLite's `mode=rwc` creates the database file but not its folder: create the folder.
fn create_sqlite_parent(url: &str) {
    let path = url
        .split_once(':')
        .map_or("", |(_, rest)| rest.trim_start_matches("//"));
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() || path == ":memory:" {
        return;
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        // A failure shows up as a clear connect error right after.
        let _ = std::fs::create_dir_all(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_picks_the_engine() {
        assert_eq!(
            Engine::of_url("sqlite://x.db?mode=rwc"),
            Some(Engine::Sqlite)
        );
        assert_eq!(Engine::of_url("sqlite::memory:"), Some(Engine::Sqlite));
        assert_eq!(Engine::of_url("postgres://u@h/db"), Some(Engine::Postgres));
        assert_eq!(
            Engine::of_url("PostgreSQL://u@h/db"),
            Some(Engine::Postgres)
        );
        assert_eq!(Engine::of_url("mysql://u@h/db"), None);
        assert_eq!(Engine::of_url("nothing"), None);
    }

    #[tokio::test]
    async fn a_sqlite_database_in_a_missing_folder_is_created() {
        let dir = std::env::temp_dir().join(format!("convoy-store-{}", Uuid::now_v7()));
        let url = format!("sqlite://{}?mode=rwc", dir.join("a/b/convoy.db").display());
        let store = Store::open(&url).await.expect("opens and migrates");
        store.ping().await.unwrap();
        assert!(dir.join("a/b/convoy.db").exists());
        store.close().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
