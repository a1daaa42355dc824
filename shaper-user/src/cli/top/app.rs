//! The state of the live view and what its keys do.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use shaper_user::control::TopReport;

use super::views::{Sort, View};

/// What the loop does after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Stay,
    Quit,
}

pub(crate) struct App {
    pub(crate) view: View,
    pub(crate) sort: Sort,
    /// The last reply, and when it came ("14:02:11").
    pub(crate) report: Option<TopReport>,
    pub(crate) at: String,
    /// Why the last refresh failed (the last reply stays on screen).
    pub(crate) error: Option<String>,
}

impl App {
    pub(crate) fn new(report: TopReport) -> Self {
        Self { view: View::Classes, sort: Sort::Rate, report: Some(report), at: now(), error: None }
    }

    pub(crate) fn refreshed(&mut self, result: Result<TopReport, String>) {
        match result {
            Ok(report) => {
                self.report = Some(report);
                self.at = now();
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }

    pub(crate) fn key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::Stay;
        }
        let index = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
        let count = View::ALL.len();
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return Action::Quit,
            KeyCode::Tab | KeyCode::Right => self.view = View::ALL[(index + 1) % count],
            KeyCode::BackTab | KeyCode::Left => self.view = View::ALL[(index + count - 1) % count],
            KeyCode::Char(c @ '1'..='5') => {
                if let Some(view) = View::ALL.get(usize::from(c as u8 - b'1')) {
                    self.view = *view;
                }
            }
            KeyCode::Char('s') => self.sort = self.sort.other(),
            _ => {}
        }
        Action::Stay
    }
}

fn now() -> String {
    jiff::Zoned::now().strftime("%H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> TopReport {
        TopReport {
            interval_ms: 1000,
            sample_us: 10,
            flows: 0,
            busy: 0,
            classes: vec![],
            programs: vec![],
            users: vec![],
            units: vec![],
            conns: vec![],
        }
    }

    fn press(app: &mut App, code: KeyCode) -> Action {
        app.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn keys_switch_views_sort_and_quit() {
        let mut app = App::new(report());
        assert_eq!(press(&mut app, KeyCode::Tab), Action::Stay);
        assert_eq!(app.view, View::Programs);
        press(&mut app, KeyCode::BackTab);
        press(&mut app, KeyCode::BackTab);
        assert_eq!(app.view, View::Conns);
        press(&mut app, KeyCode::Char('3'));
        assert_eq!(app.view, View::Users);
        press(&mut app, KeyCode::Char('9'));
        assert_eq!(app.view, View::Users);
        press(&mut app, KeyCode::Char('s'));
        assert_eq!(app.sort, Sort::Name);
        app.refreshed(Err("the daemon went away".into()));
        assert!(app.report.is_some() && app.error.is_some());
        app.refreshed(Ok(report()));
        assert_eq!(app.error, None);
        assert_eq!(press(&mut app, KeyCode::Char('q')), Action::Quit);
        assert_eq!(app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
        assert_eq!(press(&mut app, KeyCode::Esc), Action::Quit);
    }
}
