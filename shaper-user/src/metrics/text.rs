//! The exposition text, in either format: metric families with their HELP
//! and TYPE lines, samples with escaped labels, and the differences between
//! the two formats kept in one place.
//!
//! | | Prometheus text 0.0.4 | OpenMetrics 1.0.0 |
//! |---|---|---|
//! | counter family `x` | `# TYPE x_total counter`, sample `x_total` | `# TYPE x counter`, sample `x_total` |
//! | info family `x` | `# TYPE x_info gauge`, sample `x_info` | `# TYPE x info`, sample `x_info` |
//! | HELP escapes | `\\`, newline | `\\`, newline, `"` |
//! | end | — | `# EOF` |

use std::fmt::Write as _;

use super::Format;

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A constant 1 whose labels carry the facts (`_info`).
    Info,
}

/// A sample's labels: (name, value) pairs, values escaped when written.
pub type Labels<'a> = [(&'a str, &'a str)];

/// Text being written in one format.
pub struct Exposition {
    format: Format,
    out: String,
}

impl Exposition {
    /// Text in `format`, with room for about `bytes`.
    pub fn new(format: Format, bytes: usize) -> Self {
        Self::in_buffer(format, String::new(), bytes)
    }

    /// Text in `format` written into `buffer` (emptied first, its room
    /// kept: a scrape that reuses the last one's buffer touches no new page).
    pub fn in_buffer(format: Format, mut buffer: String, bytes: usize) -> Self {
        buffer.clear();
        buffer.reserve(bytes);
        Self { format, out: buffer }
    }

    /// Starts family `name` (without `_total` or `_info`): its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> Family<'_> {
        let om = self.format == Format::OpenMetrics;
        let (shown, type_name) = match (kind, om) {
            (Kind::Counter, true) => (name.to_string(), "counter"),
            (Kind::Counter, false) => (format!("{name}_total"), "counter"),
            (Kind::Info, true) => (name.to_string(), "info"),
            (Kind::Info, false) => (format!("{name}_info"), "gauge"),
            (Kind::Gauge, _) => (name.to_string(), "gauge"),
            (Kind::Histogram, _) => (name.to_string(), "histogram"),
        };
        let _ = writeln!(self.out, "# HELP {shown} {}", escape_help(help, om));
        let _ = writeln!(self.out, "# TYPE {shown} {type_name}");
        let sample = match kind {
            Kind::Counter => format!("{name}_total"),
            Kind::Info => format!("{name}_info"),
            Kind::Gauge | Kind::Histogram => name.to_string(),
        };
        Family { out: &mut self.out, sample }
    }

    /// The finished text (OpenMetrics ends with `# EOF`).
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A sample's labels, written once for all the families that use them:
/// `{class="web",interface="eth1"}`, or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSet(String);

impl LabelSet {
    pub fn new(pairs: &Labels<'_>) -> Self {
        let mut out = String::new();
        for (i, (name, value)) in pairs.iter().enumerate() {
            out.push(if i == 0 { '{' } else { ',' });
            out.push_str(name);
            out.push_str("=\"");
            escape_label_into(&mut out, value);
            out.push('"');
        }
        if !out.is_empty() {
            out.push('}');
        }
        Self(out)
    }

    /// These labels and one more.
    fn and(&self, name: &str, value: &str) -> LabelSet {
        let mut out = match self.0.strip_suffix('}') {
            Some(open) => format!("{open},"),
            None => "{".to_string(),
        };
        out.push_str(name);
        out.push_str("=\"");
        escape_label_into(&mut out, value);
        out.push_str("\"}");
        LabelSet(out)
    }
}

/// The samples of one family.
pub struct Family<'a> {
    out: &'a mut String,
    /// The sample name: the family's, with `_total` or `_info` where its kind wants it.
    sample: String,
}

impl Family<'_> {
    /// One sample of an integer value.
    pub fn int(&mut self, labels: &LabelSet, value: u64) {
        self.start("", labels);
        self.out.push_str(itoa::Buffer::new().format(value));
        self.out.push('\n');
    }

    /// One sample of a float value.
    pub fn float(&mut self, labels: &LabelSet, value: f64) {
        self.start("", labels);
        self.out.push_str(&number(value));
        self.out.push('\n');
    }

    /// One sample of `eighths` / 8, written exactly (bits as bytes).
    pub fn eighths(&mut self, labels: &LabelSet, eighths: u64) {
        const FRACTIONS: [&str; 8] = ["", ".125", ".25", ".375", ".5", ".625", ".75", ".875"];
        self.start("", labels);
        let fraction = FRACTIONS.get((eighths % 8) as usize).copied().unwrap_or_default();
        self.out.push_str(itoa::Buffer::new().format(eighths / 8));
        self.out.push_str(fraction);
        self.out.push('\n');
    }

    /// The samples of a histogram: cumulative `_bucket`s ending at `+Inf`, `_sum`, `_count`.
    pub fn histogram(&mut self, labels: &LabelSet, h: &super::Histogram) {
        for (le, count) in h.cumulative() {
            let le = le.map_or_else(|| "+Inf".to_string(), |us| number(us as f64 / 1e6));
            self.start("_bucket", &labels.and("le", &le));
            let _ = writeln!(self.out, "{count}");
        }
        self.start("_sum", labels);
        self.out.push_str(&number(h.sum_seconds()));
        self.out.push('\n');
        self.start("_count", labels);
        let _ = writeln!(self.out, "{}", h.count());
    }

    /// A sample line up to its value: name, suffix, labels, the space.
    fn start(&mut self, suffix: &str, labels: &LabelSet) {
        self.out.push_str(&self.sample);
        self.out.push_str(suffix);
        self.out.push_str(&labels.0);
        self.out.push(' ');
    }
}

