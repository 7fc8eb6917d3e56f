//! Cranelift's incremental cache: compiled functions kept in memory by the
//! hash of their code, so that compiling a new build of a plugin compiles
//! only the functions that changed.
//!
//! A plugin's new build mostly shares its functions with the last one: a
//! JS plugin's component is the QuickJS engine, unchanged, plus the
//! script's snapshot in a data segment, and a Rust plugin's is its
//! dependencies' code plus its own. Measured on the JS room chat (1.8 MB,
//! see README "roost dev"): a hot reload's compile goes from ~2.1 s to
//! ~0.3 s. The on-disk cache (`server.cache_dir`) is by whole file: it
//! helps a restart, not a new build.
//!
//! Bounded: past [`MAX_BYTES`] the cache starts over (the functions of the
//! builds since are the likely ones to come again). Used by `runtime/mod.rs`
//! when it makes the engine.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

/// Memory the cache may hold. The sample config's plugins (three Rust, one
/// JS) take ~6 MiB; each new build of the JS room chat adds ~0.3 MiB.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Implements wasmtime's `CacheStore`.
#[derive(Debug, Default)]
pub struct FunctionCache {
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        // Owned: the entry cannot be borrowed past the lock. Copying a
        // compiled function is cheap next to compiling it.
        self.lock().map.get(key).cloned().map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if size > MAX_BYTES {
            return false;
        }
        let mut entries = self.lock();
        if entries.bytes + size > MAX_BYTES {
            entries.map.clear();
            entries.bytes = 0;
        }
        entries.bytes += size;
        if let Some(old) = entries.map.insert(key.to_vec(), value) {
            entries.bytes -= key.len() + old.len();
        }
        true
    }
}

impl FunctionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Single-step updates: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore;

    #[test]
    fn entries_come_back_and_the_cache_starts_over_when_full() {
        let cache = FunctionCache::default();
        assert!(cache.get(b"a").is_none());
        assert!(cache.insert(b"a", vec![1; 10]));
        assert!(cache.insert(b"a", vec![2; 10]));
        assert_eq!(cache.get(b"a").as_deref(), Some(&[2u8; 10][..]));
        assert_eq!(cache.lock().bytes, 11);
        assert!(cache.insert(b"b", vec![0; MAX_BYTES - 20]));
        assert!(cache.insert(b"c", vec![0; 100]));
        assert!(cache.get(b"a").is_none(), "started over");
        assert!(cache.get(b"c").is_some());
        assert!(!cache.insert(b"d", vec![0; MAX_BYTES]));
    }
}
