//! Channels: which plugin serves a topic. An app's [`Router`] holds its
//! routes (topic pattern → plugin slot) in match order: an exact pattern wins
//! over a prefix, and a longer prefix over a shorter one.
//!
//! A joined channel itself is plain data owned by its socket
//! (`socket::session`); this module only decides who serves it.

use std::sync::Arc;

use crate::protocol::TopicPattern;
use crate::runtime::PluginSlot;

/// One app's routes, in match order.
#[derive(Default)]
pub struct Router {
    routes: Vec<(TopicPattern, Arc<PluginSlot>)>,
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = (TopicPattern, Arc<PluginSlot>)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by_key(|(pattern, _)| pattern.precedence());
        Self { routes }
    }

    /// Every distinct slot (a slot serving several patterns appears once).
    pub fn slots(&self) -> impl Iterator<Item = &Arc<PluginSlot>> {
        self.routes
            .iter()
            .enumerate()
            .filter(|(i, (_, slot))| {
                !self.routes[..*i]
                    .iter()
                    .any(|(_, earlier)| Arc::ptr_eq(earlier, slot))
            })
            .map(|(_, (_, slot))| slot)
    }

    /// The plugin slot serving `topic`, if any route matches.
    pub fn route(&self, topic: &str) -> Option<&Arc<PluginSlot>> {
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, slot)| slot)
    }
}
