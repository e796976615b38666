//! client-go's event correlation (`EventCorrelator`), shared by the control plane's recorder
//! and the agent's, so that a hot loop cannot flood the store with Events:
//!
//! - an Event identical to an earlier one (same source, object, type, reason and message)
//!   is not written again: the earlier one's `count` goes up and its `lastTimestamp` moves
//!   (a PATCH), as client-go's `EventLogger` does;
//! - when an object gets more than [`MAX_SIMILAR`] distinct messages for the same source,
//!   type and reason within [`SIMILAR_INTERVAL`] of each other, the further ones fold into one
//!   Event whose message starts with `(combined from similar events): `, as client-go's
//!   `EventAggregator` does.
//!
//! Both tables are bounded; forgetting an entry only means the next repeat starts a new Event.
//! The caller passes the time in, so tests use a fake clock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;

/// Distinct messages per (source, object, type, reason) before they are combined
/// (client-go's `defaultAggregateMaxEvents`).
pub const MAX_SIMILAR: usize = 10;
/// How long similar messages are counted together, from the last one
/// (`defaultAggregateIntervalInSeconds`).
pub const SIMILAR_INTERVAL: Duration = Duration::from_secs(600);
/// The prefix of a combined Event's message.
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";
/// How many Events and aggregates are remembered (client-go's LRU caches hold 4 096; more
/// lets 10 000 pending pods each fold their FailedScheduling repeats).
pub const REMEMBERED: usize = 16_384;

/// What an Event is about and says; its fields are compared, never parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The reporting component and host (`kubelet/node-1`, `default-scheduler`).
    pub source: String,
    /// The involved object: namespace, kind, name, uid and fieldPath.
    pub object: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// The reason.
    pub reason: String,
}

impl Key {
    /// The key of an Event from `source` about `object`, which is identified as Kubernetes'
    /// `getEventKey` does (namespace, kind, name, uid, fieldPath).
    pub fn new(source: &str, object: &ObjectReference, type_: &str, reason: &str) -> Self {
        fn part(s: &Option<String>) -> &str {
            s.as_deref().unwrap_or_default()
        }
        Self {
            source: source.to_owned(),
            object: [
                part(&object.namespace),
                part(&object.kind),
                part(&object.name),
                part(&object.uid),
                part(&object.field_path),
            ]
            .join("/"),
            type_: type_.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// What to write for an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create a new Event with this message, then tell [`Correlator::created`] its name
    /// under `id`.
    Create {
        /// The message to write (combined or as given).
        message: String,
        /// What identifies it for later repeats.
        id: String,
    },
    /// Patch the Event `name`: this count, the message, lastTimestamp now.
    Update {
        /// The existing Event.
        name: String,
        /// Its new count.
        count: i32,
        /// Its message (a combined Event shows the latest one).
        message: String,
        /// What identifies it, for [`Correlator::forget`] if it is gone.
        id: String,
    },
}

/// Distinct messages seen recently for one [`Key`].
struct Aggregate {
    messages: HashSet<String>,
    last: Instant,
    used: u64,
}

/// The correlator's memory: see the module documentation.
#[derive(Default)]
pub struct Correlator {
    aggregates: HashMap<Key, Aggregate>,
    /// id -> (event name, count, last use)
    events: HashMap<String, (String, i32, u64)>,
    /// Advances on every use: the order in which entries were last used.
    clock: u64,
}

/// Drops the least recently used quarter of `map` when it is full.
fn trim<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, used: impl Fn(&V) -> u64) {
    if map.len() < REMEMBERED {
        return;
    }
    let mut uses: Vec<u64> = map.values().map(&used).collect();
    let cut = REMEMBERED / 4;
    uses.select_nth_unstable(cut);
    let oldest = uses[cut];
    map.retain(|_, v| used(v) > oldest);
}

impl Correlator {
    /// Decides how to record an Event with `key` and `message` at `now`.
    pub fn observe(&mut self, key: &Key, message: &str, now: Instant) -> Decision {
        self.clock += 1;
        let clock = self.clock;
        if !self.aggregates.contains_key(key) {
            trim(&mut self.aggregates, |a| a.used);
        }
        let aggregate = self
            .aggregates
            .entry(key.clone())
            .or_insert_with(|| Aggregate {
                messages: HashSet::new(),
                last: now,
                used: clock,
            });
        if now.saturating_duration_since(aggregate.last) > SIMILAR_INTERVAL {
            aggregate.messages.clear();
        }
        aggregate.last = now;
        aggregate.used = clock;
        // client-go adds the message, combines when that makes MAX_SIMILAR and then drops one
        // to stay below: nine distinct messages keep their own Events, the tenth and later
        // ones share the combined one.
        let combined = if aggregate.messages.contains(message) {
            false
        } else if aggregate.messages.len() + 1 < MAX_SIMILAR {
            aggregate.messages.insert(message.to_owned());
            false
        } else {
            true
        };
        let (id, message) = if combined {
            (format!("{key:?}"), format!("{COMBINED_PREFIX}{message}"))
        } else {
            (format!("{key:?}\u{0}{message}"), message.to_owned())
        };
        match self.events.get_mut(&id) {
            Some((name, count, used)) => {
                *count = count.saturating_add(1);
                *used = clock;
                Decision::Update {
                    name: name.clone(),
                    count: *count,
                    message,
                    id,
                }
            }
            None => Decision::Create { message, id },
        }
    }

