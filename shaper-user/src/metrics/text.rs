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
    pub fn new(format: Format) -> Self {
        Self { format, out: String::with_capacity(64 * 1024) }
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

/// The samples of one family.
pub struct Family<'a> {
    out: &'a mut String,
    /// The sample name: the family's, with `_total` or `_info` where its kind wants it.
    sample: String,
}

impl Family<'_> {
    /// One sample of an integer value.
    pub fn int(&mut self, labels: &Labels<'_>, value: u64) {
        self.line("", labels, &[], &value.to_string());
    }

    /// One sample of a float value.
    pub fn float(&mut self, labels: &Labels<'_>, value: f64) {
        self.line("", labels, &[], &number(value));
    }

    /// The samples of a histogram: cumulative `_bucket`s ending at `+Inf`, `_sum`, `_count`.
    pub fn histogram(&mut self, labels: &Labels<'_>, h: &super::Histogram) {
        for (le, count) in h.cumulative() {
            let le = le.map_or_else(|| "+Inf".to_string(), |us| number(us as f64 / 1e6));
            self.line("_bucket", labels, &[("le", &le)], &count.to_string());
        }
        self.line("_sum", labels, &[], &number(h.sum_seconds()));
        self.line("_count", labels, &[], &h.count().to_string());
    }

    fn line(&mut self, suffix: &str, labels: &Labels<'_>, extra: &Labels<'_>, value: &str) {
        self.out.push_str(&self.sample);
        self.out.push_str(suffix);
        let mut all = labels.iter().chain(extra).peekable();
        if all.peek().is_some() {
            self.out.push('{');
            for (i, (name, value)) in all.enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(name);
                self.out.push_str("=\"");
                escape_label_into(self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        self.out.push('\n');
    }
}

/// A label value as the formats want it: `\` `"` and newline escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_label_into(&mut out, value);
    out
}

fn escape_label_into(out: &mut String, value: &str) {
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
        let mut text = Exposition::new(Format::Text);
        text.family("shaper_x", Kind::Gauge, "A \"quoted\" help\\ with\na newline.")
            .int(&[("class", "we\"b\\\n")], 7);
        assert_eq!(
            text.finish(),
            "# HELP shaper_x A \"quoted\" help\\\\ with\\na newline.\n# TYPE shaper_x gauge\n\
             shaper_x{class=\"we\\\"b\\\\\\n\"} 7\n"
        );
    }

    #[test]
    fn counters_and_infos_are_named_as_each_format_wants() {
        let write = |format| {
            let mut text = Exposition::new(format);
            text.family("shaper_bytes", Kind::Counter, "Bytes.").int(&[("a", "b"), ("c", "d")], 3);
            text.family("shaper_build", Kind::Info, "Build.").int(&[("version", "1.0")], 1);
            text.family("shaper_help", Kind::Gauge, "say \"hi\"").float(&[], 0.25);
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
    fn numbers_always_read_as_floats() {
        assert_eq!(number(1.0), "1.0");
        assert_eq!(number(0.005), "0.005");
        assert_eq!(number(0.00005), "0.00005");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
