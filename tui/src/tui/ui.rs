//! Drawing: the layout and one `render_*` per pane, all taking `&self`.
//!
//! Two layouts: compact for small terminals (80×24 and up) and roomy from
//! 120×40, where the chart, the previews and the log get more space.

use lsd_core::demo::DEMO_LABEL;
use lsd_core::engine::events::Level;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Clear, Dataset, GraphType, Paragraph, Wrap};
use ratatui::Frame;
use ratatui_image::Image;

use super::app::{fmt_duration, App, Fallback, Overlay, RunState, ALPHA_FACTORS};
use super::history::{Point, WINDOW};

/// The smallest screen the app draws on.
pub const MIN_SIZE: (u16, u16) = (60, 16);

/// Colours of the term curves, in term order; the total takes the
/// terminal's own foreground, so it shows on dark and light backgrounds.
const TERM_COLOURS: [Color; 6] = [Color::Cyan, Color::Yellow, Color::Magenta, Color::Green, Color::Blue, Color::Red];

/// The panes of one screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    /// Run facts and status.
    pub header: Rect,
    /// Loss curves.
    pub chart: Rect,
    /// Preview images (`None` when the screen is too small).
    pub preview: Option<Rect>,
    /// The log.
    pub messages: Rect,
    /// Key hints.
    pub footer: Rect,
}

/// True below 120×40.
pub fn compact(area: Rect) -> bool {
    area.width < 120 || area.height < 40
}

/// Splits the screen.
pub fn layout(area: Rect, _app: &App) -> Areas {
    let small = compact(area);
    let (header_h, messages_h) = if small { (2, 5) } else { (3, 10) };
    let [header, body, messages, footer] = Layout::vertical([
        Constraint::Length(header_h),
        Constraint::Min(6),
        Constraint::Length(messages_h),
        Constraint::Length(1),
    ])
    .areas(area);
    let split = if small {
        [Constraint::Percentage(50), Constraint::Percentage(50)]
    } else {
        [Constraint::Percentage(42), Constraint::Percentage(58)]
    };
    let [chart, preview] = Layout::horizontal(split).areas(body);
    Areas { header, chart, preview: Some(preview), messages, footer }
}

/// Maps the 24-bit colours in `area` to the 256-colour palette.
fn to_palette256(frame: &mut Frame, area: Rect) {
    let map = |c: Color| match c {
        Color::Rgb(r, g, b) => Color::Indexed(super::images::palette256([r, g, b])),
        other => other,
    };
    let buf = frame.buffer_mut();
    for y in area.top()..area.bottom() {
        for x in area.left()..area.right() {
            if let Some(cell) = buf.cell_mut((x, y)) {
                let (fg, bg) = (map(cell.fg), map(cell.bg));
                cell.set_fg(fg).set_bg(bg);
            }
        }
    }
}

/// The area inside a pane's border.
pub fn inner(pane: Rect) -> Rect {
    Block::bordered().inner(pane)
}

fn pane(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::default().borders(Borders::ALL).border_style(Style::new().dark_gray()).title(title.into().bold())
}

