//! Drawing: a title line, the table, and a help line (or the filter being typed), sized
//! for an 80×24 terminal. Numbers are abbreviated to fixed narrow columns and the name
//! column takes what is left, so a wider terminal only widens the names.

use ratatui::{
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line as TextLine,
    widgets::{Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{
    app::{App, Line},
    model::SortKey,
};

/// What the title line says besides the table.
pub struct Status<'a> {
    pub addr: &'a str,
    pub interval: std::time::Duration,
    /// Wall-clock time of the data shown, `HH:MM:SS` (UTC).
    pub updated: &'a str,
}

/// Percent of one core: one decimal up to 999.9, whole numbers beyond.
pub fn percent(value: f64) -> String {
    if value < 999.95 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

pub fn optional_percent(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), percent)
}

/// Bytes in at most five characters: `512B`, `980K`, `12.3M`, `1.2G`.
pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 7] = ["B", "K", "M", "G", "T", "P", "E"];
    let mut v = value as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// A cumulative time in at most six characters: `0`, `350ms`, `12.3s`, `4m10s`,
/// `3h20m`, `12d`, `3y`.
pub fn duration_ns(ns: u64) -> String {
    let ms = ns / 1_000_000;
    let s = ns / 1_000_000_000;
    match ns {
        0 => "0".to_owned(),
        _ if ms < 1000 => format!("{ms}ms"),
        _ if s < 60 => format!("{:.1}s", ns as f64 / 1e9),
        _ if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ if s < 1000 * 86400 => format!("{}d", s / 86400),
        _ => format!("{}y", s / (365 * 86400)),
    }
}

/// `name` cut to `width` characters, the cut marked with `~`.
pub fn fit(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        name.to_owned()
    } else {
        let mut cut: String = name.chars().take(width.saturating_sub(1)).collect();
        cut.push('~');
        cut
    }
}

/// The numeric columns: header, width, and the sort key whose column it is.
const COLUMNS: [(&str, u16, Option<SortKey>); 6] = [
    ("CPU%", 6, Some(SortKey::Cpu)),
    ("WAIT%", 6, Some(SortKey::Wait)),
    ("THROTL", 6, Some(SortKey::Throttled)),
    ("MEM", 6, Some(SortKey::Memory)),
    ("OOM", 4, Some(SortKey::Oom)),
    ("PROCS", 5, None),
];

/// Help for the bottom line, 79 characters at most.
pub const HELP: &str =
    "c/w/t/m/o sort  / filter  enter expand  j/k move  p pause  r refresh  q quit";

/// Column headers; the sorted one is marked with `*` (plain ASCII: any terminal shows it).
pub fn headers(sort: SortKey) -> Vec<String> {
    let mut headers = vec!["ALLOC/TASK".to_owned()];
    headers.extend(COLUMNS.iter().map(|(name, _, key)| {
        if *key == Some(sort) {
            format!("*{name}")
        } else {
            (*name).to_owned()
        }
    }));
    headers
}

/// The cells of one line: the name, then the numeric columns.
fn cells(app: &App, line: Line, name_width: usize) -> Vec<String> {
    match line {
        Line::Alloc(a) => {
            let alloc = &app.rows[a];
            let short = alloc.id.get(..8).unwrap_or(&alloc.id);
            let name = match &alloc.job {
                Some(job) => format!("{short} {job}"),
                None => short.to_owned(),
            };
            vec![
                fit(&name, name_width),
                percent(alloc.cpu_percent()),
                optional_percent(alloc.wait_percent()),
                duration_ns(alloc.throttled_ns()),
                bytes(alloc.memory()),
                alloc.oom_kills().map_or("-".to_owned(), |n| n.to_string()),
                alloc.process_count().to_string(),
            ]
        }
        Line::Task(a, t) => {
            let task = &app.rows[a].tasks[t];
            vec![
                fit(&format!("  {}", task.name), name_width),
                percent(task.cpu_percent),
                optional_percent(task.wait_percent),
                duration_ns(task.throttled_ns),
                bytes(task.memory),
                task.oom_kills.map_or("-".to_owned(), |n| n.to_string()),
                task.processes.len().to_string(),
            ]
        }
        Line::Process(a, t, p) => {
            let process = &app.rows[a].tasks[t].processes[p];
            vec![
                fit(&format!("    pid {}", process.pid), name_width),
                percent(process.cpu_percent),
                String::new(),
                String::new(),
                bytes(process.rss),
                String::new(),
                String::new(),
            ]
        }
    }
}

