//! Log lines for events that repeat: said once, then counted, never a line
//! per occurrence. `Throttle` for bursts (refused connections), `Outage` for
//! a peer that goes away and comes back (rpcbind), `human` for durations
//! as people write them.

use std::sync::PoisonError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// At most one log line per `window` for an event that may repeat thousands
/// of times a second: the first occurrence after a quiet window is said at
/// once; those after it are counted and said together, in one line, when
/// the window ends.
pub struct Throttle {
    window: Duration,
    say: Box<dyn Fn(u64, Duration) + Send + Sync>,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    /// Until when further events are only counted.
    quiet_until: Option<Instant>,
    /// Events counted and not yet said.
    pending: u64,
    /// Whether a task will say `pending` when the window ends.
    flushing: bool,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("window", &self.window)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// `say(n, over)` writes the line for `n` events over the last `over`.
    pub fn new(window: Duration, say: impl Fn(u64, Duration) + Send + Sync + 'static) -> Throttle {
        Throttle {
            window,
            say: Box::new(say),
            state: Mutex::default(),
        }
    }

    /// One more event. The held-back count is said by a task on the current
    /// tokio runtime; without one it waits for the next event after the
    /// window.
    pub fn event(self: &Arc<Self>) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.quiet_until {
            Some(until) if now < until => {
                st.pending += 1;
                if !st.flushing {
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        st.flushing = true;
                        let me = self.clone();
                        rt.spawn(async move { me.flush_at(until).await });
                    }
                }
            }
            _ => {
                let n = std::mem::take(&mut st.pending) + 1;
                st.quiet_until = Some(now + self.window);
                drop(st);
                (self.say)(n, Duration::ZERO);
            }
        }
    }

    async fn flush_at(self: Arc<Self>, until: Instant) {
        tokio::time::sleep_until(until).await;
        let n = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.flushing = false;
            let n = std::mem::take(&mut st.pending);
            if n > 0 {
                // The line just said opens a new window.
                st.quiet_until = Some(Instant::now() + self.window);
            }
            n
        };
        if n > 0 {
            (self.say)(n, self.window);
        }
    }
}

/// How often a peer that stays unreachable is mentioned again.
pub const OUTAGE_REMINDER: Duration = Duration::from_secs(60);

/// Whether a peer is reachable, as the log tells it: the first failure,
/// a reminder at most every [`OUTAGE_REMINDER`] while it lasts, and the
/// return with how long it was gone; every other attempt is quiet.
#[derive(Debug, Default)]
pub struct Outage {
    /// When the first failed attempt of the current outage was.
    since: Option<Instant>,
    /// When the outage was last mentioned.
    said: Option<Instant>,
    /// Failed attempts in the current outage.
    failures: u64,
    /// Whether the peer was ever reached.
    ever_up: bool,
}

/// What to log after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    /// Nothing (at most a debug line).
    Quiet,
    /// The first connection.
    First,
    /// The first failure of an outage.
    Lost,
    /// Still down, for this long, after this many attempts.
    StillDown(Duration, u64),
    /// Reached again after this long.
    Back(Duration),
}

impl Outage {
    pub fn failed(&mut self, now: Instant) -> Said {
        self.failures += 1;
        match (self.since, self.said) {
            (None, _) => {
                self.since = Some(now);
                self.said = Some(now);
                Said::Lost
            }
            (Some(since), Some(said)) if now.duration_since(said) >= OUTAGE_REMINDER => {
                self.said = Some(now);
                Said::StillDown(now.duration_since(since), self.failures)
            }
            _ => Said::Quiet,
        }
    }

    pub fn connected(&mut self, now: Instant) -> Said {
        let first = !std::mem::replace(&mut self.ever_up, true);
        self.failures = 0;
        self.said = None;
        match self.since.take() {
            Some(since) => Said::Back(now.duration_since(since)),
            None if first => Said::First,
            None => Said::Quiet,
        }
    }
}

/// A duration as people write it: 250ms, 2s, 1.5s, 2m, 1m 30s, 1h 5m, 2d 3h.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    let (value, unit, rest, rest_unit) = match s {
        0..=59 => {
            let tenths = (ms + 50) / 100;
            return if tenths % 10 == 0 {
                format!("{}s", tenths / 10)
            } else {
                format!("{}.{}s", tenths / 10, tenths % 10)
            };
        }
        60..=3599 => (s / 60, "m", s % 60, "s"),
        3600..=86_399 => (s / 3600, "h", s % 3600 / 60, "m"),
        _ => (s / 86_400, "d", s % 86_400 / 3600, "h"),
    };
    if rest == 0 {
        format!("{value}{unit}")
    } else {
        format!("{value}{unit} {rest}{rest_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "1m 30s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(3900), "1h 5m"),
            (Duration::from_secs(2 * 86_400 + 3 * 3600), "2d 3h"),
        ] {
            assert_eq!(human(d), s);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_line_then_one_line_per_window() {
        let said = Arc::new(Mutex::new(Vec::new()));
        let log = said.clone();
        let t = Arc::new(Throttle::new(Duration::from_secs(10), move |n, over| {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((n, over.as_secs()))
        }));
        let start = Instant::now();
        t.event();
        assert_eq!(
            *said.lock().unwrap_or_else(PoisonError::into_inner),
            [(1, 0)],
            "the first is said at once"
        );
        for _ in 0..1000 {
            t.event();
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            said.lock().unwrap_or_else(PoisonError::into_inner).len(),
            1,
            "nothing more within the window"
        );
        tokio::time::sleep_until(start + Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            said.lock().unwrap_or_else(PoisonError::into_inner)[1],
            (1000, 10),
            "the rest in one line"
        );
        // One more in the next window: held until it ends.
        tokio::time::sleep(Duration::from_secs(3)).await;
        t.event();
        assert_eq!(said.lock().unwrap_or_else(PoisonError::into_inner).len(), 2);
        tokio::time::sleep_until(start + Duration::from_secs(20)).await;
        tokio::task::yield_now().await;
        assert_eq!(
            said.lock().unwrap_or_else(PoisonError::into_inner)[2],
            (1, 10)
        );
        // After a quiet window the next one is said at once again.
        tokio::time::sleep(Duration::from_secs(30)).await;
        t.event();
        assert_eq!(
            said.lock().unwrap_or_else(PoisonError::into_inner)[3],
            (1, 0)
        );
        assert_eq!(said.lock().unwrap_or_else(PoisonError::into_inner).len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_said_when_it_starts_now_and_then_and_when_it_ends() {
        let mut o = Outage::default();
        let t0 = Instant::now();
        assert_eq!(o.failed(t0), Said::Lost, "down from the start");
        let mut said = Vec::new();
        // An attempt every 2 s for 150 s: two reminders, no more.
        for i in 1..=75 {
            let s = o.failed(t0 + Duration::from_secs(2 * i));
            if s != Said::Quiet {
                said.push(s);
            }
        }
        assert_eq!(
            said,
            [
                Said::StillDown(Duration::from_secs(60), 31),
                Said::StillDown(Duration::from_secs(120), 61)
            ]
        );
        assert_eq!(
            o.connected(t0 + Duration::from_secs(151)),
            Said::Back(Duration::from_secs(151))
        );
        assert_eq!(o.connected(t0 + Duration::from_secs(200)), Said::Quiet);
        let t1 = t0 + Duration::from_secs(300);
        assert_eq!(o.failed(t1), Said::Lost, "a new outage");
        assert_eq!(o.failed(t1 + Duration::from_secs(2)), Said::Quiet);
        let mut fresh = Outage::default();
        assert_eq!(fresh.connected(t0), Said::First);
    }
}