    /// Remembers the name of the Event created for `id`.
    pub fn created(&mut self, id: String, name: String) {
        trim(&mut self.events, |(_, _, used)| *used);
        self.clock += 1;
        self.events.insert(id, (name, 1, self.clock));
    }

    /// Forgets the Event of `id` (it was deleted: TTL, namespace gone); the next repeat
    /// creates a new one.
    pub fn forget(&mut self, id: &str) {
        self.events.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reason: &str) -> Key {
        Key {
            source: "kubelet/n1".into(),
            object: "default/Pod/web/uid-1".into(),
            type_: "Warning".into(),
            reason: reason.into(),
        }
    }

    /// Observes and, for a Create, records it under a made-up name; returns the decision.
    fn record(c: &mut Correlator, key: &Key, message: &str, now: Instant) -> Decision {
        let decision = c.observe(key, message, now);
        if let Decision::Create { id, .. } = &decision {
            c.created(id.clone(), format!("event-{}", c.events.len()));
        }
        decision
    }

    #[test]
    fn repeats_patch_the_first_event() {
        let mut c = Correlator::default();
        let now = Instant::now();
        let first = record(&mut c, &key("BackOff"), "Back-off restarting", now);
        assert!(
            matches!(first, Decision::Create { ref message, .. } if message == "Back-off restarting")
        );
        for count in 2..=5 {
            assert_eq!(
                record(&mut c, &key("BackOff"), "Back-off restarting", now),
                Decision::Update {
                    name: "event-0".into(),
                    count,
                    message: "Back-off restarting".into(),
                    id: format!("{:?}\u{0}Back-off restarting", key("BackOff")),
                }
            );
        }
        // Another reason is another Event.
        assert!(matches!(
            record(&mut c, &key("Unhealthy"), "Back-off restarting", now),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn similar_events_beyond_ten_in_ten_minutes_are_combined() {
        let mut c = Correlator::default();
        let start = Instant::now();
        let k = key("Unhealthy");
        for i in 0..9 {
            let d = record(&mut c, &k, &format!("probe failed: {i}"), start);
            assert!(matches!(d, Decision::Create { ref message, .. } if !message.starts_with('(')));
        }
        let tenth = record(&mut c, &k, "probe failed: 9", start);
        assert!(
            matches!(tenth, Decision::Create { ref message, .. } if message == "(combined from similar events): probe failed: 9"),
            "{tenth:?}"
        );
        let name = match record(
            &mut c,
            &k,
            "probe failed: 10",
            start + Duration::from_secs(60),
        ) {
            Decision::Update {
                name,
                count,
                message,
                ..
            } => {
                assert_eq!(count, 2);
                assert_eq!(message, "(combined from similar events): probe failed: 10");
                name
            }
            d => panic!("{d:?}"),
        };
        assert_eq!(name, "event-9");
        // The nine first messages still fold into their own Events.
        assert!(matches!(
            record(
                &mut c,
                &k,
                "probe failed: 3",
                start + Duration::from_secs(61)
            ),
            Decision::Update { count: 2, .. }
        ));
        // After ten quiet minutes the count of similar messages starts over.
        let later = start + Duration::from_secs(61) + SIMILAR_INTERVAL + Duration::from_secs(1);
        assert!(matches!(
            record(&mut c, &k, "probe failed: 11", later),
            Decision::Create { ref message, .. } if message == "probe failed: 11"
        ));
    }

    #[test]
    fn memory_is_bounded_and_a_forgotten_event_is_created_again() {
        let mut c = Correlator::default();
        let now = Instant::now();
        for i in 0..REMEMBERED + 10 {
            let k = Key {
                object: format!("default/Pod/p{i}/uid"),
                ..key("Started")
            };
            record(&mut c, &k, "Started container", now);
        }
        assert!(c.events.len() <= REMEMBERED);
        assert!(c.aggregates.len() <= REMEMBERED);
        let k = key("Killing");
        let Decision::Create { id, .. } = record(&mut c, &k, "Stopping", now) else {
            panic!("first is a create");
        };
        c.forget(&id);
        assert!(matches!(
            c.observe(&k, "Stopping", now),
            Decision::Create { .. }
        ));
    }
}
