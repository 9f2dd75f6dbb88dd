//! Bounded in-memory de-duplication of inbound messages.
//!
//! A QoS 1 message can arrive twice: the broker redelivers what was not acknowledged before a
//! reconnect, and a backend may re-send a run schedule after its own restart. The link hands a
//! message to the handler once per key ([`crate::protocol::Message::dedup_key`]: worker, run
//! id, stage and attempt for schedules, envelope id otherwise) and acknowledges later copies
//! itself.
//!
//! This is a convenience, not the guarantee: it is bounded and it forgets on restart. The
//! durable guarantee is the controller's deterministic Pod name
//! (`<run>-<stage>-<attempt>`): creating it twice fails with AlreadyExists.

use std::collections::{HashMap, VecDeque};

/// What the link should do with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First sighting: hand it to the handler.
    New,
    /// Already handled and acknowledged: acknowledge this copy and drop it.
    AlreadyDone,
    /// The handler has the first copy and has not acknowledged it yet: this copy is kept and
    /// acknowledged together with the first.
    Parked,
}

enum Entry<T> {
    InFlight(Vec<T>),
    Done,
}

/// Keys of handled messages (at most `capacity`, oldest forgotten first) and of messages the
/// handler is working on (not bounded: limited by the broker's receive maximum).
pub struct Dedup<T> {
    capacity: usize,
    entries: HashMap<String, Entry<T>>,
    done_order: VecDeque<String>,
}

impl<T> Dedup<T> {
    /// Remembers up to `capacity` handled keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            done_order: VecDeque::new(),
        }
    }

    /// Records an arrival of `key`; `copy` is kept when the verdict is [`Verdict::Parked`].
    pub fn arrive(&mut self, key: &str, copy: T) -> Verdict {
        match self.entries.get_mut(key) {
            None => {
                self.entries
                    .insert(key.to_string(), Entry::InFlight(Vec::new()));
                Verdict::New
            }
            Some(Entry::Done) => Verdict::AlreadyDone,
            Some(Entry::InFlight(parked)) => {
                parked.push(copy);
                Verdict::Parked
            }
        }
    }

    /// The handler acknowledged `key`: remember it as done and return the parked copies, which
    /// must be acknowledged too.
    pub fn complete(&mut self, key: &str) -> Vec<T> {
        let parked = match self.entries.insert(key.to_string(), Entry::Done) {
            Some(Entry::InFlight(parked)) => parked,
            Some(Entry::Done) => return Vec::new(),
            None => Vec::new(),
        };
        self.done_order.push_back(key.to_string());
        while self.done_order.len() > self.capacity {
            if let Some(old) = self.done_order.pop_front() {
                self.entries.remove(&old);
            }
        }
        parked
    }

    /// The handler gave up on `key` without acknowledging: forget it, so that the broker's
    /// redelivery (after the next reconnect) reaches the handler again. Parked copies stay
    /// unacknowledged and are redelivered the same way.
    pub fn abandon(&mut self, key: &str) {
        if let Some(Entry::InFlight(_)) = self.entries.get(key) {
            self.entries.remove(key);
        }
    }

    /// Handled keys remembered.
    #[cfg(test)]
    pub fn done_len(&self) -> usize {
        self.done_order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_reaches_the_handler_once() {
        let mut dedup = Dedup::new(10);
        assert_eq!(dedup.arrive("run/A/preparing/1", 1), Verdict::New);
        assert_eq!(dedup.arrive("run/A/preparing/1", 2), Verdict::Parked);
        assert_eq!(dedup.arrive("run/A/preparing/1", 3), Verdict::Parked);
        assert_eq!(dedup.complete("run/A/preparing/1"), vec![2, 3]);
        assert_eq!(dedup.arrive("run/A/preparing/1", 4), Verdict::AlreadyDone);
        assert_eq!(dedup.arrive("run/A/preparing/2", 5), Verdict::New);
    }

    #[test]
    fn an_abandoned_message_is_handled_again() {
        let mut dedup = Dedup::new(10);
        assert_eq!(dedup.arrive("k", 1), Verdict::New);
        dedup.abandon("k");
        assert_eq!(dedup.arrive("k", 2), Verdict::New);
        // Abandoning something already done changes nothing.
        dedup.complete("k");
        dedup.abandon("k");
        assert_eq!(dedup.arrive("k", 3), Verdict::AlreadyDone);
    }

    #[test]
    fn memory_is_bounded_oldest_first() {
        let mut dedup = Dedup::new(3);
        for key in ["a", "b", "c", "d"] {
            assert_eq!(dedup.arrive(key, ()), Verdict::New);
            dedup.complete(key);
        }
        assert_eq!(dedup.done_len(), 3);
        assert_eq!(dedup.arrive("a", ()), Verdict::New, "a was forgotten");
        assert_eq!(dedup.arrive("d", ()), Verdict::AlreadyDone);
    }
}
