//! Progress reporting without a terminal: the library emits [`Event`]s and
//! the caller draws them (the CLI drives an indicatif bar).

/// Something a long operation wants to report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// A phase starts: `what` is e.g. "downloading arcface-ir-se50/model_ir_se50.pth".
    Start {
        /// Human-readable description of the phase.
        what: &'a str,
        /// Total bytes, when known.
        total: Option<u64>,
    },
    /// Bytes done so far in the current phase (absolute, not a delta; a
    /// resumed download starts above zero).
    Position(u64),
    /// The current phase ended.
    Finish,
    /// A one-line remark ("resuming at 12 MB", "deleted the bad file …").
    Note(&'a str),
}

/// Receives [`Event`]s. Any `FnMut(Event)` closure is one.
pub trait Progress {
    /// Handles one event.
    fn event(&mut self, event: Event<'_>);
}

impl<F: FnMut(Event<'_>)> Progress for F {
    fn event(&mut self, event: Event<'_>) {
        self(event)
    }
}

/// A [`Progress`] that ignores everything.
pub struct Silent;

impl Progress for Silent {
    fn event(&mut self, _: Event<'_>) {}
}
