//! Topic patterns (`ping`, `room:*`) and the per-app table that maps a topic
//! to its plugin. An exact pattern wins over a prefix; among prefixes, the
//! longest wins.

use std::sync::Arc;

use crate::runtime::PluginSlot;

/// A topic pattern from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Matches one topic.
    Exact(String),
    /// `prefix*`: matches every topic that starts with the prefix.
    Prefix(String),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PatternError {
    #[error("a topic pattern cannot be empty")]
    Empty,
    #[error("`*` may only end a pattern (as in `room:*`)")]
    StarInside,
}

impl TopicPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        match pattern.find('*') {
            None => Ok(Self::Exact(pattern.to_owned())),
            Some(i) if i == pattern.len() - 1 => Ok(Self::Prefix(pattern[..i].to_owned())),
            Some(_) => Err(PatternError::StarInside),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == topic,
            Self::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

/// One app's routes, in match order.
#[derive(Default)]
pub struct Router {
    routes: Vec<(TopicPattern, Arc<PluginSlot>)>,
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = (TopicPattern, Arc<PluginSlot>)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        // Exact patterns first, then longer prefixes before shorter ones.
        routes.sort_by_key(|(pattern, _)| match pattern {
            TopicPattern::Exact(_) => (0, 0),
            TopicPattern::Prefix(p) => (1, usize::MAX - p.len()),
        });
        Self { routes }
    }

    /// Every route's slot (a slot serving several patterns appears once per pattern).
    pub fn slots(&self) -> impl Iterator<Item = &Arc<PluginSlot>> {
        self.routes.iter().map(|(_, slot)| slot)
    }

    /// The plugin slot serving `topic`, if any route matches.
    pub fn route(&self, topic: &str) -> Option<&Arc<PluginSlot>> {
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, slot)| slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_and_prefix_patterns() {
        assert_eq!(
            TopicPattern::parse("ping"),
            Ok(TopicPattern::Exact("ping".into()))
        );
        assert_eq!(
            TopicPattern::parse("room:*"),
            Ok(TopicPattern::Prefix("room:".into()))
        );
        assert_eq!(
            TopicPattern::parse("*"),
            Ok(TopicPattern::Prefix(String::new()))
        );
        assert_eq!(
            TopicPattern::parse("ping:*a"),
            Err(PatternError::StarInside)
        );
        assert_eq!(TopicPattern::parse("a**"), Err(PatternError::StarInside));
        assert_eq!(TopicPattern::parse(""), Err(PatternError::Empty));
    }

    #[test]
    fn matches_topics() {
        let room = TopicPattern::parse("room:*").unwrap();
        assert!(room.matches("room:lobby"));
        assert!(room.matches("room:"));
        assert!(!room.matches("rooms"));
        let ping = TopicPattern::parse("ping").unwrap();
        assert!(ping.matches("ping"));
        assert!(!ping.matches("ping:1"));
    }
}
