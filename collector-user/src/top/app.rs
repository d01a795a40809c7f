//! The state of the view and what each key does to it, without a terminal: the lines
//! on screen, which one is selected, which tasks are expanded, the filter being typed.

use std::collections::HashSet;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::model::{arrange, AllocRow, SortKey};

/// One line of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    Alloc(usize),
    Task(usize, usize),
    Process(usize, usize, usize),
}

/// What a key asks of the event loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Fetch now (after a pause, or on `r`).
    Refresh,
    Quit,
}

/// A selected line, by identity rather than position, so that it stays selected when a
/// refresh reorders the rows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Selected {
    Alloc(String),
    Task(String, String),
}

#[derive(Debug, Default)]
pub struct App {
    /// What the daemon sent last, in its order.
    data: Vec<AllocRow>,
    /// `data` filtered and sorted, and its lines.
    pub rows: Vec<AllocRow>,
    pub lines: Vec<Line>,
    pub sort: SortKey,
    pub filter: String,
    /// The filter is being typed (keys go to it).
    pub editing: bool,
    pub paused: bool,
    expanded: HashSet<(String, String)>,
    selected: Option<Selected>,
}

impl App {
    pub fn set_data(&mut self, data: Vec<AllocRow>) {
        self.data = data;
        self.rearrange();
    }

    fn rearrange(&mut self) {
        self.rows = arrange(&self.data, self.sort, &self.filter);
        self.lines.clear();
        for (a, alloc) in self.rows.iter().enumerate() {
            self.lines.push(Line::Alloc(a));
            for (t, task) in alloc.tasks.iter().enumerate() {
                self.lines.push(Line::Task(a, t));
                if self
                    .expanded
                    .contains(&(alloc.id.clone(), task.name.clone()))
                {
                    self.lines
                        .extend((0..task.processes.len()).map(|p| Line::Process(a, t, p)));
                }
            }
        }
        if self.selected_index().is_none() {
            self.selected = self.lines.first().map(|line| self.identity(*line));
        }
    }

    fn identity(&self, line: Line) -> Selected {
        match line {
            Line::Alloc(a) => Selected::Alloc(self.rows[a].id.clone()),
            Line::Task(a, t) | Line::Process(a, t, _) => {
                Selected::Task(self.rows[a].id.clone(), self.rows[a].tasks[t].name.clone())
            }
        }
    }

    /// The index in `lines` of the selected line.
    pub fn selected_index(&self) -> Option<usize> {
        let selected = self.selected.as_ref()?;
        self.lines.iter().position(|line| match (line, selected) {
            (Line::Alloc(a), Selected::Alloc(id)) => self.rows[*a].id == *id,
            (Line::Task(a, t), Selected::Task(id, name)) => {
                self.rows[*a].id == *id && self.rows[*a].tasks[*t].name == *name
            }
            _ => false,
        })
    }

    /// Moves the selection by `step` lines, over allocation and task lines only.
    fn move_selection(&mut self, step: isize) {
        let selectable: Vec<usize> = (0..self.lines.len())
            .filter(|&i| !matches!(self.lines[i], Line::Process(..)))
            .collect();
        if selectable.is_empty() {
            return;
        }
        let current = self
            .selected_index()
            .and_then(|i| selectable.iter().position(|&s| s == i))
            .unwrap_or(0);
        let next = (current as isize + step).clamp(0, selectable.len() as isize - 1) as usize;
        self.selected = Some(self.identity(self.lines[selectable[next]]));
    }

    /// Expands or collapses the selected task, or every task of the selected allocation.
    fn toggle(&mut self) {
        let Some(selected) = self.selected.clone() else {
            return;
        };
        let keys: Vec<(String, String)> = match selected {
            Selected::Task(id, name) => vec![(id, name)],
            Selected::Alloc(id) => self
                .rows
                .iter()
                .filter(|a| a.id == id)
                .flat_map(|a| a.tasks.iter().map(|t| (a.id.clone(), t.name.clone())))
                .collect(),
        };
        let all_expanded = keys.iter().all(|k| self.expanded.contains(k));
        for key in keys {
            if all_expanded {
                self.expanded.remove(&key);
            } else {
                self.expanded.insert(key);
            }
        }
        self.rearrange();
    }