impl App {
    /// Draws the whole screen.
    pub fn render(&self, frame: &mut Frame) {
        let area = frame.area();
        if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
            let text =
                format!("terminal too small: {}×{}, need {}×{}", area.width, area.height, MIN_SIZE.0, MIN_SIZE.1);
            frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
            return;
        }
        let a = layout(area, self);
        self.render_header(frame, a.header);
        self.render_chart(frame, a.chart);
        if let Some(p) = a.preview {
            self.render_previews(frame, p);
        }
        self.render_messages(frame, a.messages);
        self.render_footer(frame, a.footer);
        match self.overlay {
            Overlay::None => {}
            Overlay::Help => self.render_help(frame, area),
            Overlay::ConfirmQuit => self.render_confirm_quit(frame, area),
        }
    }

    fn state_span(&self) -> Span<'static> {
        if self.stopping.is_some() {
            return Span::raw(" ◌ saving… ").black().on_yellow();
        }
        match (&self.state, self.pause_requested) {
            (RunState::Starting, _) => Span::raw(" ◌ starting ").black().on_gray(),
            (RunState::WarmUp(_), _) => Span::raw(" ◌ warming up ").black().on_gray(),
            (RunState::Running, Some(true)) => Span::raw(" ◌ pausing… ").black().on_yellow(),
            (RunState::Paused, Some(false)) => Span::raw(" ◌ resuming… ").black().on_yellow(),
            (RunState::Running, _) => Span::raw(" ● running ").black().on_green(),
            (RunState::Paused, _) => Span::raw(" ‖ paused ").black().on_yellow(),
            (RunState::Done, _) => Span::raw(" ✓ done ").black().on_cyan(),
            (RunState::Failed(_), _) => Span::raw(" ✗ failed ").white().on_red(),
        }
    }

    /// Recipe, prompt, mode, device, progress, state; the demo label.
    pub fn render_header(&self, frame: &mut Frame, area: Rect) {
        let sep = || Span::raw(" · ").dark_gray();
        let mut first = vec![Span::raw(" lsd-tui ").bold().reversed()];
        let mut second = vec![Span::raw(" ")];
        match &self.info {
            Some(info) => {
                first.push(Span::raw(" "));
                first.push(Span::raw(info.recipe.clone()).bold());
                if info.demo {
                    first.push(sep());
                    first.push(Span::raw(DEMO_LABEL).black().on_light_magenta().bold());
                }
                // The prompt takes what is left, so the state badge always shows.
                first.push(sep());
                let used: usize = first.iter().map(|s| s.width()).sum::<usize>() + self.state_span().width();
                let room = (area.width as usize).saturating_sub(used);
                first.push(Span::raw(ellipsize(&format!("\"{}\"", info.prompt), room)).italic());
                second.push(Span::raw(info.mode.clone()));
                second.push(sep());
                second.push(Span::raw(info.device.clone()));
                if let Some((used, total)) = self.gpu_memory {
                    second.push(
                        Span::raw(format!(" {:.1}/{:.1} GiB", used as f64 / 1024.0, total as f64 / 1024.0)).dark_gray(),
                    );
                }
                second.push(sep());
                let step = self.step();
                second.push(Span::raw(format!("step {step}/{}", info.total_steps)).bold());
                if let Some(s) = &self.last {
                    second.push(sep());
                    second.push(Span::raw(format!("{:.1} steps/s", s.steps_per_sec)));
                    if self.state.active() && s.steps_per_sec > 0.0 {
                        let left = info.total_steps.saturating_sub(step) as f64 / s.steps_per_sec;
                        second.push(sep());
                        second.push(Span::raw(format!(
                            "ETA {}",
                            fmt_duration(std::time::Duration::from_secs_f64(left.min(1e7)))
                        )));
                    }
                }
                if let Some((_, elapsed)) = &self.finished {
                    second.push(sep());
                    second.push(Span::raw(format!("took {}", fmt_duration(*elapsed))));
                }
                // The protocol, when there is room; the reason is on the third line and in the log.
                let used: usize = second.iter().map(|s| s.width()).sum();
                let name = format!("img {}", self.graphics_name());
                if used + 3 + name.len() <= area.width as usize {
                    second.push(sep());
                    second.push(Span::raw(name).dark_gray());
                }
            }
            None => first.push(Span::raw(" waiting for the engine…").dark_gray()),
        }
        if let RunState::WarmUp(what) = &self.state {
            second.push(sep());
            second.push(Span::raw(format!("warming up ({what})")).yellow());
        }
        // The state badge sits at the right end of the first line.
        let badge = self.state_span();
        let used: usize = first.iter().map(|s| s.width()).sum();
        let pad = (area.width as usize).saturating_sub(used + badge.width());
        first.push(Span::raw(" ".repeat(pad)));
        first.push(badge);
        let mut lines = vec![Line::from(first), Line::from(second)];
        if area.height > 2 {
            let mut third = vec![Span::raw(" ")];
            if let Some(info) = &self.info {
                third.push(Span::raw(format!("output {}", info.output.display())).dark_gray());
            }
            if let Some(step) = self.saved_step {
                third.push(sep());
                third.push(Span::raw(format!("saved at step {step}")).dark_gray());
            }
            third.push(sep());
            let why = self.previews.graphics().map(|g| format!(": {}", g.why)).unwrap_or_default();
            third.push(Span::raw(format!("graphics {}{why}", self.graphics_name())).dark_gray());
            lines.push(Line::from(third));
        }
        frame.render_widget(Paragraph::new(lines), area);
    }

    /// The graphics protocol's short name (`none` without images).
    fn graphics_name(&self) -> String {
        self.previews.graphics().map_or_else(|| "none".to_string(), |g| g.name())
    }

    fn series_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.info.as_ref().map(|i| i.terms.clone()).unwrap_or_default();
        names.push("total".into());
        names
    }

    /// Loss curves: one per term and the total.
    pub fn render_chart(&self, frame: &mut Frame, area: Rect) {
        let view = if self.whole_run { "whole run".to_string() } else { format!("last {WINDOW}") };
        let scale = if self.log_scale { "log" } else { "linear" };
        let block = pane(format!(" Loss · {view} · {scale} "));
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let points: Vec<&Point> =
            if self.whole_run { self.history.whole_run().collect() } else { self.history.window().collect() };
        let names = self.series_names();
        // The newest values, as numbers: a chart hides small differences.
        let mut spans = Vec::new();
        if let Some(s) = &self.last {
            for (i, name) in names.iter().enumerate() {
                let v = if i < s.terms.len() { s.terms[i] } else { s.total };
                spans.push(Span::styled(format!("{name} "), Style::new().fg(series_colour(i, names.len()))));
                spans.push(Span::raw(format!("{} ", fmt_value(v))));
            }
            spans.push(Span::raw(format!("|∇| {}", fmt_value(s.grad_norm))).dark_gray());
        } else {
            spans.push(Span::raw("no steps yet").dark_gray());
        }
        let width: usize = spans.iter().map(Span::width).sum();
        let values_h = if width > inner.width as usize { 2 } else { 1 };
        let values = Paragraph::new(Line::from(spans)).wrap(Wrap { trim: true });
        let [values_line, chart_area] =
            Layout::vertical([Constraint::Length(values_h), Constraint::Min(1)]).areas(inner);
        frame.render_widget(values, values_line);
        if points.is_empty() {
            return;
        }
        let y = |v: f64| if self.log_scale { (v > 0.0).then(|| v.log10()) } else { v.is_finite().then_some(v) };
        let series: Vec<Vec<(f64, f64)>> = (0..names.len())
            .map(|i| {
                points.iter().filter_map(|p| p.values.get(i).and_then(|v| y(*v)).map(|v| (p.step as f64, v))).collect()
            })
            .collect();
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (_, v) in series.iter().flatten() {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
        if !lo.is_finite() {
            frame.render_widget(
                Paragraph::new("no positive values to draw on a log scale (press l)").dark_gray(),
                chart_area,
            );
            return;
        }
        if hi - lo < 1e-9 {
            let pad = if self.log_scale { 0.5 } else { lo.abs().max(1.0) * 0.05 };
            lo -= pad;
            hi += pad;
        }
        let x0 = points.first().map(|p| p.step as f64).unwrap_or(0.0);
        let x1 = points.last().map(|p| p.step as f64).unwrap_or(1.0).max(x0 + 1.0);
        let label = |v: f64| if self.log_scale { fmt_value(10f64.powf(v)) } else { fmt_value(v) };
        let datasets: Vec<Dataset> = series
            .iter()
            .enumerate()
            .map(|(i, data)| {
                Dataset::default()
                    .name(names[i].clone())
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(Style::new().fg(series_colour(i, names.len())))
                    .data(data)
            })
            .collect();
        let xm = (x0 + x1) / 2.0;
        let chart = Chart::new(datasets)
            .x_axis(Axis::default().bounds([x0, x1]).style(Style::new().dark_gray()).labels([
                format!("{x0:.0}"),
                format!("{xm:.0}"),
                format!("{x1:.0}"),
            ]))
            .y_axis(Axis::default().bounds([lo, hi]).style(Style::new().dark_gray()).labels([
                label(lo),
                label((lo + hi) / 2.0),
                label(hi),
            ]))
            .legend_position(Some(ratatui::widgets::LegendPosition::TopRight))
            .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)));
        frame.render_widget(chart, chart_area);
    }

    /// The original and edited images per preview seed.
    pub fn render_previews(&self, frame: &mut Frame, area: Rect) {
        let p = &self.previews;
        let mut title = match &p.current {
            Some(c) => format!(" Preview · step {} ", c.step),
            None => " Preview ".to_string(),
        };
        if p.factor != 3 {
            title.push_str(&format!("· α ×{} ", ALPHA_FACTORS[p.factor]));
        }
        if p.requested.is_some() {
            title.push_str("· rendering… ");
        }
        let block = pane(title);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let Some(current) = &p.current else {
            frame.render_widget(Paragraph::new("waiting for the first preview…").dark_gray(), inner);
            return;
        };
        if p.graphics().is_none() {
            let out = self.info.as_ref().map(|i| i.output.display().to_string()).unwrap_or_default();
            let why = if self.fallback == Fallback::Full {
                "graphics off (--graphics none)"
            } else {
                "images off after drawing errors"
            };
            let mut lines = vec![Line::from(why).dark_gray()];
            lines.push(Line::from(format!("α: {}", fmt_alphas(&current.alphas))));
            lines.push(Line::from(format!(
                "seeds: {}",
                current.rows.iter().map(|r| r.label.trim_start_matches('#').to_string()).collect::<Vec<_>>().join(", ")
            )));
            lines.push(Line::from(format!("strips are written to {out}/strip-<seed>.png")).dark_gray());
            frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), inner);
            return;
        }
        let Some(grid) = self.tile_grid(frame.area()) else {
            frame.render_widget(Paragraph::new("too small for previews").dark_gray(), inner);
            return;
        };
        let label_rows = if grid.labels_every_line() { grid.rows } else { 1 };
        for r in 0..label_rows {
            for c in 0..grid.cols {
                let text =
                    if c == 0 { "original".to_string() } else { format!("α {}", fmt_alpha(current.alphas[c - 1])) };
                let short = if c == 0 { "orig".to_string() } else { fmt_alpha(current.alphas[c - 1]) };
                let rect = grid.label(r, c);
                let t = if text.chars().count() <= rect.width as usize { text } else { short };
                frame.render_widget(Paragraph::new(t).alignment(Alignment::Center).bold(), rect);
            }
        }
        for (r, row) in current.rows.iter().take(grid.rows).enumerate() {
            if grid.gutter > 0 {
                let g = grid.gutter_rect(r);
                let mid = Rect::new(g.x, g.y + g.height / 2, g.width, 1);
                frame.render_widget(Paragraph::new(row.label.as_str()).dark_gray(), mid);
            }
            for c in 0..grid.cols {
                let rect = grid.tile_rect(r, c);
                match p.tile(r, c) {
                    Some(proto) => {
                        frame.render_widget(Image::new(proto), rect);
                        if p.graphics().is_some_and(|g| g.palette256) {
                            to_palette256(frame, rect);
                        }
                    }
                    None => {
                        let mid = Rect::new(rect.x, rect.y + rect.height / 2, rect.width, 1);
                        frame.render_widget(Paragraph::new("…").alignment(Alignment::Center).dark_gray(), mid);
                    }
                }
            }
        }
        if let Some(e) = &p.error {
            let last = Rect::new(inner.x, inner.bottom().saturating_sub(1), inner.width, 1);
            frame.render_widget(Paragraph::new(format!("image error: {e}")).red(), last);
        }
    }

    /// Warnings, checkpoints, errors; newest at the bottom.
    pub fn render_messages(&self, frame: &mut Frame, area: Rect) {
        let block = pane(" Messages ");
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let n = inner.height as usize;
        let skip = self.messages.len().saturating_sub(n);
        let lines: Vec<Line> = self
            .messages
            .iter()
            .skip(skip)
            .map(|m| {
                let (tag, style) = match m.level {
                    Level::Info => ("info ", Style::new().dark_gray()),
                    Level::Warn => ("warn ", Style::new().yellow()),
                    Level::Error => ("error", Style::new().red().add_modifier(Modifier::BOLD)),
                };
                Line::from(vec![
                    Span::raw(format!("{:>6} ", m.step)).dark_gray(),
                    Span::styled(tag, style),
                    Span::raw(" "),
                    Span::styled(m.text.clone(), if m.level == Level::Info { Style::new() } else { style }),
                ])
            })
            .collect();
        frame.render_widget(Paragraph::new(lines), inner);
    }

    /// Key hints.
    pub fn render_footer(&self, frame: &mut Frame, area: Rect) {
        let key = |k: &'static str| Span::raw(k).bold().cyan();
        let text = |t: &'static str| Span::raw(t).dark_gray();
        let pause = if self.state == RunState::Paused { " resume  " } else { " pause  " };
        let line = Line::from(vec![
            Span::raw(" "),
            key("space"),
            text(pause),
            key("s"),
            text(" save  "),
            key("←/→"),
            text(" α  "),
            key("l"),
            text(" log  "),
            key("w"),
            text(" window  "),
            key("q"),
            text(" quit  "),
            key("?"),
            text(" help"),
        ]);
        frame.render_widget(Paragraph::new(line), area);
    }

    /// The key list.
    pub fn render_help(&self, frame: &mut Frame, area: Rect) {
        let rows = [
            ("space", "pause / resume the run"),
            ("s", "save a checkpoint and the outputs now"),
            ("← / →", "smaller / larger preview α (re-renders now)"),
            ("l", "log-scale loss axis on / off"),
            ("w", "loss window: last steps / whole run"),
            ("q, Esc", "quit (asks to save while the run goes)"),
            ("Ctrl-C", "quit, like q"),
            ("Ctrl-L", "repaint the screen and images"),
            ("?", "this help"),
        ];
        let mut lines: Vec<Line> = rows
            .iter()
            .map(|(k, t)| Line::from(vec![Span::raw(format!(" {k:<8}")).bold().cyan(), Span::raw(*t)]))
            .collect();
        lines.push(Line::from(""));
        lines.push(Line::from(" any key closes this").dark_gray());
        let rect = centered(area, 58, lines.len() as u16 + 2);
        frame.render_widget(Clear, rect);
        frame.render_widget(Paragraph::new(lines).block(pane(" Keys ")), rect);
    }

    /// "Save before quitting?"
    pub fn render_confirm_quit(&self, frame: &mut Frame, area: Rect) {
        let saved = match self.saved_step {
            Some(step) => format!(" The run is going; last checkpoint: step {step}."),
            None => " The run is going; no checkpoint yet.".to_string(),
        };
        let lines = vec![
            Line::from(saved),
            Line::from(" Save the run (checkpoint and outputs) and quit?"),
            Line::from(""),
            Line::from(vec![
                Span::raw(" y").bold().cyan(),
                Span::raw(" save and quit   "),
                Span::raw("n").bold().cyan(),
                Span::raw(" quit   "),
                Span::raw("Esc").bold().cyan(),
                Span::raw(" stay"),
            ]),
        ];
        let rect = centered(area, 50, lines.len() as u16 + 2);
        frame.render_widget(Clear, rect);
        frame.render_widget(Paragraph::new(lines).block(pane(" Quit ")), rect);
    }
}

/// `text` cut to `width` characters, ending in `…` when cut.
fn ellipsize(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        out.push('…');
    }
    out
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(area.x + (area.width - w) / 2, area.y + (area.height - h) / 2, w, h)
}

fn series_colour(i: usize, n: usize) -> Color {
    if i + 1 == n {
        Color::Reset
    } else {
        TERM_COLOURS[i % TERM_COLOURS.len()]
    }
}

/// Three significant digits, scientific when very small or large.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_alpha(a: f32) -> String {
    let s = format!("{a:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if a > 0.0 {
        format!("+{s}")
    } else {
        s.to_string()
    }
}

fn fmt_alphas(a: &[f32]) -> String {
    a.iter().map(|x| fmt_alpha(*x)).collect::<Vec<_>>().join(" ")
}
