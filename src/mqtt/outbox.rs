//! The bridge's outbox (pure): what waits to be handed to the MQTT client, bounded whatever the
//! broker does. Retained state is coalesced by topic (a newer payload replaces one not yet sent, so
//! a plugin flapping while the broker is away costs one message per topic, not one per change);
//! events and plugin messages are queued in order up to a limit per plugin and in all. An event
//! that does not fit is dropped and counted; a plugin's message that does not fit is refused (the
//! plugin is answered `busy`). Retained state goes first: it is what a subscriber must end up with.

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Events queued at most.
pub(crate) const MAX_QUEUED_EVENTS: usize = 256;
/// Events of one plugin queued at most (a flood from one cannot push out the others').
pub(crate) const MAX_QUEUED_EVENTS_PER_PLUGIN: usize = 32;
/// Plugin messages (a plugin's own publishes) queued at most.
pub(crate) const MAX_QUEUED_PLUGIN_MESSAGES: usize = 256;
/// One plugin's messages queued at most.
pub(crate) const MAX_QUEUED_MESSAGES_PER_PLUGIN: usize = 64;
/// Retained topics held at most (the host's own: a few per plugin; past it a new topic is
/// dropped, a known one still replaced).
pub(crate) const MAX_RETAINED_TOPICS: usize = 4096;

/// One message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The absolute topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Published retained.
    pub retain: bool,
    /// QoS 0, 1 (or 2).
    pub qos: u8,
}

/// A message taken from the outbox, and where it came from (to put it back).
#[derive(Debug)]
pub(crate) struct Popped {
    /// The message.
    pub message: Message,
    /// Its queue.
    pub from: From,
}

/// Which queue a [`Popped`] message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum From {
    /// Retained state.
    Retained,
    /// An event of this plugin (or `host`).
    Event(String),
    /// A message this plugin published.
    PluginMessage(String),
}

/// A queued message and whose it is (for the per-plugin limits).
#[derive(Debug)]
struct Queued {
    owner: String,
    message: Message,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    retained: BTreeMap<String, Vec<u8>>,
    events: VecDeque<Queued>,
    plugin_messages: VecDeque<Queued>,
    queued_per_owner: HashMap<(bool, String), usize>,
    dropped: u64,
}

impl Outbox {
    /// An empty outbox.
    pub(crate) fn new() -> Outbox {
        Outbox::default()
    }

    /// Queue `payload` for retained `topic`, replacing one not yet sent. `false`: dropped (too
    /// many distinct topics).
    pub(crate) fn put_retained(&mut self, topic: String, payload: Vec<u8>) -> bool {
        if self.retained.len() >= MAX_RETAINED_TOPICS && !self.retained.contains_key(&topic) {
            self.dropped += 1;
            return false;
        }
        self.retained.insert(topic, payload);
        true
    }

    /// Queue an event of `owner` (a plugin id or `host`). `false`: dropped (a limit was reached).
    pub(crate) fn push_event(&mut self, owner: &str, message: Message) -> bool {
        self.push(false, owner, message)
    }

    /// Queue a plugin's own message. `false`: refused (a limit was reached); not counted as
    /// dropped, since the plugin is told (`busy`) and may try again.
    pub(crate) fn push_plugin_message(&mut self, owner: &str, message: Message) -> bool {
        self.push(true, owner, message)
    }

    fn push(&mut self, plugin_message: bool, owner: &str, message: Message) -> bool {
        let (queue, max, max_per_owner) = if plugin_message {
            (
                &mut self.plugin_messages,
                MAX_QUEUED_PLUGIN_MESSAGES,
                MAX_QUEUED_MESSAGES_PER_PLUGIN,
            )
        } else {
            (
                &mut self.events,
                MAX_QUEUED_EVENTS,
                MAX_QUEUED_EVENTS_PER_PLUGIN,
            )
        };
        let count = self
            .queued_per_owner
            .entry((plugin_message, owner.to_string()))
            .or_default();
        if queue.len() >= max || *count >= max_per_owner {
            if !plugin_message {
                self.dropped += 1;
            }
            return false;
        }
        *count += 1;
        queue.push_back(Queued {
            owner: owner.to_string(),
            message,
        });
        true
    }

