//! Per-repository job slots of one worker process (`concurrency.repo`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Per-repository job slots of one worker process: a job whose repository is at its policy cap waits here (holding
/// its lease) until a job on that repository ends.
#[derive(Debug, Default)]
pub struct RepoSlots {
    busy: Mutex<HashMap<String, usize>>,
    freed: tokio::sync::Notify,
}

/// A held slot; dropping it frees the slot.
pub struct RepoSlot {
    slots: Arc<RepoSlots>,
    repo: String,
}

impl RepoSlots {
    /// Waits for a slot on `repo` with at most `cap` jobs at once.
    pub async fn acquire(self: &Arc<Self>, repo: &str, cap: usize) -> RepoSlot {
        loop {
            let freed = self.freed.notified();
            {
                let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
                let n = busy.entry(repo.to_string()).or_default();
                if *n < cap {
                    *n += 1;
                    return RepoSlot {
                        slots: self.clone(),
                        repo: repo.to_string(),
                    };
                }
            }
            freed.await;
        }
    }

    /// Jobs holding a slot on `repo` now.
    pub fn busy(&self, repo: &str) -> usize {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.get(repo).copied().unwrap_or(0)
    }
}

impl Drop for RepoSlot {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.repo) {
            *n = n.saturating_sub(1);
        }
        drop(busy);
        self.slots.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// On a paused clock: the 100 ms wait passes once the waiter has run as far as it can, not in real time.
    #[tokio::test(start_paused = true)]
    async fn repository_slots_hold_the_cap_and_free_on_drop() {
        let slots = Arc::new(RepoSlots::default());
        let a = slots.acquire("acme/web", 1).await;
        assert_eq!(slots.busy("acme/web"), 1);
        // Another repository is not held up.
        let other = slots.acquire("acme/api", 1).await;
        // A second job on the same repository waits until the first slot is dropped.
        let s2 = slots.clone();
        let waiter = tokio::spawn(async move { s2.acquire("acme/web", 1).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the cap of 1 was exceeded");
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("freed slot is taken")
            .expect("task");
        assert_eq!(slots.busy("acme/web"), 1);
        drop((b, other));
        assert_eq!((slots.busy("acme/web"), slots.busy("acme/api")), (0, 0));
    }
}
