//! Where a join made over HTTP meets the WebSocket that carries the rest of its session.
//!
//! A client can join with one `POST /join` (the offer in, the answer out) while it opens the
//! signaling WebSocket at the same time: that takes the WebSocket's handshakes off the
//! critical path of a join (`docs/protocol.md`, "Joining over HTTP"). Both requests name the
//! same session key, chosen by the client, and either may arrive first: the join offers its
//! session under the key, the socket claims it, waiting a while if the join is still on its
//! way. Keys are single use.
//!
//! Generic over what is handed over, so the hand-over itself is tested here without sockets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::oneshot;

/// The shortest and longest session key: at least 128 bits of a URL-safe alphabet.
pub const SESSION_KEY_LEN: std::ops::RangeInclusive<usize> = 22..=64;

/// Checks a client-chosen session key: 22 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_session_key(key: &str) -> bool {
    SESSION_KEY_LEN.contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

enum Slot<T> {
    /// Offered and not claimed yet; the ticket tells this offer from a later one.
    Ready(u64, T),
    /// A claimer waits for the offer.
    Awaited(u64, oneshot::Sender<T>),
}

/// Session keys to what was offered under them, or to who waits for it.
pub struct Rendezvous<T> {
    slots: Mutex<HashMap<String, Slot<T>>>,
    next_ticket: Mutex<u64>,
}

impl<T> Default for Rendezvous<T> {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            next_ticket: Mutex::new(1),
        }
    }
}

/// Why an offer was refused.
#[derive(Debug)]
pub struct KeyInUse<T>(pub T);

/// Removes a claimer's slot if the claim is given up before the offer came (the socket
/// closed, or the wait ran out), so that keys nobody waits for do not pile up.
struct ClaimGuard<'a, T> {
    rendezvous: &'a Rendezvous<T>,
    key: &'a str,
    ticket: u64,
}

impl<T> Drop for ClaimGuard<'_, T> {
    fn drop(&mut self) {
        let mut slots = self.rendezvous.lock();
        if matches!(slots.get(self.key), Some(Slot::Awaited(t, _)) if *t == self.ticket) {
            slots.remove(self.key);
        }
    }
}

