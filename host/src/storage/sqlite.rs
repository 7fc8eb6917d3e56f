//! The embedded store: one SQLite file, one table keyed by (app, key), so an
//! app's namespace is a column no guest can name. Calls block (they run on
//! tokio's blocking pool, see `Kv::run`); one connection, behind a mutex,
//! serializes writes as SQLite does anyway.
//!
//! Expiry: a row past `expires_at` reads as absent, is replaced by a write,
//! and is swept out every [`SWEEP_EVERY`]. Key counts per app are kept in
//! memory (counted once per app from the table) so a quota check costs no
//! scan.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::KvError;

/// How often expired rows are deleted (they read as absent meanwhile).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct Sqlite {
    state: Mutex<State>,
}

struct State {
    conn: Connection,
    /// Rows per app (expired ones included until swept), counted on first use.
    keys: HashMap<String, usize>,
    last_sweep: Instant,
}

impl Sqlite {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        // WAL: readers never wait for the writer; NORMAL: a commit is safe
        // against a crash of the process (not of the machine) without an
        // fsync per write.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(1))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                app TEXT NOT NULL,
                key TEXT NOT NULL,
                value BLOB NOT NULL,
                expires_at INTEGER,
                PRIMARY KEY (app, key)
            ) WITHOUT ROWID;",
        )?;
        Ok(Self {
            state: Mutex::new(State {
                conn,
                keys: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        })
    }

    pub fn get(&self, app: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let state = self.lock();
        state
            .conn
            .query_row(
                "SELECT value FROM kv WHERE app = ?1 AND key = ?2
                 AND (expires_at IS NULL OR expires_at > ?3)",
                params![app, key, now_ms()],
                |row| row.get(0),
            )
            .optional()
            .map_err(failed)
    }

    pub fn set(
        &self,
        app: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        max_keys: usize,
    ) -> Result<(), KvError> {
        let mut state = self.lock();
        state.sweep_if_due();
        let expires_at = ttl.map(|ttl| now_ms().saturating_add(ttl.as_millis() as i64));
        state.make_room(app, key, max_keys)?;
        state
            .conn
            .execute(
                "INSERT INTO kv (app, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, key) DO UPDATE SET value = ?3, expires_at = ?4",
                params![app, key, value, expires_at],
            )
            .map_err(failed)?;
        Ok(())
    }

    pub fn delete(&self, app: &str, key: &str) -> Result<bool, KvError> {
        let mut state = self.lock();
        let live = state.live(app, key)?;
        let deleted = state
            .conn
            .execute(
                "DELETE FROM kv WHERE app = ?1 AND key = ?2",
                params![app, key],
            )
            .map_err(failed)?;
        if deleted > 0 {
            state.count(app, -1)?;
        }
        Ok(live)
    }

    pub fn increment(
        &self,
        app: &str,
        key: &str,
        delta: i64,
        max_keys: usize,
    ) -> Result<i64, KvError> {
        let mut state = self.lock();
        let now = now_ms();
        let current: Option<(Vec<u8>, Option<i64>)> = state
            .conn
            .query_row(
                "SELECT value, expires_at FROM kv WHERE app = ?1 AND key = ?2
                 AND (expires_at IS NULL OR expires_at > ?3)",
                params![app, key, now],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(failed)?;
        let (old, expires_at) = match current {
            Some((bytes, expires_at)) => {
                let number = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .ok_or_else(|| {
                        KvError::Invalid(format!("`{key}` does not hold a decimal integer"))
                    })?;
                (number, expires_at)
            }
            None => (0, None),
        };
        let new = old
            .checked_add(delta)
            .ok_or_else(|| KvError::Invalid(format!("`{key}` would overflow a 64-bit integer")))?;
        state.make_room(app, key, max_keys)?;
        state
            .conn
            .execute(
                "INSERT INTO kv (app, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, key) DO UPDATE SET value = ?3, expires_at = ?4",
                params![app, key, new.to_string().into_bytes(), expires_at],
            )
            .map_err(failed)?;
        Ok(new)
    }

    pub fn list_keys(
        &self,
        app: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        let state = self.lock();
        // A range scan of the primary key: from the prefix (or past `after`)
        // while keys still start with the prefix.
        let from = match after {
            Some(after) if after >= prefix => after,
            _ => prefix,
        };
        let mut statement = state
            .conn
            .prepare_cached(
                "SELECT key FROM kv WHERE app = ?1 AND key >= ?2 AND key != ?3
                 AND substr(key, 1, ?4) = ?5
                 AND (expires_at IS NULL OR expires_at > ?6)
                 ORDER BY key LIMIT ?7",
            )
            .map_err(failed)?;
        let skip = after.unwrap_or("");
        let rows = statement
            .query_map(
                params![
                    app,
                    from,
                    skip,
                    prefix.chars().count() as i64,
                    prefix,
                    now_ms(),
                    limit
                ],
                |row| row.get(0),
            )
            .map_err(failed)?;
        rows.collect::<Result<Vec<String>, _>>().map_err(failed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic mid-statement leaves SQLite consistent (each statement is
        // atomic); at worst a key count is off until the next restart.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Whether `key` is set and live.
    fn live(&self, app: &str, key: &str) -> Result<bool, KvError> {
        self.conn
            .query_row(
                "SELECT 1 FROM kv WHERE app = ?1 AND key = ?2
                 AND (expires_at IS NULL OR expires_at > ?3)",
                params![app, key, now_ms()],
                |_| Ok(()),
            )
            .optional()
            .map(|row| row.is_some())
            .map_err(failed)
    }

    /// Counts a new row for `key`, unless it has one already (live or
    /// not), refusing past `max_keys`.
    fn make_room(&mut self, app: &str, key: &str, max_keys: usize) -> Result<(), KvError> {
        let exists = self
            .conn
            .query_row(
                "SELECT 1 FROM kv WHERE app = ?1 AND key = ?2",
                params![app, key],
                |_| Ok(()),
            )
            .optional()
            .map_err(failed)?
            .is_some();
        if exists {
            return Ok(());
        }
        if self.keys(app)? >= max_keys {
            return Err(KvError::Quota(format!(
                "the app holds {max_keys} keys, its limit (limits.kv_max_keys)"
            )));
        }
        self.count(app, 1)
    }

    fn keys(&mut self, app: &str) -> Result<usize, KvError> {
        if let Some(&n) = self.keys.get(app) {
            return Ok(n);
        }
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM kv WHERE app = ?1", [app], |row| {
                row.get(0)
            })
            .map_err(failed)?;
        let n = n as usize;
        self.keys.insert(app.to_owned(), n);
        Ok(n)
    }

    fn count(&mut self, app: &str, change: isize) -> Result<(), KvError> {
        let n = self.keys(app)?;
        self.keys.insert(app.to_owned(), n.saturating_add_signed(change));
        Ok(())
    }

    fn sweep_if_due(&mut self) {
        if self.last_sweep.elapsed() < SWEEP_EVERY {
            return;
        }
        self.last_sweep = Instant::now();
        let swept = self
            .conn
            .prepare("DELETE FROM kv WHERE expires_at <= ?1 RETURNING app")
            .and_then(|mut statement| {
                statement
                    .query_map([now_ms()], |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<String>, _>>()
            });
        match swept {
            Ok(apps) => {
                for app in apps {
                    if let Some(n) = self.keys.get_mut(&app) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
            Err(error) => tracing::warn!("sweeping expired keys failed: {error}"),
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn failed(error: rusqlite::Error) -> KvError {
    tracing::warn!("key-value store error: {error}");
    KvError::Unavailable(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Sqlite) {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(&dir.path().join("kv.sqlite3")).unwrap();
        (dir, store)
    }

    #[test]
    fn set_get_delete_and_expiry() {
        let (_dir, s) = store();
        s.set("a", "k", b"v", None, 10).unwrap();
        assert_eq!(s.get("a", "k").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(s.delete("a", "k").unwrap());
        assert!(!s.delete("a", "k").unwrap());
        assert_eq!(s.get("a", "k").unwrap(), None);
        s.set("a", "t", b"v", Some(Duration::from_millis(1)), 10)
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.get("a", "t").unwrap(), None, "expired");
        assert!(!s.delete("a", "t").unwrap(), "an expired key was not set");
    }

    #[test]
    fn increment_counts_from_zero_and_refuses_non_numbers() {
        let (_dir, s) = store();
        assert_eq!(s.increment("a", "n", 1, 10).unwrap(), 1);
        assert_eq!(s.increment("a", "n", 41, 10).unwrap(), 42);
        assert_eq!(s.get("a", "n").unwrap().as_deref(), Some(&b"42"[..]));
        s.set("a", "s", b"text", None, 10).unwrap();
        assert!(matches!(
            s.increment("a", "s", 1, 10),
            Err(KvError::Invalid(_))
        ));
    }

    #[test]
    fn list_keys_by_prefix_in_pages() {
        let (_dir, s) = store();
        for key in ["msg:1", "msg:2", "msg:3", "mst", "other"] {
            s.set("a", key, b"", None, 10).unwrap();
        }
        s.set("b", "msg:9", b"", None, 10).unwrap();
        assert_eq!(
            s.list_keys("a", "msg:", None, 10).unwrap(),
            ["msg:1", "msg:2", "msg:3"]
        );
        assert_eq!(s.list_keys("a", "msg:", None, 2).unwrap(), ["msg:1", "msg:2"]);
        assert_eq!(
            s.list_keys("a", "msg:", Some("msg:2"), 10).unwrap(),
            ["msg:3"]
        );
        assert_eq!(s.list_keys("a", "", None, 10).unwrap().len(), 5);
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.sqlite3");
        Sqlite::open(&path)
            .unwrap()
            .set("a", "k", b"kept", None, 10)
            .unwrap();
        let reopened = Sqlite::open(&path).unwrap();
        assert_eq!(reopened.get("a", "k").unwrap().as_deref(), Some(&b"kept"[..]));
    }
}
