//! Loss history for the chart: a fixed-size window that follows the run,
//! and a bounded whole-run series.
//!
//! The window drops points at the front and adds at the back (ratatui's chart
//! example keeps its data the same way), so drawing costs the same at step 10
//! and at step 100 000. The whole-run series halves its resolution whenever it
//! grows past its bound, so it too stays small however long the run is.

use std::collections::VecDeque;

/// Steps kept in the following window.
pub const WINDOW: usize = 200;

/// The whole-run series is thinned to half when it holds this many points.
pub const WHOLE_RUN_MAX: usize = 2000;

/// One point: the step and one value per series (terms, then the total).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The step.
    pub step: usize,
    /// Each term's value, then the total.
    pub values: Vec<f64>,
}

/// The losses seen so far.
#[derive(Debug, Clone, Default)]
pub struct LossHistory {
    window: VecDeque<Point>,
    whole: Vec<Point>,
    /// Keep one whole-run point every `stride` steps.
    stride: usize,
    seen: usize,
}

impl LossHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self { window: VecDeque::with_capacity(WINDOW), whole: Vec::new(), stride: 1, seen: 0 }
    }

    /// Adds one step's values (terms, then total).
    pub fn push(&mut self, step: usize, values: Vec<f64>) {
        let point = Point { step, values };
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(point.clone());
        if self.seen.is_multiple_of(self.stride) {
            self.whole.push(point);
            if self.whole.len() >= WHOLE_RUN_MAX {
                // Keep every other point and double the stride from now on.
                let mut i = 0;
                self.whole.retain(|_| {
                    i += 1;
                    (i - 1) % 2 == 0
                });
                self.stride *= 2;
            }
        }
        self.seen += 1;
    }

    /// The points of the following window, oldest first.
    pub fn window(&self) -> impl Iterator<Item = &Point> {
        self.window.iter()
    }

    /// The whole run, thinned, oldest first; the newest point is always last.
    pub fn whole_run(&self) -> impl Iterator<Item = &Point> {
        let last = self.window.back().filter(|p| self.whole.last().map(|w| w.step) != Some(p.step));
        self.whole.iter().chain(last)
    }

    /// The newest point.
    #[cfg(test)]
    pub fn last(&self) -> Option<&Point> {
        self.window.back()
    }

    /// Number of points in the following window.
    #[cfg(test)]
    pub fn window_len(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_a_fixed_size_and_follows_the_run() {
        let mut h = LossHistory::new();
        for s in 1..=WINDOW + 50 {
            h.push(s, vec![s as f64]);
        }
        assert_eq!(h.window_len(), WINDOW);
        assert_eq!(h.window().next().map(|p| p.step), Some(51));
        assert_eq!(h.last().map(|p| p.step), Some(WINDOW + 50));
    }

    #[test]
    fn whole_run_stays_bounded_and_spans_the_run() {
        let mut h = LossHistory::new();
        let n = 10 * WHOLE_RUN_MAX + 7;
        for s in 1..=n {
            h.push(s, vec![0.0]);
        }
        let pts: Vec<_> = h.whole_run().map(|p| p.step).collect();
        assert!(pts.len() <= WHOLE_RUN_MAX + 1, "{} points", pts.len());
        assert!(pts.len() >= WHOLE_RUN_MAX / 4);
        assert_eq!(pts.first(), Some(&1));
        assert_eq!(pts.last(), Some(&n));
        assert!(pts.windows(2).all(|w| w[0] < w[1]));
    }
}