impl<T> Rendezvous<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot<T>>> {
        // A panic while holding the lock leaves the map consistent (every change is one
        // insert or remove), so a poisoned lock is still usable.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ticket(&self) -> u64 {
        let mut next = self.next_ticket.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = *next;
        *next += 1;
        ticket
    }

    /// Hands `value` to the claimer of `key`, at once if one waits, else when it comes.
    /// Returns the offer's ticket (for [`Rendezvous::withdraw`]), or the value back if
    /// something is already offered under `key`.
    pub fn offer(&self, key: &str, value: T) -> Result<u64, KeyInUse<T>> {
        let ticket = self.ticket();
        let mut slots = self.lock();
        match slots.remove(key) {
            Some(Slot::Awaited(_, waiter)) => match waiter.send(value) {
                Ok(()) => Ok(ticket),
                // The claimer gave up between its last check and now: keep the value for
                // the next claimer or for withdrawal.
                Err(value) => {
                    slots.insert(key.to_owned(), Slot::Ready(ticket, value));
                    Ok(ticket)
                }
            },
            Some(ready @ Slot::Ready(..)) => {
                slots.insert(key.to_owned(), ready);
                Err(KeyInUse(value))
            }
            None => {
                slots.insert(key.to_owned(), Slot::Ready(ticket, value));
                Ok(ticket)
            }
        }
    }

    /// Takes what is offered under `key`, waiting up to `wait` for it. `None` if nothing
    /// came in time, or if another claimer already waits for the same key.
    pub async fn claim(&self, key: &str, wait: Duration) -> Option<T> {
        let ticket = self.ticket();
        let mut arrival = {
            let mut slots = self.lock();
            match slots.remove(key) {
                Some(Slot::Ready(_, value)) => return Some(value),
                Some(awaited @ Slot::Awaited(..)) => {
                    slots.insert(key.to_owned(), awaited);
                    return None;
                }
                None => {
                    let (tx, rx) = oneshot::channel();
                    slots.insert(key.to_owned(), Slot::Awaited(ticket, tx));
                    rx
                }
            }
        };
        let guard = ClaimGuard {
            rendezvous: self,
            key,
            ticket,
        };
        match tokio::time::timeout(wait, &mut arrival).await {
            Ok(Ok(value)) => Some(value),
            _ => {
                // Dropping the guard takes the slot out under the lock; an offer that got
                // in first has already sent its value, which is then ours.
                drop(guard);
                arrival.try_recv().ok()
            }
        }
    }

    /// Takes back what `offer` returned `ticket` for, if nobody has claimed it.
    pub fn withdraw(&self, key: &str, ticket: u64) -> Option<T> {
        let mut slots = self.lock();
        if matches!(slots.get(key), Some(Slot::Ready(t, _)) if *t == ticket) {
            match slots.remove(key) {
                Some(Slot::Ready(_, value)) => Some(value),
                _ => None,
            }
        } else {
            None
        }
    }

    /// Whether something is offered under `key` and not yet claimed.
    pub fn is_offered(&self, key: &str) -> bool {
        matches!(self.lock().get(key), Some(Slot::Ready(..)))
    }

    /// How many keys are offered or awaited (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const KEY: &str = "k0123456789abcdefghijk";
    const LONG: Duration = Duration::from_secs(5);

    /// A claim of `KEY` in a task of its own, returned once it waits.
    async fn waiting_claimer(r: &Arc<Rendezvous<i32>>) -> tokio::task::JoinHandle<Option<i32>> {
        let claimer = tokio::spawn({
            let r = r.clone();
            async move { r.claim(KEY, LONG).await }
        });
        while r.is_empty() {
            tokio::task::yield_now().await;
        }
        claimer
    }

    #[test]
    fn keys_are_long_and_url_safe() {
        assert!(valid_session_key(KEY));
        assert!(valid_session_key(&"a".repeat(64)));
        assert!(!valid_session_key("short"));
        assert!(!valid_session_key(&"a".repeat(65)));
        assert!(!valid_session_key("k0123456789abcdefghij/"));
        assert!(!valid_session_key("k0123456789abcdefghij%20"));
    }

    #[tokio::test]
    async fn an_offer_waits_for_its_claimer() {
        let r = Rendezvous::default();
        r.offer(KEY, 7).unwrap();
        assert_eq!(r.claim(KEY, LONG).await, Some(7));
        assert!(r.is_empty(), "keys are single use");
        assert_eq!(r.claim(KEY, Duration::from_millis(1)).await, None);
    }

    #[tokio::test]
    async fn a_claimer_waits_for_its_offer() {
        let r = Arc::new(Rendezvous::default());
        let claimer = waiting_claimer(&r).await;
        r.offer(KEY, 7).unwrap();
        assert_eq!(claimer.await.unwrap(), Some(7));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn a_second_offer_under_a_key_is_refused() {
        let r = Rendezvous::default();
        r.offer(KEY, 1).unwrap();
        assert_eq!(r.offer(KEY, 2).unwrap_err().0, 2);
        assert_eq!(r.claim(KEY, LONG).await, Some(1));
    }

    #[tokio::test]
    async fn a_second_claimer_of_a_key_gets_nothing() {
        let r = Arc::new(Rendezvous::default());
        let first = waiting_claimer(&r).await;
        assert_eq!(r.claim(KEY, LONG).await, None);
        r.offer(KEY, 3).unwrap();
        assert_eq!(first.await.unwrap(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_that_times_out_leaves_nothing_behind_and_a_late_offer_can_be_withdrawn() {
        let r = Rendezvous::default();
        assert_eq!(r.claim(KEY, Duration::from_secs(1)).await, None);
        assert!(r.is_empty());
        let ticket = r.offer(KEY, 9).unwrap();
        assert_eq!(r.withdraw(KEY, ticket + 1), None, "another offer's ticket");
        assert_eq!(r.withdraw(KEY, ticket), Some(9));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn an_abandoned_claim_frees_its_key_and_the_offer_is_kept() {
        let r = Arc::new(Rendezvous::default());
        let claimer = waiting_claimer(&r).await;
        claimer.abort();
        let _ = claimer.await;
        assert!(r.is_empty(), "the aborted claim's slot is gone");
        let ticket = r.offer(KEY, 4).unwrap();
        assert_eq!(r.withdraw(KEY, ticket), Some(4));
    }
}
