//! Error messages for people.
//!
//! An error that ends a command is printed as one line, `error: what: why`,
//! the whole `wrap_err` chain joined, and nothing else: a `Location:` line
//! pointing into our own source, or a hint about backtraces, tells someone
//! who mistyped a path nothing. With `RUST_BACKTRACE` set (a bug report)
//! the full color-eyre report comes instead, with locations and backtrace.
//!
//! Colour only goes to a terminal, and never when `NO_COLOR` is set
//! (<https://no-color.org>); a log file or a Slurm output file gets plain
//! text.

use std::io::IsTerminal;

use color_eyre::config::{HookBuilder, Theme};
use color_eyre::Report;

/// How errors look in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// ANSI colour on stderr.
    pub colour: bool,
    /// Source locations and backtraces (`RUST_BACKTRACE` is set).
    pub details: bool,
}

impl Style {
    /// From the environment and whether stderr is a terminal.
    pub fn detect() -> Self {
        Self::from_env(std::io::stderr().is_terminal(), |k| {
            std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())
        })
    }

    fn from_env(stderr_terminal: bool, var: impl Fn(&str) -> Option<String>) -> Self {
        let no_color = var("NO_COLOR").is_some_and(|v| !v.is_empty());
        let backtrace = |k| var(k).is_some_and(|v| !v.is_empty() && v != "0");
        Self {
            colour: stderr_terminal && !no_color,
            details: backtrace("RUST_BACKTRACE") || backtrace("RUST_LIB_BACKTRACE"),
        }
    }
}

/// Installs color-eyre's report and panic hooks in `style`.
pub fn install(style: Style) -> color_eyre::Result<()> {
    HookBuilder::default()
        .theme(if style.colour { Theme::dark() } else { Theme::new() })
        .display_location_section(style.details)
        .display_env_section(style.details)
        .install()
}

/// The text printed for an error that ends the command.
pub fn render(e: &Report, style: Style) -> String {
    if style.details {
        return format!("error: {e:?}");
    }
    // A library error often repeats its source in its own message
    // ('reading x: No such file'): print each cause once.
    let mut chain: Vec<String> = Vec::new();
    for c in e.chain().map(|c| c.to_string()) {
        if !chain.iter().any(|prev| prev.contains(&c)) {
            chain.push(c);
        }
    }
    format!("{}{}", prefix(style), chain.join(": "))
}

/// `error: `, in bold red on a colour terminal.
pub fn prefix(style: Style) -> &'static str {
    if style.colour {
        "\x1b[1;31merror:\x1b[0m "
    } else {
        "error: "
    }
}

/// Prints `error: MESSAGE` on stderr (never panics).
pub fn error(message: impl std::fmt::Display) {
    crate::exit::warn(format!("{}{message}", prefix(Style::detect())));
}

#[cfg(test)]
mod tests {
    use super::*;
    use color_eyre::eyre::{eyre, WrapErr};

    fn style(terminal: bool, vars: &[(&str, &str)]) -> Style {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Style::from_env(terminal, |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(style(true, &[]).colour);
        assert!(!style(false, &[]).colour);
        assert!(!style(true, &[("NO_COLOR", "1")]).colour);
        assert!(style(true, &[("NO_COLOR", "")]).colour, "an empty NO_COLOR does not count");
        assert!(!style(true, &[]).details);
        assert!(style(false, &[("RUST_BACKTRACE", "1")]).details);
        assert!(!style(false, &[("RUST_BACKTRACE", "0")]).details);
    }

    #[test]
    fn a_plain_error_is_one_line_without_locations() {
        let e: Report = Err::<(), _>(eyre!("no such file")).wrap_err("loading recipe 'x.yaml'").unwrap_err();
        let text = render(&e, style(false, &[]));
        assert_eq!(text, "error: loading recipe 'x.yaml': no such file");
        assert!(!text.contains('\x1b'));
        assert!(render(&e, style(true, &[])).starts_with("\x1b[1;31merror:"));
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let repeated: Report = Err::<(), _>(io).wrap_err("reading 'x': entity not found").unwrap_err();
        assert_eq!(render(&repeated, style(false, &[])), "error: reading 'x': entity not found");
    }
}
