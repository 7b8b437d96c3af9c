//! The terminal front end (being written).
