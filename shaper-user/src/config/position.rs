//! Byte offsets in the config text → line and column for people, and offsets
//! inside a TOML string value → offsets in the file.

use std::fmt;

/// A 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// The line and column of byte `offset` in `text`.
pub fn pos(text: &str, offset: usize) -> Pos {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    Pos { line: before.matches('\n').count() + 1, col: before[line_start..].chars().count() + 1 }
}

/// Where the characters of a TOML string value start in the file, given the
/// value's span (quotes included) and its decoded `value`. Literal strings
/// ('…', '''…''') and basic strings without escapes map byte for byte; for
/// others `None` (errors then point at the string's opening quote).
pub fn string_content_start(text: &str, span: std::ops::Range<usize>, value: &str) -> Option<usize> {
    let raw = text.get(span.clone())?;
    let quote_len = if raw.starts_with("'''") || raw.starts_with("\"\"\"") { 3 } else { 1 };
    let mut start = span.start + quote_len;
    if quote_len == 3 {
        // A newline right after the opening delimiter is not part of the value.
        if text.get(start..)?.starts_with("\r\n") {
            start += 2;
        } else if text.get(start..)?.starts_with('\n') {
            start += 1;
        }
    }
    (text.get(start..start + value.len())? == value).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based_and_count_characters() {
        let text = "a = 1\nnäme = 'x'\n";
        assert_eq!(pos(text, 0), Pos { line: 1, col: 1 });
        assert_eq!(pos(text, 6), Pos { line: 2, col: 1 });
        let x = text.find('x').unwrap();
        assert_eq!(pos(text, x), Pos { line: 2, col: 9 });
    }

    #[test]
    fn string_contents_map_back_to_the_file() {
        let text = "m = 'rport == 1'\nn = \"a\\tb\"\no = '''\nxy'''\n";
        let s = text.find('\'').unwrap();
        assert_eq!(string_content_start(text, s..s + 12, "rport == 1"), Some(s + 1));
        let d = text.find('"').unwrap();
        assert_eq!(string_content_start(text, d..d + 6, "a\tb"), None);
        let t = text.find("'''").unwrap();
        assert_eq!(string_content_start(text, t..t + 9, "xy"), Some(t + 4));
    }
}