    /// The next message: retained state first (in topic order), then events and plugin messages,
    /// taking turns so neither starves the other.
    pub(crate) fn pop(&mut self) -> Option<Popped> {
        if let Some((topic, payload)) = self.retained.pop_first() {
            return Some(Popped {
                message: Message {
                    topic,
                    payload,
                    retain: true,
                    qos: 1,
                },
                from: From::Retained,
            });
        }
        let take_plugin = self.events.is_empty()
            || (!self.plugin_messages.is_empty() && self.events.len() < self.plugin_messages.len());
        let queue = if take_plugin {
            &mut self.plugin_messages
        } else {
            &mut self.events
        };
        let q = queue.pop_front()?;
        let key = (take_plugin, q.owner);
        if let Some(n) = self.queued_per_owner.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.queued_per_owner.remove(&key);
            }
        }
        let (plugin_message, owner) = key;
        Some(Popped {
            message: q.message,
            from: if plugin_message {
                From::PluginMessage(owner)
            } else {
                From::Event(owner)
            },
        })
    }

    /// Put back what [`Outbox::pop`] gave when the client could not take it (its queue was full):
    /// first in line again, unless a newer payload for its retained topic came meanwhile.
    pub(crate) fn unpop(&mut self, popped: Popped) {
        let Popped { message, from } = popped;
        let (plugin_message, owner) = match from {
            From::Retained => {
                self.retained
                    .entry(message.topic)
                    .or_insert(message.payload);
                return;
            }
            From::Event(owner) => (false, owner),
            From::PluginMessage(owner) => (true, owner),
        };
        *self
            .queued_per_owner
            .entry((plugin_message, owner.clone()))
            .or_default() += 1;
        let queue = if plugin_message {
            &mut self.plugin_messages
        } else {
            &mut self.events
        };
        queue.push_front(Queued { owner, message });
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.retained.is_empty() && self.events.is_empty() && self.plugin_messages.is_empty()
    }

    /// Messages dropped since the start.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Count `n` messages lost before they reached the outbox (the event feed lagged).
    pub(crate) fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Messages waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.retained.len() + self.events.len() + self.plugin_messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &str) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.as_bytes().to_vec(),
            retain: false,
            qos: 1,
        }
    }

    #[test]
    fn retained_state_is_coalesced_by_topic_and_goes_first() {
        let mut o = Outbox::new();
        assert!(o.push_event("a", msg("ev", "1")));
        o.put_retained("p/a/state".into(), b"starting".to_vec());
        o.put_retained("p/a/state".into(), b"ready".to_vec());
        o.put_retained("p/b/state".into(), b"ready".to_vec());
        let first = o.pop().unwrap().message;
        assert_eq!(
            (first.topic.as_str(), first.payload.as_slice()),
            ("p/a/state", &b"ready"[..])
        );
        assert!(first.retain);
        assert_eq!(o.pop().unwrap().message.topic, "p/b/state");
        assert_eq!(o.pop().unwrap().message.topic, "ev");
        assert!(o.pop().is_none());
        assert!(o.is_empty());
        assert_eq!(o.dropped(), 0);
    }

    #[test]
    fn a_flooding_plugin_is_capped_and_its_drops_counted() {
        let mut o = Outbox::new();
        for i in 0..MAX_QUEUED_EVENTS_PER_PLUGIN + 10 {
            o.push_event("noisy", msg("ev", &i.to_string()));
        }
        assert!(o.push_event("quiet", msg("ev", "q")));
        assert_eq!(o.dropped(), 10);
        assert_eq!(o.len(), MAX_QUEUED_EVENTS_PER_PLUGIN + 1);
        // Draining frees the plugin's share again.
        while o.pop().is_some() {}
        assert!(o.push_event("noisy", msg("ev", "again")));
        // The overall bound holds across many plugins.
        let mut o = Outbox::new();
        for i in 0..MAX_QUEUED_EVENTS + 5 {
            o.push_event(&format!("p{i}"), msg("ev", "x"));
        }
        assert_eq!(o.len(), MAX_QUEUED_EVENTS);
        assert_eq!(o.dropped(), 5);
    }

    #[test]
    fn an_unpopped_message_is_first_again_unless_newer_state_came() {
        let mut o = Outbox::new();
        o.push_event("a", msg("e1", "1"));
        o.push_event("a", msg("e2", "2"));
        let m = o.pop().unwrap();
        assert_eq!(m.from, From::Event("a".into()));
        o.unpop(m);
        assert_eq!(o.pop().unwrap().message.topic, "e1");
        o.put_retained("s".into(), b"old".to_vec());
        let m = o.pop().unwrap();
        o.put_retained("s".into(), b"new".to_vec());
        o.unpop(m);
        assert_eq!(o.pop().unwrap().message.payload, b"new");
    }

    #[test]
    fn a_plugins_refused_message_is_not_counted_as_dropped() {
        let mut o = Outbox::new();
        for _ in 0..MAX_QUEUED_MESSAGES_PER_PLUGIN {
            assert!(o.push_plugin_message("p", msg("t", "x")));
        }
        assert!(
            !o.push_plugin_message("p", msg("t", "x")),
            "refused: the plugin hears busy"
        );
        assert_eq!(o.dropped(), 0);
    }

    #[test]
    fn plugin_messages_and_events_take_turns() {
        let mut o = Outbox::new();
        for i in 0..3 {
            o.push_event("a", msg("ev", &i.to_string()));
            o.push_plugin_message("a", msg("pm", &i.to_string()));
        }
        let topics: Vec<String> = std::iter::from_fn(|| o.pop())
            .map(|m| m.message.topic)
            .collect();
        assert_eq!(topics.iter().filter(|t| *t == "ev").count(), 3);
        assert_eq!(topics.iter().filter(|t| *t == "pm").count(), 3);
        assert_ne!(topics[..3], ["ev", "ev", "ev"]);
    }
}