fn right(text: String) -> Cell<'static> {
    Cell::from(TextLine::from(text).right_aligned())
}

fn row(cells: Vec<String>) -> Row<'static> {
    let mut cells = cells.into_iter();
    let name = Cell::from(cells.next().unwrap_or_default());
    Row::new(std::iter::once(name).chain(cells.map(right)))
}

/// The title line, most telling first since a narrow terminal cuts its end: a pause,
/// the address, counts, sort and filter, then the interval and the time of the data.
pub fn title(app: &App, status: &Status<'_>) -> String {
    let tasks: usize = app.rows.iter().map(|a| a.tasks.len()).sum();
    let mut title = String::from(if app.paused { "PAUSED " } else { "top " });
    title.push_str(&format!(
        "{}  {} allocs {} tasks  sort:{}",
        status.addr,
        app.rows.len(),
        tasks,
        app.sort.name(),
    ));
    if !app.filter.is_empty() {
        title.push_str(&format!("  filter:{}", app.filter));
    }
    title.push_str(&format!(
        "  every {}  {}",
        humantime::format_duration(status.interval),
        status.updated
    ));
    title
}

pub fn draw(frame: &mut Frame<'_>, app: &App, status: &Status<'_>) {
    let [top, table_area, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(title(app, status)).style(Style::new().add_modifier(Modifier::BOLD)),
        top,
    );

    let numeric: u16 = COLUMNS.iter().map(|(_, w, _)| w + 1).sum();
    let name_width = table_area.width.saturating_sub(numeric).max(8);
    let widths = std::iter::once(Constraint::Length(name_width))
        .chain(COLUMNS.iter().map(|(_, w, _)| Constraint::Length(*w)));
    let header = row(headers(app.sort)).style(Style::new().add_modifier(Modifier::REVERSED));
    let rows: Vec<Row<'_>> = app
        .lines
        .iter()
        .map(|line| {
            let r = row(cells(app, *line, usize::from(name_width)));
            if matches!(line, Line::Alloc(_)) {
                r.style(Style::new().add_modifier(Modifier::BOLD))
            } else {
                r
            }
        })
        .collect();
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(app.selected_index());
    frame.render_stateful_widget(table, table_area, &mut state);

    let bottom_text = if app.editing {
        format!(
            "filter (job or allocation ID prefix; enter keeps, esc clears): {}_",
            app.filter
        )
    } else if app.rows.is_empty() {
        format!(
            "no allocation{}  |  {HELP}",
            if app.filter.is_empty() {
                ""
            } else {
                " matches"
            }
        )
    } else {
        HELP.to_owned()
    };
    frame.render_widget(Paragraph::new(bottom_text), bottom);
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::top::model::{AllocRow, ProcessRow, TaskRow};

    #[test]
    fn numbers_fit_their_columns() {
        assert_eq!(percent(0.0), "0.0");
        assert_eq!(percent(99.94), "99.9");
        assert_eq!(percent(1234.5), "1234");
        assert_eq!(optional_percent(None), "-");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1_003_520), "980K");
        assert_eq!(bytes(12_897_485), "12.3M");
        assert_eq!(bytes(1_288_490_189), "1.2G");
        assert_eq!(duration_ns(0), "0");
        assert_eq!(duration_ns(350_000_000), "350ms");
        assert_eq!(duration_ns(12_340_000_000), "12.3s");
        assert_eq!(duration_ns(250_000_000_000), "4m10s");
        assert_eq!(duration_ns(12_000 * 1_000_000_000), "3h20m");
        assert_eq!(duration_ns(10 * 86_400 * 1_000_000_000), "10d");
        // The widest each can get, against the columns they go in (all 6 wide).
        assert!(COLUMNS[..4].iter().all(|(_, width, _)| *width == 6));
        assert_eq!(bytes(u64::MAX), "16.0E");
        assert!(
            duration_ns(u64::MAX).len() <= 6,
            "{}",
            duration_ns(u64::MAX)
        );
        assert!(percent(99_999.0).len() <= 6);
        assert_eq!(fit("frontend", 8), "frontend");
        assert_eq!(fit("frontend-long", 8), "fronten~");
        assert!(HELP.len() < 80);
    }

    #[test]
    fn the_sorted_column_is_marked() {
        assert_eq!(headers(SortKey::Cpu)[1], "*CPU%");
        assert_eq!(headers(SortKey::Wait)[1], "CPU%");
        assert_eq!(headers(SortKey::Wait)[2], "*WAIT%");
    }

    /// The whole screen at 80×24 with a long job name and an expanded task: every column
    /// is on screen and the name is cut, not the numbers.
    #[test]
    fn an_80_by_24_screen_shows_every_column() {
        let mut app = App::default();
        app.set_data(vec![AllocRow {
            id: "8d3c5bd8-6b2a-4f1e-9a53-6f0b2c7d9e10".into(),
            job: Some("a-job-name-far-too-long-for-any-terminal-of-eighty-columns".into()),
            tasks: vec![TaskRow {
                name: "web.frontend".into(),
                cpu_percent: 99.5,
                wait_percent: None,
                throttled_ns: 1_500_000_000,
                memory: 52_428_800,
                oom_kills: Some(2),
                churn: None,
                processes: vec![ProcessRow {
                    pid: 4242,
                    cpu_percent: 99.0,
                    rss: 4_194_304,
                }],
            }],
        }]);
        app.key(ratatui::crossterm::event::KeyEvent::from(
            ratatui::crossterm::event::KeyCode::Enter,
        ));
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let status = Status {
            addr: "127.0.0.1:4649",
            interval: std::time::Duration::from_secs(1),
            updated: "12:00:00",
        };
        terminal.draw(|f| draw(f, &app, &status)).unwrap();
        let buffer = terminal.backend().buffer();
        let line = |y: u16| -> String {
            (0..80)
                .map(|x| buffer[(x, y)].symbol().to_owned())
                .collect::<String>()
        };
        assert!(
            line(0)
                .starts_with("top 127.0.0.1:4649  1 allocs 1 tasks  sort:cpu  every 1s  12:00:00"),
            "{}",
            line(0)
        );
        let header = line(1);
        for name in [
            "ALLOC/TASK",
            "*CPU%",
            "WAIT%",
            "THROTL",
            "MEM",
            "OOM",
            "PROCS",
        ] {
            assert!(header.contains(name), "{header}");
        }
        assert!(header.trim_end().ends_with("PROCS"), "{header}");
        assert!(line(2).starts_with("8d3c5bd8 a-job-name"), "{}", line(2));
        assert!(line(2).contains("~ "), "the name is cut: {}", line(2));
        assert!(line(2).contains(" 99.5 "), "{}", line(2));
        assert!(
            line(3).contains("web.frontend") && line(3).contains("1.5s"),
            "{}",
            line(3)
        );
        assert!(line(3).contains("50.0M"), "{}", line(3));
        assert!(
            line(4).contains("pid 4242") && line(4).contains("4.0M"),
            "{}",
            line(4)
        );
        assert_eq!(line(23).trim_end(), HELP);
    }
}
