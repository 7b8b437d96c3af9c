//! The terminal itself: setting it up and restoring it, a backend that never
//! asks the terminal anything, telling a hang-up from other errors, and
//! asking the terminal questions with a deadline.
//!
//! A TUI on a remote box must keep training whatever the terminal does, so
//! nothing here waits on the terminal without a deadline:
//!
//! - ratatui's `Terminal::clear` (and with it every resize) asks the terminal
//!   for the cursor position and fails when no answer comes within 2 s. In a
//!   tmux session with no client attached, or when another reader takes the
//!   answer, that failed the first image draw and ended the run.
//!   [`QuietBackend`] answers from what it last set instead: a full-screen
//!   app never needs the real position.
//! - [`ask`] writes a query and reads the answers with `poll(2)` and a
//!   deadline, on the calling thread, so no reader is left behind to steal
//!   key presses or later answers.
//!
//! A hang-up is an I/O error of the kind a terminal gives once its other
//! end is gone (EIO, ENXIO, EPIPE, end of file), or a tty that `poll(2)`
//! reports hung up ([`tty_hung_up`]). Anything else is a drawing error to
//! show, log and work around.

use std::io::{self, Stdout, Write};
use std::time::{Duration, Instant};

use crossterm::cursor::Show;
use crossterm::execute;
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::{Backend, ClearType, CrosstermBackend, WindowSize};
use ratatui::buffer::Cell;
use ratatui::layout::{Position, Size};
use ratatui::Terminal;

/// The terminal the TUI draws on.
pub type Tty = Terminal<QuietBackend>;

/// Raw mode, the alternate screen, and a panic hook that restores both
/// (installed after color-eyre's, which it then calls).
pub fn init() -> io::Result<Tty> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
    enable_raw_mode()?;
    execute!(io::stdout(), EnterAlternateScreen)?;
    Terminal::new(QuietBackend::new(CrosstermBackend::new(io::stdout())))
}

/// Leaves raw mode and the alternate screen. Errors are dropped: after a
/// hang-up there is nothing to restore, and nowhere to report it.
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
}

/// A crossterm backend that never queries the terminal.
pub struct QuietBackend {
    inner: CrosstermBackend<Stdout>,
    cursor: Position,
}

impl QuietBackend {
    /// Wraps `inner`.
    pub fn new(inner: CrosstermBackend<Stdout>) -> Self {
        Self { inner, cursor: Position::ORIGIN }
    }
}

impl Backend for QuietBackend {
    type Error = io::Error;

    fn draw<'a, I>(&mut self, content: I) -> io::Result<()>
    where
        I: Iterator<Item = (u16, u16, &'a Cell)>,
    {
        self.inner.draw(content)
    }

    fn hide_cursor(&mut self) -> io::Result<()> {
        self.inner.hide_cursor()
    }

    fn show_cursor(&mut self) -> io::Result<()> {
        self.inner.show_cursor()
    }

    /// The position last set: no terminal query.
    fn get_cursor_position(&mut self) -> io::Result<Position> {
        Ok(self.cursor)
    }

    fn set_cursor_position<P: Into<Position>>(&mut self, position: P) -> io::Result<()> {
        let p = position.into();
        self.cursor = p;
        self.inner.set_cursor_position(p)
    }

    fn clear(&mut self) -> io::Result<()> {
        self.inner.clear()
    }

    fn clear_region(&mut self, clear_type: ClearType) -> io::Result<()> {
        self.inner.clear_region(clear_type)
    }

    fn size(&self) -> io::Result<Size> {
        self.inner.size()
    }

    fn window_size(&mut self) -> io::Result<WindowSize> {
        self.inner.window_size()
    }

    fn flush(&mut self) -> io::Result<()> {
        Backend::flush(&mut self.inner)
    }
}

/// True for the errors a terminal gives once its other end is gone.
pub fn is_hangup_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero)
        || matches!(e.raw_os_error(), Some(libc::EIO | libc::ENXIO | libc::EPIPE))
}

/// True when `err`, or any error it wraps, is a hang-up error.
pub fn is_hangup(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>().is_some_and(is_hangup_error) {
            return true;
        }
        next = e.source();
    }
    false
}

/// True when stdin or stdout is a terminal whose other end has hung up
/// (`poll(2)` says POLLHUP or POLLERR). Works without a SIGHUP: a process
/// that is not in the terminal's foreground, or that gets no signal, still
/// sees it.
pub fn tty_hung_up() -> bool {
    use std::io::IsTerminal;
    if !io::stdin().is_terminal() && !io::stdout().is_terminal() {
        return false;
    }
    let mut fds = [
        libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: libc::STDOUT_FILENO, events: libc::POLLOUT, revents: 0 },
    ];
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    n > 0 && fds.iter().any(|f| f.revents & (libc::POLLHUP | libc::POLLERR) != 0)
}

/// Waits up to `timeout` for stdin to have bytes.
fn stdin_ready(timeout: Duration) -> io::Result<bool> {
    let mut fd = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `fd` is a valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    if fd.revents & libc::POLLHUP != 0 && fd.revents & libc::POLLIN == 0 {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(n > 0)
}

/// Writes `query` to the terminal and reads its answers into `on_byte`
/// until `on_byte` returns true (the answer is complete) or `timeout`
/// passes. Returns whether the answer was complete. The terminal must be
/// in raw mode, and nothing else may be reading stdin.
pub fn ask(query: &str, timeout: Duration, mut on_byte: impl FnMut(u8) -> bool) -> io::Result<bool> {
    let mut out = io::stdout().lock();
    out.write_all(query.as_bytes())?;
    out.flush()?;
    drop(out);
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || !stdin_ready(left)? {
            return Ok(false);
        }
        // One byte at a time from the descriptor itself, not through std's
        // buffered stdin: what follows the answer (a key press) must stay
        // in the tty for crossterm to read.
        let mut b = 0u8;
        // SAFETY: reads at most one byte into `b`, which outlives the call.
        let n = unsafe { libc::read(libc::STDIN_FILENO, (&mut b as *mut u8).cast(), 1) };
        match n {
            1 => {
                if on_byte(b) {
                    return Ok(true);
                }
            }
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => {
                let e = io::Error::last_os_error();
                if !matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) {
                    return Err(e);
                }
            }
        }
    }
}

/// The cell size in pixels from the tty's window size, when it gives one.
pub fn cell_pixels_from_winsize() -> Option<(u16, u16)> {
    let ws = crossterm::terminal::window_size().ok()?;
    (ws.width > 0 && ws.height > 0 && ws.columns > 0 && ws.rows > 0)
        .then(|| (ws.width / ws.columns, ws.height / ws.rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangups_are_told_from_other_errors() {
        assert!(is_hangup_error(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(is_hangup_error(&io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(!is_hangup_error(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!is_hangup_error(&io::Error::other("The cursor position could not be read within a normal duration")));
        let wrapped = color_eyre::eyre::Report::new(io::Error::from_raw_os_error(libc::EIO));
        assert!(is_hangup(wrapped.as_ref()));
    }
}
