//! The cluster's store: plugin storage in the cluster's Redis, so every
//! node sees the same keys (a room's history, a counter) whichever node a
//! client is on. Same semantics as the embedded store — quotas, expiry,
//! decimal increments, ordered prefix listing — built from plain Redis:
//!
//! - each value is a string key `<prefix>:<app>:kv:<key>`, with Redis's own
//!   expiry (`PX`) for a TTL;
//! - `<prefix>:<app>:kvi`, a sorted set of the app's keys all at score 0,
//!   ordered by name for `ZRANGEBYLEX` (listing) and counted by `ZCARD`
//!   (the key quota);
//! - `<prefix>:<app>:kvx`, a sorted set of the keys that have a TTL, scored
//!   by when they expire, so each write first drops expired keys from the
//!   index.
//!
//! Writes are Lua scripts (run by `EVALSHA`, loaded on first use) so a
//! quota check and its write are one atomic step for all nodes at once.
//! The scripts name the value keys they derive from `ARGV`, which a Redis
//! Cluster would refuse; Roost speaks to one Redis (or a replicated
//! primary), as its broker does.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{KvError, Quotas};
use crate::cluster::RedisLink;

/// Drops up to 1000 expired keys from the index (their values Redis has
/// already expired). Shared by every writing script.
const PRUNE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function prune(index, expiring, base)
  local due = redis.call('ZRANGEBYSCORE', expiring, '-inf', now_ms(), 'LIMIT', 0, 1000)
  for _, key in ipairs(due) do
    if redis.call('EXISTS', base .. key) == 0 then
      redis.call('ZREM', index, key)
      redis.call('ZREM', expiring, key)
    end
  end
end
-- Indexes `key`, unless it is already; false past `max` keys.
local function make_room(index, key, max)
  if redis.call('ZSCORE', index, key) then return true end
  if redis.call('ZCARD', index) >= max then return false end
  redis.call('ZADD', index, 0, key)
  return true
end
";

/// KEYS: value, index, expiring. ARGV: base, key, bytes, ttl ms or "", max
/// keys. Returns 1, or 0 over the key quota.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRUNE}
prune(KEYS[2], KEYS[3], ARGV[1])
if not make_room(KEYS[2], ARGV[2], tonumber(ARGV[5])) then return 0 end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[4]), ARGV[2])
end
return 1"
    ))
});

/// KEYS: value, index, expiring. ARGV: base, key, delta, max keys.
/// Returns {1, new value}, {0} over the key quota, or {2, why} when the
/// value is not an integer or would overflow. A key with a TTL keeps it.
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRUNE}
prune(KEYS[2], KEYS[3], ARGV[1])
if not make_room(KEYS[2], ARGV[2], tonumber(ARGV[4])) then return {{0}} end
local new = redis.pcall('INCRBY', KEYS[1], ARGV[3])
if type(new) == 'table' and new.err then return {{2, new.err}} end
return {{1, new}}"
    ))
});

/// KEYS: value, index, expiring. ARGV: key. Returns 1 if it was set.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('DEL', KEYS[1])",
    )
});

/// KEYS: index, expiring. ARGV: base, min, max, limit (`ZRANGEBYLEX`
/// bounds).
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRUNE}
prune(KEYS[1], KEYS[2], ARGV[1])
return redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))"
    ))
});

/// The store in the cluster's Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    link: RedisLink,
}

/// One app's names in Redis.
struct Names {
    /// What every value key starts with.
    base: String,
    index: String,
    expiring: String,
}

impl Names {
    fn value(&self, key: &str) -> String {
        format!("{}{key}", self.base)
    }
}

impl RedisStore {
    pub fn new(link: RedisLink) -> Self {
        Self { link }
    }

    fn names(&self, app: &str) -> Names {
        Names {
            base: self.link.app_key(app, "kv:"),
            index: self.link.app_key(app, "kvi"),
            expiring: self.link.app_key(app, "kvx"),
        }
    }

    pub async fn get(&self, app: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut get = redis::cmd("GET");
        get.arg(self.names(app).value(key));
        self.query("kv get", &get).await
    }

