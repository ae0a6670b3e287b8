//! A one-element mailbox that keeps only the newest value: producers never wait, consumers always
//! get the freshest frame, and what was overwritten is counted as dropped.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A one-element slot holding the newest value: a writer replaces what the reader has not taken yet (and counts it as dropped), a reader waits for a value.
pub struct LatestSlot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    value: Option<T>,
    closed: bool,
    dropped: u64,
}

impl<T> Default for LatestSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> LatestSlot<T> {
    /// An empty, open slot.
    pub fn new() -> Self {
        LatestSlot {
            state: Mutex::new(State {
                value: None,
                closed: false,
                dropped: 0,
            }),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking holder cannot leave the slot half-written: keep going with its contents.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Store `value`, replacing (and counting as dropped) any value not yet taken.
    /// Returns whether one was replaced.
    pub fn put(&self, value: T) -> bool {
        let mut s = self.lock();
        let replaced = s.value.replace(value).is_some();
        if replaced {
            s.dropped += 1;
        }
        drop(s);
        self.ready.notify_one();
        replaced
    }

    /// Take the value, waiting up to `timeout` for one. `None` on timeout or once closed.
    pub fn take_timeout(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            if let Some(v) = s.value.take() {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            s = self
                .ready
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Wake every waiter and refuse further takes (shutdown).
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Values overwritten before anyone took them.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn keeps_only_the_newest_and_counts_the_rest() {
        let slot = LatestSlot::new();
        assert!(!slot.put(1));
        assert!(slot.put(2));
        assert!(slot.put(3));
        assert_eq!(slot.dropped(), 2);
        assert_eq!(slot.take_timeout(Duration::ZERO), Some(3));
        assert_eq!(slot.take_timeout(Duration::from_millis(10)), None);
        assert_eq!(slot.dropped(), 2);
    }

    #[test]
    fn a_waiting_consumer_wakes_on_put_and_on_close() {
        let slot = Arc::new(LatestSlot::new());
        let s2 = slot.clone();
        let t = std::thread::spawn(move || s2.take_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        slot.put(7);
        assert_eq!(t.join().unwrap(), Some(7));
        let s3 = slot.clone();
        let t = std::thread::spawn(move || s3.take_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        slot.close();
        assert_eq!(t.join().unwrap(), None::<i32>);
    }
}
