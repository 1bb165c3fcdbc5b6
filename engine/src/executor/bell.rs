//! Per-host signals that a command was queued for the host's agent, so that an idle agent's heartbeat can be held
//! open until there is work for it (a long poll) instead of the command waiting for the next heartbeat.
//!
//! A bell exists only while someone waits on it: the last waiter's [`Waiter`] removes it, so the map is as small
//! as the number of held heartbeats, and a ring for a host nobody waits for costs one lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The hosts whose agents wait for a command, each with the signal that ends the wait and its number of waiters.
#[derive(Debug, Default)]
pub struct CommandBells {
    bells: Mutex<HashMap<i64, (Arc<Notify>, usize)>>,
}

/// One wait on a host's bell; dropping it (the wait ended or was abandoned) forgets the bell with its last waiter.
#[derive(Debug)]
pub struct Waiter<'a> {
    bells: &'a CommandBells,
    host_id: i64,
    bell: Arc<Notify>,
}

impl Waiter<'_> {
    /// The bell to wait on. Create the `notified()` future and `enable()` it *before* looking for a queued
    /// command, so that a command queued between the look and the wait still ends the wait.
    pub fn bell(&self) -> &Notify {
        &self.bell
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut bells = self.bells.bells.lock().expect("bells lock");
        if let Some((_, n)) = bells.get_mut(&self.host_id) {
            *n -= 1;
            if *n == 0 {
                bells.remove(&self.host_id);
            }
        }
    }
}

impl CommandBells {
    /// Starts waiting on one host's bell.
    pub fn wait_for(&self, host_id: i64) -> Waiter<'_> {
        let mut bells = self.bells.lock().expect("bells lock");
        let (bell, n) = bells.entry(host_id).or_insert_with(|| (Arc::new(Notify::new()), 0));
        *n += 1;
        Waiter {
            bells: self,
            host_id,
            bell: bell.clone(),
        }
    }

    /// Ends every wait on this host's bell (a command was queued for its agent).
    pub fn ring(&self, host_id: i64) {
        let bell = self
            .bells
            .lock()
            .expect("bells lock")
            .get(&host_id)
            .map(|(b, _)| b.clone());
        if let Some(b) = bell {
            b.notify_waiters();
        }
    }

    /// How many hosts have an agent waiting.
    pub fn waiting(&self) -> usize {
        self.bells.lock().expect("bells lock").len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_ring_ends_a_wait_enabled_before_it() {
        let bells = CommandBells::default();
        let waiter = bells.wait_for(7);
        let wait = waiter.bell().notified();
        tokio::pin!(wait);
        wait.as_mut().enable();
        bells.ring(7); // before the wait is polled: not lost
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the ring ended the wait");
    }

    #[tokio::test]
    async fn a_ring_for_another_host_does_not() {
        let bells = CommandBells::default();
        let waiter = bells.wait_for(7);
        let wait = waiter.bell().notified();
        tokio::pin!(wait);
        wait.as_mut().enable();
        bells.ring(8);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait).await.is_err(),
            "host 8's ring ended host 7's wait"
        );
    }

    #[test]
    fn a_bell_lives_as_long_as_its_waiters() {
        let bells = CommandBells::default();
        let a = bells.wait_for(1);
        let b = bells.wait_for(1);
        assert!(
            std::ptr::eq(a.bell(), b.bell()),
            "two waiters on one host share its bell"
        );
        assert_eq!(bells.waiting(), 1);
        drop(a);
        assert_eq!(bells.waiting(), 1, "one waiter left");
        drop(b);
        assert_eq!(bells.waiting(), 0);
        bells.ring(1); // nobody waits: nothing to do
    }
}
