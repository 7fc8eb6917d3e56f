//! Topic patterns from the config (`ping`, `room:*`): exact topics and
//! prefixes ending in `*`. Pure data; `channel::Router` orders them and maps
//! a topic to the plugin that serves it.

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

    /// Match precedence: exact patterns first, then longer prefixes before
    /// shorter ones.
    pub fn precedence(&self) -> (u8, usize) {
        match self {
            Self::Exact(_) => (0, 0),
            Self::Prefix(p) => (1, usize::MAX - p.len()),
        }
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
