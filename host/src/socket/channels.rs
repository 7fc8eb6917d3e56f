//! A socket's joined channels by topic. Most sockets join one or a few
//! (at most `limits.channels_per_socket`), so a vector searched by topic,
//! grown one place at a time: a socket with one channel holds one entry's
//! bytes, not a hash table's four buckets (~400 bytes more per connection,
//! for its whole life).

/// Entries by topic, in the order they were joined.
#[derive(Debug)]
pub struct Channels<T> {
    entries: Vec<(String, T)>,
}

impl<T> Default for Channels<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T> Channels<T> {
    pub fn get(&self, topic: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, topic: &str) -> Option<&mut T> {
        self.entries
            .iter_mut()
            .find(|(t, _)| t == topic)
            .map(|(_, v)| v)
    }

    /// Adds or replaces the entry of `topic`.
    pub fn insert(&mut self, topic: String, value: T) {
        match self.get_mut(&topic) {
            Some(slot) => *slot = value,
            None => {
                self.entries.reserve_exact(1);
                self.entries.push((topic, value));
            }
        }
    }

    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let at = self.entries.iter().position(|(t, _)| t == topic)?;
        let (_, value) = self.entries.swap_remove(at);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
        Some(value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(t, _)| t)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.entries.iter().map(|(t, v)| (t, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_remove_takes() {
        let mut channels = Channels::default();
        channels.insert("a".to_owned(), 1);
        channels.insert("b".to_owned(), 2);
        channels.insert("a".to_owned(), 3);
        assert_eq!(channels.len(), 2);
        assert_eq!(channels.get("a"), Some(&3));
        assert_eq!(channels.remove("a"), Some(3));
        assert_eq!(channels.get("a"), None);
        assert_eq!(channels.keys().collect::<Vec<_>>(), ["b"]);
    }
}
