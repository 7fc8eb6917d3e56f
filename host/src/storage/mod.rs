//! Key-value storage for plugins: one namespace per app, whatever key a
//! plugin asks for, with quotas per app (value size, key count, key length).
//!
//! [`Storage`] is the server's store; [`Kv`] is one app's view of it, which
//! the runtime hands to that app's guest calls (the `roost:channel/kv`
//! imports). Every operation is async and returns a [`KvError`] the guest
//! can act on — a full quota, a store that failed — never a host panic.
//!
//! # Layout
//! - `sqlite`: the embedded default, one SQLite file under
//!   `server.data_dir`: nothing to set up, and it survives a restart.
//! - `redis`: with `[cluster]`, the cluster's Redis, so every node sees the
//!   same keys.
//!
//! Why SQLite (rusqlite with its bundled build): one well-known file format
//! a user can open with any SQLite tool, atomic upserts and increments in
//! one statement, range scans for prefix listing, WAL for readers that do
//! not wait on the writer, and no server to run.

mod redis;
mod sqlite;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use crate::cluster::RedisLink;
use crate::config::Limits;

/// Why a storage call failed, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Over one of the app's quotas.
    #[error("over quota: {0}")]
    Quota(String),
    /// The store failed or did not answer in time.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Longest page `list_keys` returns, whatever limit the guest asks for.
pub const MAX_LIST: u32 = 1000;

/// One app's bounds on its storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    pub max_keys: usize,
    pub max_value_bytes: usize,
    pub max_key_bytes: usize,
}

impl Quotas {
    pub fn from_limits(limits: &Limits) -> Self {
        Self {
            max_keys: limits.kv_max_keys,
            max_value_bytes: limits.kv_max_value_bytes,
            max_key_bytes: limits.kv_max_key_bytes,
        }
    }
}

/// The server's store: the cluster's Redis, or an embedded SQLite file
/// opened on first use (a server whose apps never use storage never
/// touches `data_dir`). Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    shared: Arc<Shared>,
}

struct Shared {
    data_dir: PathBuf,
    embedded: Mutex<Option<Arc<sqlite::Sqlite>>>,
    cluster: Option<redis::RedisStore>,
}

/// Where an app's keys live.
#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::Sqlite>),
    Redis(redis::RedisStore),
}

impl Storage {
    /// The embedded store, in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self::with(data_dir, None)
    }

    /// The store in the cluster's Redis (`data_dir` stays unused).
    pub fn clustered(data_dir: PathBuf, link: RedisLink) -> Self {
        Self::with(data_dir, Some(redis::RedisStore::new(link)))
    }

    fn with(data_dir: PathBuf, cluster: Option<redis::RedisStore>) -> Self {
        Self {
            shared: Arc::new(Shared {
                data_dir,
                embedded: Mutex::new(None),
                cluster,
            }),
        }
    }

    /// `app`'s view of the store, bounded by `quotas`; opens the store if
    /// this is its first user.
    pub fn kv(&self, app: &str, quotas: Quotas) -> anyhow::Result<Kv> {
        let backend = match &self.shared.cluster {
            Some(store) => Backend::Redis(store.clone()),
            None => Backend::Sqlite(self.embedded()?),
        };
        Ok(Kv {
            app: app.into(),
            backend,
            quotas,
        })
    }

    fn embedded(&self) -> anyhow::Result<Arc<sqlite::Sqlite>> {
        let mut embedded = self
            .shared
            .embedded
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let store = match &*embedded {
            Some(store) => store.clone(),
            None => {
                let path = self.shared.data_dir.join("kv.sqlite3");
                let store =
                    Arc::new(sqlite::Sqlite::open(&path).with_context(|| {
                        format!("opening the key-value store {}", path.display())
                    })?);
                tracing::info!(path = %path.display(), "key-value store opened");
                *embedded = Some(store.clone());
                store
            }
        };
        Ok(store)
    }
}

/// One app's storage: every key it names lives in its own namespace.
/// Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    app: Arc<str>,
    backend: Backend,
    quotas: Quotas,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