    fn sort_by(&mut self, key: SortKey) {
        self.sort = key;
        self.rearrange();
    }

    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.len() < 64 => {
                    self.filter.push(c)
                }
                _ => return Action::None,
            }
            self.rearrange();
            return Action::None;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c') => self.sort_by(SortKey::Cpu),
            KeyCode::Char('w') => self.sort_by(SortKey::Wait),
            KeyCode::Char('t') => self.sort_by(SortKey::Throttled),
            KeyCode::Char('m') => self.sort_by(SortKey::Memory),
            KeyCode::Char('o') => self.sort_by(SortKey::Oom),
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Enter | KeyCode::Char(' ') => self.toggle(),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::Home => self.move_selection(isize::MIN / 2),
            KeyCode::End => self.move_selection(isize::MAX / 2),
            KeyCode::Char('r') => return Action::Refresh,
            KeyCode::Char('p') => {
                self.paused = !self.paused;
                if !self.paused {
                    return Action::Refresh;
                }
            }
            _ => {}
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::{ProcessRow, TaskRow};

    fn task(name: &str, cpu: f64, pids: &[u32]) -> TaskRow {
        TaskRow {
            name: name.into(),
            cpu_percent: cpu,
            wait_percent: Some(100.0 - cpu),
            throttled_ns: 0,
            memory: 0,
            oom_kills: None,
            churn: None,
            processes: pids
                .iter()
                .map(|&pid| ProcessRow {
                    pid,
                    cpu_percent: cpu,
                    rss: 0,
                })
                .collect(),
        }
    }

    fn app() -> App {
        let mut app = App::default();
        app.set_data(vec![
            AllocRow {
                id: "aaaa".into(),
                job: Some("batch".into()),
                tasks: vec![task("a", 5.0, &[10])],
            },
            AllocRow {
                id: "bbbb".into(),
                job: Some("web".into()),
                tasks: vec![task("x", 90.0, &[20, 21]), task("y", 1.0, &[])],
            },
        ]);
        app
    }

    fn press(app: &mut App, keys: &str) {
        for c in keys.chars() {
            let code = match c {
                '\n' => KeyCode::Enter,
                '\x1b' => KeyCode::Esc,
                '\x08' => KeyCode::Backspace,
                'J' => KeyCode::Down,
                c => KeyCode::Char(c),
            };
            app.key(KeyEvent::new(code, KeyModifiers::NONE));
        }
    }

    #[test]
    fn lines_follow_sort_and_expansion_and_the_selection_follows_its_row() {
        let mut app = app();
        assert_eq!(
            app.lines,
            [
                Line::Alloc(0),
                Line::Task(0, 0),
                Line::Task(0, 1),
                Line::Alloc(1),
                Line::Task(1, 0)
            ]
        );
        assert_eq!(app.rows[0].id, "bbbb", "busiest first");
        // Select task x and expand it: its two processes appear under it.
        press(&mut app, "J ");
        assert_eq!(app.lines[2], Line::Process(0, 0, 0));
        assert_eq!(app.lines[3], Line::Process(0, 0, 1));
        // Sorting by wait: bbbb still first (99 + 10 against 95), y now above x; x stays
        // selected and expanded.
        press(&mut app, "w");
        assert_eq!(app.rows[0].id, "bbbb");
        assert_eq!(app.rows[0].tasks[0].name, "y");
        let selected = app.selected_index().unwrap();
        assert_eq!(app.lines[selected], Line::Task(0, 1));
        assert!(app.lines.contains(&Line::Process(0, 1, 1)));
        // Moving skips process lines; Enter on an allocation expands all its tasks, and
        // again collapses them.
        press(&mut app, "kkk");
        assert_eq!(app.selected_index(), Some(0));
        press(&mut app, "JJJ\n");
        assert_eq!(app.lines[app.selected_index().unwrap()], Line::Alloc(1));
        assert!(app.lines.contains(&Line::Process(1, 0, 0)));
        press(&mut app, "\n");
        assert!(!app.lines.contains(&Line::Process(1, 0, 0)));
        assert!(
            app.lines.contains(&Line::Process(0, 1, 0)),
            "others stay expanded"
        );
    }

    #[test]
    fn filter_is_typed_after_a_slash_and_cleared_with_escape() {
        let mut app = app();
        press(&mut app, "/we");
        assert!(app.editing);
        assert_eq!(app.rows.len(), 1);
        assert_eq!(
            app.key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)),
            Action::None,
            "q is typed into the filter, not a quit"
        );
        press(&mut app, "\x08\x08\x08aa\n");
        assert!(!app.editing);
        assert_eq!(app.filter, "aa");
        assert_eq!(app.rows[0].id, "aaaa");
        press(&mut app, "/\x1b");
        assert_eq!(app.rows.len(), 2);
        assert_eq!(
            app.key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)),
            Action::Quit
        );
    }

    #[test]
    fn pause_toggles_and_resuming_refreshes() {
        let mut app = app();
        let p = KeyEvent::new(KeyCode::Char('p'), KeyModifiers::NONE);
        assert_eq!(app.key(p), Action::None);
        assert!(app.paused);
        assert_eq!(app.key(p), Action::Refresh);
        assert!(!app.paused);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.key(ctrl_c), Action::Quit);
    }
}
