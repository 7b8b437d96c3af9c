//! TUI tests: layout snapshots, the sixel stream, half blocks, the loop.
