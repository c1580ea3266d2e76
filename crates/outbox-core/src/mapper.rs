//! Choosing a topic from an event type.

use std::collections::HashMap;

use crate::{OutboxError, validate_topic};

/// Maps an event type to its topic, so call sites need not repeat topic names.
///
/// The writer asks the mapper only for events written without a topic.
pub trait EventTypeMapper: Send + Sync {
    /// The topic for `event_type`, or `None` when the type is unknown.
    fn topic_for(&self, event_type: &str) -> Option<String>;
}

/// A fixed table of event types and topics, with an optional fallback.
///
/// ```
/// use outbox_core::{EventTypeMapper, TopicMap};
///
/// let topics = TopicMap::new()
///     .with("BatchFileAddedV1", "huleedu.file.batch.file.added.v1")?
///     .with_fallback(|event_type| Some(format!("events.{}", event_type.to_lowercase())));
/// assert_eq!(topics.topic_for("BatchFileAddedV1").as_deref(), Some("huleedu.file.batch.file.added.v1"));
/// assert_eq!(topics.topic_for("Other").as_deref(), Some("events.other"));
/// # Ok::<(), outbox_core::OutboxError>(())
/// ```
#[derive(Default)]
pub struct TopicMap {
    topics: HashMap<String, String>,
    fallback: Option<Fallback>,
}

type Fallback = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for TopicMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicMap")
            .field("topics", &self.topics)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl TopicMap {
    /// An empty map: every event must carry its topic.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `event_type` to `topic`; fails when the topic is not a legal Kafka topic name.
    pub fn with(
        mut self,
        event_type: impl Into<String>,
        topic: impl Into<String>,
    ) -> Result<Self, OutboxError> {
        let topic = topic.into();
        validate_topic(&topic)?;
        self.topics.insert(event_type.into(), topic);
        Ok(self)
    }

    /// Asks `fallback` for event types not in the table.
    pub fn with_fallback(
        mut self,
        fallback: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }
}

impl EventTypeMapper for TopicMap {
    fn topic_for(&self, event_type: &str) -> Option<String> {
        self.topics
            .get(event_type)
            .cloned()
            .or_else(|| self.fallback.as_ref().and_then(|f| f(event_type)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_wins_over_the_fallback() {
        let map = TopicMap::new()
            .with("A", "topic.a")
            .unwrap()
            .with_fallback(|_| Some("fallback".into()));
        assert_eq!(map.topic_for("A").as_deref(), Some("topic.a"));
        assert_eq!(map.topic_for("B").as_deref(), Some("fallback"));
        assert_eq!(TopicMap::new().topic_for("A"), None);
    }

    #[test]
    fn illegal_topics_are_refused() {
        assert!(TopicMap::new().with("A", "no spaces").is_err());
    }
}