impl Kv {
    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(&key)?;
        match &self.backend {
            Backend::Redis(redis) => redis.get(&self.app, &key).await,
            Backend::Sqlite(store) => {
                self.blocking(store, move |store, app, _| store.get(app, &key))
                    .await
            }
        }
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.len() > MAX_LIST as usize {
            return Err(KvError::Invalid(format!(
                "get-many of {} keys, over {MAX_LIST}",
                keys.len()
            )));
        }
        for key in &keys {
            self.check_key(key)?;
        }
        match &self.backend {
            Backend::Redis(redis) => redis.get_many(&self.app, &keys).await,
            Backend::Sqlite(store) => {
                self.blocking(store, move |store, app, _| {
                    keys.iter().map(|key| store.get(app, key)).collect()
                })
                .await
            }
        }
    }

    pub async fn set(
        &self,
        key: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.check_key(&key)?;
        if value.len() > self.quotas.max_value_bytes {
            return Err(KvError::Quota(format!(
                "a value of {} bytes, over the app's {} (limits.kv_max_value_bytes)",
                value.len(),
                self.quotas.max_value_bytes
            )));
        }
        match &self.backend {
            Backend::Redis(redis) => redis.set(&self.app, &key, &value, ttl, self.quotas).await,
            Backend::Sqlite(store) => {
                self.blocking(store, move |store, app, quotas| {
                    store.set(app, &key, &value, ttl, quotas.max_keys)
                })
                .await
            }
        }
    }

    pub async fn delete(&self, key: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        match &self.backend {
            Backend::Redis(redis) => redis.delete(&self.app, &key).await,
            Backend::Sqlite(store) => {
                self.blocking(store, move |store, app, _| store.delete(app, &key))
                    .await
            }
        }
    }

    pub async fn increment(&self, key: String, delta: i64) -> Result<i64, KvError> {
        self.check_key(&key)?;
        match &self.backend {
            Backend::Redis(redis) => redis.increment(&self.app, &key, delta, self.quotas).await,
            Backend::Sqlite(store) => {
                self.blocking(store, move |store, app, quotas| {
                    store.increment(app, &key, delta, quotas.max_keys)
                })
                .await
            }
        }
    }

    pub async fn list_keys(
        &self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        let limit = limit.min(MAX_LIST);
        match &self.backend {
            Backend::Redis(redis) => {
                redis
                    .list_keys(&self.app, &prefix, after.as_deref(), limit)
                    .await
            }
            Backend::Sqlite(store) => {
                self.blocking(store, move |store, app, _| {
                    store.list_keys(app, &prefix, after.as_deref(), limit)
                })
                .await
            }
        }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::Invalid("an empty key".into()));
        }
        if key.len() > self.quotas.max_key_bytes {
            return Err(KvError::Quota(format!(
                "a key of {} bytes, over the app's {} (limits.kv_max_key_bytes)",
                key.len(),
                self.quotas.max_key_bytes
            )));
        }
        Ok(())
    }

    /// Runs an embedded store operation off the async threads (SQLite
    /// blocks).
    async fn blocking<T, F>(&self, store: &Arc<sqlite::Sqlite>, op: F) -> Result<T, KvError>
    where
        T: Send + 'static,
        F: FnOnce(&sqlite::Sqlite, &str, Quotas) -> Result<T, KvError> + Send + 'static,
    {
        let (store, app, quotas) = (store.clone(), self.app.clone(), self.quotas);
        tokio::task::spawn_blocking(move || op(&store, &app, quotas))
            .await
            .map_err(|e| KvError::Unavailable(format!("the storage task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas() -> Quotas {
        Quotas {
            max_keys: 3,
            max_value_bytes: 16,
            max_key_bytes: 8,
        }
    }

    #[tokio::test]
    async fn apps_are_apart_whatever_key_they_ask_for() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(dir.path().to_owned());
        let a = storage.kv("a", quotas()).unwrap();
        let b = storage.kv("b", quotas()).unwrap();
        a.set("k".into(), b"from a".to_vec(), None).await.unwrap();
        assert_eq!(b.get("k".into()).await.unwrap(), None);
        assert_eq!(
            b.list_keys(String::new(), None, 10).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            a.get("k".into()).await.unwrap().as_deref(),
            Some(&b"from a"[..])
        );
    }

    #[tokio::test]
    async fn quotas_and_bad_requests_are_errors_for_the_guest() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Storage::new(dir.path().to_owned())
            .kv("a", quotas())
            .unwrap();
        assert!(matches!(
            kv.set("k".into(), vec![0; 17], None).await,
            Err(KvError::Quota(_))
        ));
        assert!(matches!(
            kv.get("123456789".into()).await,
            Err(KvError::Quota(_))
        ));
        assert!(matches!(
            kv.get(String::new()).await,
            Err(KvError::Invalid(_))
        ));
        for key in ["a", "b", "c"] {
            kv.set(key.into(), vec![1], None).await.unwrap();
        }
        // Overwriting an existing key is fine; a fourth key is not.
        kv.set("a".into(), vec![2], None).await.unwrap();
        assert!(matches!(
            kv.set("d".into(), vec![1], None).await,
            Err(KvError::Quota(_))
        ));
        assert!(matches!(
            kv.increment("e".into(), 1).await,
            Err(KvError::Quota(_))
        ));
        assert!(kv.delete("a".into()).await.unwrap());
        kv.set("d".into(), vec![1], None).await.unwrap();
    }
}
