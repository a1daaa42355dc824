//! What a bench run found: rows of (what, shaper's figure, the peer's figure,
//! ratio), printed as a table and written as JSON, plus the per-class series
//! the plot draws.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use shaper_user::{
    table::Table,
    units::{format_bytes, format_rate},
};

/// The unit of a figure, which decides how it prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Nanos,
    Micros,
    Millis,
    BitsPerSecond,
    PacketsPerSecond,
    Bytes,
    /// A share of one CPU core, in percent.
    CpuPercent,
    Count,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Nanos => "ns",
            Unit::Micros => "us",
            Unit::Millis => "ms",
            Unit::BitsPerSecond => "bit/s",
            Unit::PacketsPerSecond => "packets/s",
            Unit::Bytes => "bytes",
            Unit::CpuPercent => "% of a core",
            Unit::Count => "count",
        }
    }
}

/// A measured value and its unit.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    pub value: f64,
    pub unit: Unit,
}

impl Figure {
    pub fn new(value: f64, unit: Unit) -> Self {
        Self { value, unit }
    }

    pub fn text(&self) -> String {
        let v = self.value;
        if !v.is_finite() {
            return "-".to_string();
        }
        match self.unit {
            Unit::Nanos if v >= 10_000.0 => format!("{:.1} µs", v / 1e3),
            Unit::Nanos => format!("{v:.0} ns"),
            Unit::Micros if v >= 10_000.0 => format!("{:.1} ms", v / 1e3),
            Unit::Micros => format!("{v:.2} µs"),
            Unit::Millis => format!("{v:.1} ms"),
            Unit::BitsPerSecond => format_rate(v.max(0.0) as u64),
            Unit::PacketsPerSecond => format!("{:.0} kpps", v / 1e3),
            Unit::Bytes => format_bytes(v.max(0.0) as u64),
            Unit::CpuPercent => format!("{v:.1}%"),
            Unit::Count => format!("{v:.0}"),
        }
    }

    fn json(&self) -> Value {
        json!({ "value": finite(self.value), "unit": self.unit.name(), "text": self.text() })
    }
}

/// NaN and infinities have no JSON form.
fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// One line of the table.
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub shaper: Figure,
    /// Who shaper is compared with ("tc u32, 1000 filters", "configured", …).
    pub peer: String,
    pub peer_figure: Figure,
    /// shaper / peer, unless the row says otherwise.
    pub ratio: f64,
}

impl Row {
    /// A row whose ratio is shaper's figure over the peer's.
    pub fn new(
        section: &'static str,
        what: impl Into<String>,
        shaper: Figure,
        peer: &str,
        peer_figure: Figure,
    ) -> Self {
        Self {
            section,
            what: what.into(),
            shaper,
            peer: peer.to_string(),
            peer_figure,
            ratio: shaper.value / peer_figure.value,
        }
    }
}

impl Row {
    /// What, shaper's figure, the peer, the peer's figure, the ratio: as printed.
    fn cells(&self) -> [String; 5] {
        [
            self.what.clone(),
            self.shaper.text(),
            self.peer.clone(),
            self.peer_figure.text(),
            ratio_text(self.ratio),
        ]
    }
}

fn ratio_text(r: f64) -> String {
    match r {
        r if !r.is_finite() => "-".to_string(),
        0.0 => "0".to_string(),
        r if r.abs() >= 100.0 => format!("{r:.0}"),
        r if r.abs() >= 0.01 => format!("{r:.2}"),
        r => format!("{r:.1e}"),
    }
}

/// One class's throughput over time (for the plot).
pub struct Series {
    pub name: String,
    /// (seconds since the start, bits per second)
    pub points: Vec<(f64, f64)>,
}

/// A labelled moment on the plot's time axis.
pub struct Event {
    pub at: f64,
    pub label: String,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub series: Vec<Series>,
    pub events: Vec<Event>,
    /// What each section measured beyond its rows (raw samples, settings).
    pub details: serde_json::Map<String, Value>,
    /// Seconds each section took.
    pub timings: Vec<(&'static str, f64)>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        let [what, shaper, peer, peers, ratio] = row.cells();
        eprintln!("  {what}: {shaper} | {peer} {peers} | {ratio}");
        self.rows.push(row);
    }

    pub fn detail(&mut self, key: &str, value: Value) {
        self.details.insert(key.to_string(), value);
    }

    /// The table, a section heading before each section's rows.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        let mut table = Table::new(&[
            ("MEASURED", false),
            ("SHAPER", true),
            ("PEER", false),
            ("PEER'S", true),
            ("RATIO", true),
        ]);
        for row in &self.rows {
            if row.section != section {
                section = row.section;
                table.row(vec![
                    format!("[{section}]"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            table.row(row.cells().to_vec());
        }
        out.push_str(&table.render());
        out
    }

    /// The same as a Markdown table (for the README).
    pub fn markdown(&self) -> String {
        let mut out =
            String::from("| measured | shaper | peer | peer's | ratio |\n|---|---:|---|---:|---:|\n");
        let mut section = "";
        for row in &self.rows {
            if row.section != section {
                section = row.section;
                let _ = writeln!(out, "| **{section}** | | | | |");
            }
            let _ = writeln!(out, "| {} |", row.cells().join(" | "));
        }
        out
    }

    pub fn write_json(&self, path: &Path, total_s: f64) -> Result<()> {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "section": r.section,
                    "what": r.what,
                    "shaper": r.shaper.json(),
                    "peer": r.peer,
                    "peer_figure": r.peer_figure.json(),
                    "ratio": finite(r.ratio),
                })
            })
            .collect();
        let series: Vec<Value> =
            self.series.iter().map(|s| json!({ "class": s.name, "points_s_bps": s.points })).collect();
        let doc = json!({
            "tool": "cargo xtask bench",
            "kernel": kernel_release(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "total_s": total_s,
            "sections_s": self.timings.iter().map(|(n, s)| json!({ "section": n, "seconds": s })).collect::<Vec<_>>(),
            "rows": rows,
            "throughput_over_time": { "series": series, "events": self.events.iter().map(|e| json!({ "at_s": e.at, "label": e.label })).collect::<Vec<_>>() },
            "details": self.details,
        });
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