/// A label value as the formats want it: `\` `"` and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_label_into(&mut out, value);
    out
}

fn escape_label_into(out: &mut String, value: &str) {
    if !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: `\` and newline escaped, and `"` in OpenMetrics.
fn escape_help(text: &str, openmetrics: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if openmetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// A float as both formats read it, always with a decimal point or an
/// exponent ("1.0", "0.005", "+Inf"): bucket bounds are compared as text.
pub fn number(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let text = format!("{value}");
    if text.contains(['.', 'e', 'E']) {
        text
    } else {
        format!("{text}.0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        assert_eq!(escape_label("plain-name_1"), "plain-name_1");
        let mut text = Exposition::new(Format::Text, 0);
        text.family("shaper_x", Kind::Gauge, "A \"quoted\" help\\ with\na newline.")
            .int(&LabelSet::new(&[("class", "we\"b\\\n")]), 7);
        assert_eq!(
            text.finish(),
            "# HELP shaper_x A \"quoted\" help\\\\ with\\na newline.\n# TYPE shaper_x gauge\n\
             shaper_x{class=\"we\\\"b\\\\\\n\"} 7\n"
        );
    }

    #[test]
    fn counters_and_infos_are_named_as_each_format_wants() {
        let write = |format| {
            let mut text = Exposition::new(format, 0);
            text.family("shaper_bytes", Kind::Counter, "Bytes.")
                .int(&LabelSet::new(&[("a", "b"), ("c", "d")]), 3);
            text.family("shaper_build", Kind::Info, "Build.").int(&LabelSet::new(&[("version", "1.0")]), 1);
            text.family("shaper_help", Kind::Gauge, "say \"hi\"").float(&LabelSet::default(), 0.25);
            text.finish()
        };
        assert_eq!(
            write(Format::Text),
            "# HELP shaper_bytes_total Bytes.\n# TYPE shaper_bytes_total counter\n\
             shaper_bytes_total{a=\"b\",c=\"d\"} 3\n\
             # HELP shaper_build_info Build.\n# TYPE shaper_build_info gauge\n\
             shaper_build_info{version=\"1.0\"} 1\n\
             # HELP shaper_help say \"hi\"\n# TYPE shaper_help gauge\nshaper_help 0.25\n"
        );
        assert_eq!(
            write(Format::OpenMetrics),
            "# HELP shaper_bytes Bytes.\n# TYPE shaper_bytes counter\n\
             shaper_bytes_total{a=\"b\",c=\"d\"} 3\n\
             # HELP shaper_build Build.\n# TYPE shaper_build info\n\
             shaper_build_info{version=\"1.0\"} 1\n\
             # HELP shaper_help say \\\"hi\\\"\n# TYPE shaper_help gauge\nshaper_help 0.25\n# EOF\n"
        );
    }

    #[test]
    fn label_sets_are_written_once_and_extended() {
        assert_eq!(LabelSet::new(&[]).0, "");
        let set = LabelSet::new(&[("a", "x\"y"), ("b", "z")]);
        assert_eq!(set.0, r#"{a="x\"y",b="z"}"#);
        assert_eq!(set.and("le", "0.5").0, r#"{a="x\"y",b="z",le="0.5"}"#);
        assert_eq!(LabelSet::default().and("le", "+Inf").0, r#"{le="+Inf"}"#);
    }

    #[test]
    fn a_reused_buffer_keeps_its_room_not_its_text() {
        let write = |buffer: String, value: u64| {
            let mut text = Exposition::in_buffer(Format::Text, buffer, 4096);
            text.family("shaper_n", Kind::Gauge, "N.").int(&LabelSet::default(), value);
            text.finish()
        };
        let first = write(String::new(), 1);
        let (room, at) = (first.capacity(), first.as_ptr());
        assert!(room >= 4096, "{room}");
        let second = write(first, 22);
        assert_eq!(second, "# HELP shaper_n N.\n# TYPE shaper_n gauge\nshaper_n 22\n");
        assert_eq!((second.capacity(), second.as_ptr()), (room, at), "the same allocation");
    }

    #[test]
    fn eighths_are_exact() {
        let mut text = Exposition::new(Format::Text, 0);
        let mut family = text.family("shaper_r", Kind::Gauge, "R.");
        for bits in [0, 8, 5_000_000, 1, 12, 1_000_000_007] {
            family.eighths(&LabelSet::default(), bits);
        }
        let values: Vec<String> = text
            .finish()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace("shaper_r ", ""))
            .collect();
        assert_eq!(values, ["0", "1", "625000", "0.125", "1.5", "125000000.875"]);
    }

    #[test]
    fn numbers_always_read_as_floats() {
        assert_eq!(number(1.0), "1.0");
        assert_eq!(number(0.005), "0.005");
        assert_eq!(number(0.00005), "0.00005");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
