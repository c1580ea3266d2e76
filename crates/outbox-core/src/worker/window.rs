//! The claim window: where the next claim starts, and the batch claimed ahead of time.
//!
//! The store claims in commit-horizon order from an exact cursor (DESIGN.md section 4), so the
//! cursor may only move past events whose fate is settled in the store, and a batch claimed ahead
//! is only worth keeping when it starts where the cursor now stands.

use crate::{ClaimCursor, ClaimedBatch};

/// How a sent batch ended, as far as the claim window is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BatchEnd {
    /// Its results could not be written back, or a transient failure left some of its events
    /// pending: the same events must be claimed again, from the same place.
    Again,
    /// Its results are written back: every new event it read is published or recorded.
    /// `clean` when all of them were published (no failure, nothing left pending).
    WrittenBack {
        /// Every event of the batch was published.
        clean: bool,
    },
}

/// The relay's position in the claim order and the batch it claimed ahead.
///
/// The rules it keeps:
/// - the cursor advances only past a batch whose results are written back (or past rows a claim
///   only parked), so an event that failed transiently is claimed again, in order;
/// - a lost leadership forgets both: another relay may have moved the table on meanwhile;
/// - a batch is claimed ahead only while the current one is full and has no retries (the next
///   claim could return the same retries), and is kept only if the current one went out clean.
#[derive(Debug, Default)]
pub(super) struct ClaimWindow {
    /// Every new event at or before this position is published, dead-lettered or parked; the
    /// commit horizon guarantees no event can appear behind it later.
    cursor: Option<ClaimCursor>,
    /// The next batch, claimed while the current one was being sent.
    prefetched: Option<ClaimedBatch>,
}

impl ClaimWindow {
    /// Where the next claim starts.
    pub(super) fn cursor(&self) -> Option<ClaimCursor> {
        self.cursor
    }

    /// The batch claimed ahead, if any: the next one to send, instead of a new claim.
    pub(super) fn take_prefetched(&mut self) -> Option<ClaimedBatch> {
        self.prefetched.take()
    }

    /// Whether to claim the next batch while `claimed` is sent: only when it came back full
    /// (more is waiting) and holds no retries.
    pub(super) fn should_prefetch(claimed: &ClaimedBatch) -> bool {
        claimed.full && claimed.retries == 0
    }

    /// Where the claim after `claimed` starts, once `claimed` is settled.
    pub(super) fn after(&self, claimed: &ClaimedBatch) -> Option<ClaimCursor> {
        claimed.cursor.or(self.cursor)
    }

    /// A claim returned no event to send: every row it read was parked behind a retrying event
    /// of its key (or there was nothing). Nothing is in flight, so the cursor moves past them.
    pub(super) fn pass_parked(&mut self, claimed: &ClaimedBatch) {
        self.cursor = self.after(claimed);
    }

    /// Settles the window after `claimed` was sent; `next` is the batch claimed ahead meanwhile.
    pub(super) fn settle(
        &mut self,
        claimed: &ClaimedBatch,
        end: BatchEnd,
        next: Option<ClaimedBatch>,
    ) {
        match end {
            // The events are claimed again from where they were: what was claimed ahead of them
            // would be sent before them.
            BatchEnd::Again => {}
            BatchEnd::WrittenBack { clean } => {
                self.cursor = self.after(claimed);
                // Events that failed now wait for a retry time; what was claimed ahead may hold
                // later events of their keys.
                self.prefetched = if clean { next } else { None };
            }
        }
    }

    /// The leadership was lost or could not be checked: another relay may have claimed meanwhile.
    pub(super) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(id: i64) -> Option<ClaimCursor> {
        Some(ClaimCursor {
            xid: 1_000 + id as u64,
            id,
        })
    }

    fn batch(cursor: Option<ClaimCursor>, full: bool, retries: usize) -> ClaimedBatch {
        ClaimedBatch {
            events: Vec::new(),
            retries,
            cursor,
            full,
        }
    }

    #[test]
    fn starts_at_the_beginning_with_nothing_claimed_ahead() {
        let mut window = ClaimWindow::default();
        assert_eq!(window.cursor(), None);
        assert_eq!(window.take_prefetched(), None);
    }

    #[test]
    fn advances_only_after_the_batch_is_written_back() {
        let mut window = ClaimWindow::default();
        let first = batch(at(10), true, 0);
        window.settle(&first, BatchEnd::WrittenBack { clean: true }, None);
        assert_eq!(window.cursor(), at(10));

        let second = batch(at(20), true, 0);
        window.settle(&second, BatchEnd::Again, Some(batch(at(30), true, 0)));
        assert_eq!(
            window.cursor(),
            at(10),
            "a batch claimed again must start where it did"
        );
        assert_eq!(
            window.take_prefetched(),
            None,
            "a batch claimed ahead of events to be sent again would overtake them"
        );

        window.settle(&second, BatchEnd::WrittenBack { clean: false }, None);
        assert_eq!(
            window.cursor(),
            at(20),
            "recorded failures are settled: move past them"
        );
    }

    #[test]
    fn keeps_the_batch_claimed_ahead_only_after_a_clean_batch() {
        let mut window = ClaimWindow::default();
        let claimed = batch(at(10), true, 0);
        let next = batch(at(20), true, 0);

        window.settle(
            &claimed,
            BatchEnd::WrittenBack { clean: false },
            Some(next.clone()),
        );
        assert_eq!(window.take_prefetched(), None);

        window.settle(
            &claimed,
            BatchEnd::WrittenBack { clean: true },
            Some(next.clone()),
        );
        assert_eq!(window.take_prefetched(), Some(next));
        assert_eq!(window.take_prefetched(), None, "a batch is sent once");
    }

    #[test]
    fn a_claim_that_read_no_new_row_keeps_the_cursor() {
        let mut window = ClaimWindow::default();
        window.settle(
            &batch(at(10), true, 0),
            BatchEnd::WrittenBack { clean: true },
            None,
        );
        let only_retries = batch(None, false, 3);
        assert_eq!(window.after(&only_retries), at(10));
        window.settle(&only_retries, BatchEnd::WrittenBack { clean: true }, None);
        assert_eq!(window.cursor(), at(10));
    }

    #[test]
    fn passes_rows_a_claim_only_parked() {
        let mut window = ClaimWindow::default();
        window.pass_parked(&batch(at(7), true, 0));
        assert_eq!(window.cursor(), at(7));
        window.pass_parked(&batch(None, false, 0));
        assert_eq!(window.cursor(), at(7), "an empty claim moves nothing");
    }

    #[test]
    fn forgets_everything_when_the_leadership_is_lost() {
        let mut window = ClaimWindow::default();
        let claimed = batch(at(10), true, 0);
        window.settle(
            &claimed,
            BatchEnd::WrittenBack { clean: true },
            Some(batch(at(20), true, 0)),
        );
        window.reset();
        assert_eq!(window.cursor(), None);
        assert_eq!(window.take_prefetched(), None);
    }

    #[test]
    fn claims_ahead_only_behind_a_full_batch_without_retries() {
        assert!(ClaimWindow::should_prefetch(&batch(at(1), true, 0)));
        assert!(
            !ClaimWindow::should_prefetch(&batch(at(1), false, 0)),
            "nothing more waits"
        );
        assert!(
            !ClaimWindow::should_prefetch(&batch(at(1), true, 2)),
            "the next claim could return the same retries"
        );
    }
}
