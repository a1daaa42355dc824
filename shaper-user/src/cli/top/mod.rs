//! `shaper top`: a live view of the classes and the busiest programs, users,
//! units and connections, refreshed every interval over the control socket;
//! `--batch` prints the same tables as text.
//!
//! The terminal is put back (raw mode off, the alternate screen left) however
//! the view ends: on `q`, on an error (the guard's drop) and on a panic
//! (ratatui's hook, installed when the screen is taken).

mod app;
mod batch;
mod render;
mod views;

use std::{
    io::IsTerminal as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::Args;
use ratatui::{crossterm::event, DefaultTerminal};
use shaper_user::{
    control::{client, protocol::TOP_DEFAULT},
    error_chain,
};

use super::{args::ClientArgs, watch::interval_arg};
use app::{Action, App};

#[derive(Args)]
pub(crate) struct TopArgs {
    /// Print the tables as plain text every interval instead of the live view
    /// (with --json: one JSON reply a line), like `top -b`; also when stdout is
    /// not a terminal.
    #[arg(long, short)]
    pub(crate) batch: bool,
    /// Stop after N frames [default: run until q or Ctrl-C].
    #[arg(short = 'n', value_name = "N")]
    pub(crate) frames: Option<u64>,
    /// Time between two frames: "1s", "500ms", "2" (seconds).
    #[arg(long, short = 'd', default_value = "1s", value_parser = interval_arg)]
    pub(crate) interval: Duration,
    /// Rows of each list (programs, users, units, connections).
    #[arg(long, default_value_t = TOP_DEFAULT)]
    pub(crate) rows: usize,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

pub(crate) fn run(args: &TopArgs) -> Result<()> {
    let socket = args.client.socket()?;
    // Not on a terminal (a pipe, a file, a service's log): text frames.
    if args.batch || args.client.json || !std::io::stdout().is_terminal() {
        return batch::run(args, &socket);
    }
    // Asked before the screen is taken: a daemon that is not there is said plainly.
    let first = client::top(&socket, args.rows)?;
    let mut screen = Screen::take().context("setting up the terminal")?;
    live(&mut screen.terminal, args, &socket, App::new(first))
}

/// The terminal in raw mode on the alternate screen, until dropped.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn take() -> std::io::Result<Self> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                ratatui::restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// Draws, waits for a key until the next refresh, refreshes; until `q`.
fn live(terminal: &mut DefaultTerminal, args: &TopArgs, socket: &Path, mut app: App) -> Result<()> {
    let mut next = Instant::now() + args.interval;
    let mut frames = 1u64;
    loop {
        terminal.draw(|frame| render::draw(frame, &app))?;
        if args.frames.is_some_and(|n| frames >= n) {
            return Ok(());
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let event::Event::Key(key) = event::read()? {
                if app.key(key) == Action::Quit {
                    return Ok(());
                }
            }
            continue;
        }
        next += args.interval;
        app.refreshed(client::top(socket, args.rows).map_err(|e| error_chain(&e)));
        frames += 1;
    }
}
