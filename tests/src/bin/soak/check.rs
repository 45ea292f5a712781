//! What a read may return: the writes that returned, per key, and the verdict on a value read.
//!
//! Each user id has one writer, so its writes are totally ordered and carry increasing numbers;
//! posts get increasing ids from the database. A read sent at `sent` must reflect every write
//! that returned at or before `sent - bound`: a value older than the newest such write is
//! stale beyond the bound.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One write that returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    /// The user's write number, or the new post's id.
    pub value: u64,
    pub returned: Instant,
    /// The replica it went through.
    pub via: usize,
}

/// How a value read compares with the writes that returned before the read was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At least as new as every write that returned before the read was sent.
    Fresh,
    /// Older than a write that returned less than `bound` before the read was sent.
    StaleWithinBound,
    /// Older than this write, which returned at least `bound` before the read was sent.
    StaleBeyondBound { missed: Write },
}

/// The writes of one user, newest last (the last few are enough: writes of one id are seconds
/// apart and the bound is about a second).
#[derive(Debug, Default)]
pub struct UserHistory {
    writes: Mutex<VecDeque<Write>>,
}

const KEPT: usize = 64;

impl UserHistory {
    pub fn record(&self, write: Write) {
        let mut writes = self.writes.lock().unwrap();
        if writes.len() == KEPT {
            writes.pop_front();
        }
        writes.push_back(write);
    }

    /// The newest write that returned at or before `t`.
    fn newest_by(&self, t: Instant) -> Option<Write> {
        self.writes.lock().unwrap().iter().rev().find(|w| w.returned <= t).copied()
    }

    /// The verdict on write number `got` (0: the seeded row), read by a request sent at `sent`.
    pub fn check(&self, got: u64, sent: Instant, bound: Duration) -> Verdict {
        verdict(got, sent, bound, |t| self.newest_by(t))
    }
}

/// The posts created, for the checks of `GET /posts` and the feeds' pages.
#[derive(Debug, Default)]
pub struct PostHistory {
    created: Mutex<Vec<Write>>,
}

impl PostHistory {
    pub fn record(&self, write: Write) {
        self.created.lock().unwrap().push(write);
    }

    /// The creation of the `rank`-th largest id (1: the largest) among the posts whose
    /// creation returned at or before `t`; `None` when fewer were created (the seeded posts,
    /// with smaller ids, set no constraint).
    fn ranked_by(&self, t: Instant, rank: u64) -> Option<Write> {
        let mut known: Vec<Write> = self.created.lock().unwrap().iter().filter(|w| w.returned <= t).copied().collect();
        known.sort_unstable_by_key(|w| std::cmp::Reverse(w.value));
        known.get(usize::try_from(rank).ok()?.checked_sub(1)?).copied()
    }

    /// The verdict on a page of posts (newest first) whose first post has id `first` (0: an
    /// empty page), `rank` being the position of that post in the whole list (1 for
    /// `GET /posts` and a feed's page 1, 11 for page 2, …).
    ///
    /// Sound for any set of concurrent creations: the posts that existed when the page was
    /// read include every post known to exist before, so its `rank`-th largest id is at least
    /// theirs.
    pub fn check(&self, first: u64, rank: u64, sent: Instant, bound: Duration) -> Verdict {
        verdict(first, sent, bound, |t| self.ranked_by(t, rank))
    }
}

/// `expected(t)`: the newest write a read sent at `t` must reflect (`None`: no constraint).
fn verdict(got: u64, sent: Instant, bound: Duration, expected: impl Fn(Instant) -> Option<Write>) -> Verdict {
    if let Some(missed) = sent.checked_sub(bound).and_then(&expected).filter(|w| got < w.value) {
        return Verdict::StaleBeyondBound { missed };
    }
    if expected(sent).is_some_and(|w| got < w.value) {
        Verdict::StaleWithinBound
    } else {
        Verdict::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(1);

    #[test]
    fn a_value_is_judged_against_the_writes_that_returned_a_bound_before_the_read() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let h = UserHistory::default();
        h.record(Write { value: 1, returned: at(100), via: 0 });
        h.record(Write { value: 2, returned: at(2000), via: 1 });
        // Before any write returned + bound: anything goes.
        assert_eq!(h.check(0, at(1000), BOUND), Verdict::StaleWithinBound);
        assert_eq!(h.check(0, at(50), BOUND), Verdict::Fresh);
        // Write 1 returned more than a bound before.
        assert!(matches!(h.check(0, at(1200), BOUND), Verdict::StaleBeyondBound { missed } if missed.value == 1));
        assert_eq!(h.check(1, at(2500), BOUND), Verdict::StaleWithinBound);
        assert_eq!(h.check(2, at(2500), BOUND), Verdict::Fresh);
        assert!(matches!(h.check(1, at(3000), BOUND), Verdict::StaleBeyondBound { missed } if missed.value == 2));
        // Newer than any write that returned (one still in flight): fresh.
        assert_eq!(h.check(3, at(3000), BOUND), Verdict::Fresh);
    }

    #[test]
    fn pages_of_posts_are_judged_by_rank() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let h = PostHistory::default();
        for (i, id) in (51..=70).enumerate() {
            h.record(Write { value: id, returned: at(100 * i as u64), via: 0 });
        }
        // At 5 s every post is known: the newest is 70, the 11th newest 60.
        assert_eq!(h.check(70, 1, at(5000), BOUND), Verdict::Fresh);
        assert!(matches!(h.check(69, 1, at(5000), BOUND), Verdict::StaleBeyondBound { .. }));
        assert_eq!(h.check(60, 11, at(5000), BOUND), Verdict::Fresh);
        assert!(matches!(h.check(59, 11, at(5000), BOUND), Verdict::StaleBeyondBound { .. }));
        // Only seeded posts known at rank 30: no constraint.
        assert_eq!(h.check(1, 30, at(5000), BOUND), Verdict::Fresh);
    }
}