    pub async fn get_many(
        &self,
        app: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names = self.names(app);
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(names.value(key));
        }
        self.query("kv get-many", &mget).await
    }

    pub async fn set(
        &self,
        app: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quotas: Quotas,
    ) -> Result<(), KvError> {
        let names = self.names(app);
        // At least 1 ms: `PX 0` is an error, and a TTL under a millisecond
        // has expired by the time anyone reads it anyway.
        let ttl = ttl.map_or(String::new(), |ttl| ttl.as_millis().max(1).to_string());
        let mut call = SET.prepare_invoke();
        call.key(names.value(key))
            .key(&names.index)
            .key(&names.expiring)
            .arg(&names.base)
            .arg(key)
            .arg(value)
            .arg(ttl)
            .arg(quotas.max_keys);
        let mut conn = self.link.commands();
        let stored: i64 = self.answer("kv set", call.invoke_async(&mut conn)).await?;
        match stored {
            1 => Ok(()),
            _ => Err(over_keys(quotas)),
        }
    }

    pub async fn delete(&self, app: &str, key: &str) -> Result<bool, KvError> {
        let names = self.names(app);
        let mut call = DELETE.prepare_invoke();
        call.key(names.value(key))
            .key(&names.index)
            .key(&names.expiring)
            .arg(key);
        let mut conn = self.link.commands();
        let deleted: i64 = self
            .answer("kv delete", call.invoke_async(&mut conn))
            .await?;
        Ok(deleted > 0)
    }

    pub async fn increment(
        &self,
        app: &str,
        key: &str,
        delta: i64,
        quotas: Quotas,
    ) -> Result<i64, KvError> {
        let names = self.names(app);
        let mut call = INCREMENT.prepare_invoke();
        call.key(names.value(key))
            .key(&names.index)
            .key(&names.expiring)
            .arg(&names.base)
            .arg(key)
            .arg(delta)
            .arg(quotas.max_keys);
        let mut conn = self.link.commands();
        let answer: redis::Value = self
            .answer("kv increment", call.invoke_async(&mut conn))
            .await?;
        let parts: Vec<redis::Value> = redis::from_redis_value(answer).map_err(odd)?;
        match parts.as_slice() {
            [redis::Value::Int(1), redis::Value::Int(new)] => Ok(*new),
            [redis::Value::Int(0)] => Err(over_keys(quotas)),
            [redis::Value::Int(2), why] => {
                let why: String = redis::from_redis_value(why.clone()).unwrap_or_default();
                Err(KvError::Invalid(format!("`{key}`: {why}")))
            }
            other => Err(odd(format!("unexpected answer {other:?}"))),
        }
    }

    pub async fn list_keys(
        &self,
        app: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        let names = self.names(app);
        let min = match after {
            Some(after) if after >= prefix => format!("({after}"),
            _ => format!("[{prefix}"),
        };
        // 0xFF sorts after every byte of UTF-8 text: the last key with
        // the prefix is below it.
        let max: Vec<u8> = match prefix {
            "" => b"+".to_vec(),
            _ => [b"[", prefix.as_bytes(), b"\xff"].concat(),
        };
        let mut call = LIST.prepare_invoke();
        call.key(&names.index)
            .key(&names.expiring)
            .arg(&names.base)
            .arg(min)
            .arg(max)
            .arg(limit);
        let mut conn = self.link.commands();
        self.answer("kv list-keys", call.invoke_async(&mut conn))
            .await
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        command: &redis::Cmd,
    ) -> Result<T, KvError> {
        let mut conn = self.link.commands();
        self.answer(what, command.query_async(&mut conn)).await
    }

    /// A call through the link (its timeout and health), its failure as
    /// the guest sees it.
    async fn answer<T>(
        &self,
        what: &str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, KvError> {
        self.link.call(what, call).await.ok_or_else(|| {
            let why = self.link.problem().unwrap_or_else(|| "no answer".into());
            KvError::Unavailable(format!("redis: {why}"))
        })
    }
}

fn over_keys(quotas: Quotas) -> KvError {
    KvError::Quota(format!(
        "the app holds {} keys, its limit (limits.kv_max_keys)",
        quotas.max_keys
    ))
}

fn odd(error: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("redis: {error}"))
}
