//! The stream loops' inbox: where the runtime's side (answers to calls
//! past the cache, evictions at the connection limit), the other loops
//! (clients handed over) and the daemon (shutdown) leave work for a loop,
//! waking it only when the queue was empty (it takes the whole queue).

use std::sync::atomic::AtomicU64;
use std::sync::PoisonError;
use std::sync::{Arc, Mutex};

use tracing::error;

use crate::proxy::clients::Tally;
use crate::proxy::limits::Admitted;
use crate::proxy::outbound::Destination;
use crate::proxy::policy::Peer;

use super::stream::{Answer, Sock};

/// Where the runtime's side leaves work for the loop.
pub(super) struct Inbox {
    pub(super) waker: mio::Waker,
    pub(super) queue: Mutex<Queue>,
    /// How many times the loop has woken (at least once a second): the
    /// watchdog's sign that it is not stuck.
    pub(super) turns: AtomicU64,
}

#[derive(Default)]
pub(super) struct Queue {
    /// (slot, client id, call sequence, outcome).
    pub(super) answers: Vec<(usize, u64, u64, Answer)>,
    /// (slot, client id) of clients evicted at the connection limit.
    pub(super) evicted: Vec<(usize, u64)>,
    /// Clients another loop accepted, handed over to balance the loops.
    pub(super) adopt: Vec<Newcomer>,
    pub(super) stop: bool,
    /// The loop has ended: nothing more is handed to it.
    pub(super) ended: bool,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.evicted.is_empty() && self.adopt.is_empty() && !self.stop
    }
}

/// A client accepted, admitted and identified, not yet in a loop.
pub(super) struct Newcomer {
    pub(super) sock: Sock,
    pub(super) peer: Peer,
    /// The client side: the server its calls go to (boxed: a newcomer is
    /// moved between loops, and most have none).
    pub(super) outbound: Option<Box<Destination>>,
    pub(super) tally: Arc<Tally>,
    pub(super) admitted: Admitted,
    pub(super) tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Inbox {
    /// Adds work; wakes the loop only if the queue was empty (it takes the
    /// whole queue when woken).
    pub(super) fn push(&self, add: impl FnOnce(&mut Queue)) {
        let _ = self.try_push(|q| {
            add(q);
            Ok::<(), std::convert::Infallible>(())
        });
    }

    /// Hands a client to this loop; gives it back if the loop has ended
    /// (shutdown), for the caller to keep.
    pub(super) fn hand_over(&self, newcomer: Newcomer) -> Result<(), Newcomer> {
        self.try_push(|q| {
            if q.ended {
                return Err(newcomer);
            }
            q.adopt.push(newcomer);
            Ok(())
        })
    }

    /// [`Inbox::push`] for work the queue may refuse (nothing is added then,
    /// and the loop is not woken).
    fn try_push<E>(&self, add: impl FnOnce(&mut Queue) -> Result<(), E>) -> Result<(), E> {
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let was = q.is_empty();
            add(&mut q)?;
            was
        };
        if was_empty {
            if let Err(e) = self.waker.wake() {
                error!(error = %e, "cannot wake the stream loop");
            }
        }
        Ok(())
    }

    /// The answer to a client's call, from the runtime.
    pub(super) fn answer(&self, slot: usize, id: u64, seq: u64, answer: Answer) {
        self.push(|q| q.answers.push((slot, id, seq, answer)));
    }
}

/// Wakes the loop when a client is evicted at the connection limit.
pub(super) struct EvictSignal {
    pub(super) inbox: Arc<Inbox>,
    pub(super) slot: usize,
    pub(super) id: u64,
}

impl std::task::Wake for EvictSignal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let (slot, id) = (self.slot, self.id);
        self.inbox.push(|q| q.evicted.push((slot, id)));
    }
}
