//! Draws the live view: a title line, the view tabs, the current view's
//! table, and a help line with the keys.

use ratatui::{
    layout::{Alignment, Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Row, Table, Tabs},
    Frame,
};

use super::{
    app::App,
    views::{grid, summary, Grid, View},
};

pub(crate) fn draw(frame: &mut Frame<'_>, app: &App) {
    let [title, tabs, body, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let line = match (&app.error, &app.report) {
        (Some(e), _) => format!("shaper top, {}: refresh failed: {e}", app.at),
        (None, Some(report)) => format!("shaper top, {}: {}", app.at, summary(report)),
        (None, None) => "shaper top".to_string(),
    };
    frame.render_widget(Line::from(line).style(Style::new().add_modifier(Modifier::BOLD)), title);
    let titles = View::ALL.iter().enumerate().map(|(i, v)| format!("{} {}", i + 1, v.title()));
    let selected = View::ALL.iter().position(|v| *v == app.view);
    frame.render_widget(
        Tabs::new(titles).select(selected).highlight_style(Style::new().add_modifier(Modifier::REVERSED)),
        tabs,
    );
    if let Some(report) = &app.report {
        frame.render_widget(table(grid(report, app.view, app.sort)), body);
    }
    let keys = format!("1-5/Tab: view   s: sort (now by {})   q: quit", app.sort.as_str());
    frame.render_widget(Line::from(keys).style(Style::new().add_modifier(Modifier::DIM)), help);
}

fn table(g: Grid) -> Table<'static> {
    let mut widths: Vec<usize> = g.columns.iter().map(|(h, _)| h.chars().count()).collect();
    for row in &g.rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let align = |right: bool| if right { Alignment::Right } else { Alignment::Left };
    let header =
        Row::new(g.columns.iter().map(|(h, right)| Cell::from(Line::from(*h).alignment(align(*right)))))
            .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let rights: Vec<bool> = g.columns.iter().map(|(_, r)| *r).collect();
    let rows = g.rows.into_iter().map(|cells| {
        Row::new(
            cells
                .into_iter()
                .zip(&rights)
                .map(|(text, right)| Cell::from(Line::from(text).alignment(align(*right)))),
        )
    });
    let constraints: Vec<Constraint> = widths.iter().map(|w| Constraint::Length(*w as u16)).collect();
    Table::new(rows, constraints).header(header).column_spacing(2)
}
