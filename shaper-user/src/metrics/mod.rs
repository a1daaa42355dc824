//! Metrics for the monitoring people already run: the daemon's counters as
//! Prometheus text (0.0.4) or OpenMetrics (1.0.0), served over HTTP at
//! `/metrics` when `[daemon] metrics` is set, and printed by `shaper metrics`.
//!
//! | module | what |
//! |---|---|
//! | [`series`] | every series and its help, from a [`Snapshot`] of the daemon |
//! | [`text`] | the exposition formats: HELP/TYPE lines, escaping, numbers |
//! | [`histogram`] | duration histograms (scan time, decision latency) |
//! | [`http`] | the small HTTP/1.1 server: one GET per connection, bounded and timed out |

pub mod histogram;
pub mod http;
pub mod series;
pub mod text;

use std::collections::BTreeMap;

pub use histogram::Histogram;

use crate::control::protocol::{ClassRow, Decisions, MapUsage};

/// The exposition format a scrape asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4: what a scrape gets unless it asks for
    /// OpenMetrics, and what node_exporter's textfile collector reads.
    Text,
    OpenMetrics,
}

const OPENMETRICS_TYPE: &str = "application/openmetrics-text";

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (version 1.0.0 or none) at least as
    /// high as anything the text format matches; else the text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Format::Text };
        let (mut openmetrics, mut text) = (0.0f64, 0.0f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0f64, None);
            for param in parts {
                match param.split_once('=').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim())) {
                    Some((k, v)) if k == "q" => q = v.parse().unwrap_or(0.0),
                    Some((k, v)) if k == "version" => version = Some(v.trim_matches('"').to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                OPENMETRICS_TYPE if version.as_deref().is_none_or(|v| v == "1.0.0") => {
                    openmetrics = openmetrics.max(q)
                }
                "text/plain" if version.as_deref().is_none_or(|v| v == "0.0.4") => text = text.max(q),
                "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// What the daemon knows at one moment, for one scrape.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// One row per class, interface and direction (as `shaper classes`).
    pub classes: Vec<ClassRow>,
    /// Entries in the flow map at the last reconcile.
    pub flows: usize,
    pub maps: Vec<MapUsage>,
    /// The classifier's error counters by name (`shaper_common::ERROR_NAMES`).
    pub errors: Vec<(String, u64)>,
    /// Live instances by class (classes with `per`).
    pub instances: BTreeMap<String, u64>,
    pub decisions: Decisions,
    pub scan_durations: Histogram,
    pub decision_latency: Histogram,
}

impl Snapshot {
    /// The exposition text in `format`.
    pub fn render(&self, format: Format) -> String {
        self.render_into(format, String::new())
    }

    /// The exposition text in `format`, written into `buffer` (its text
    /// replaced, its room kept).
    pub fn render_into(&self, format: Format, buffer: String) -> String {
        series::write(self, format, buffer)
    }
}

#[cfg(test)]
mod tests;
