//! Shell-style glob patterns for `~`: `*` (any run), `?` (one character),
//! `[abc]`, `[a-z]` and `[!a-z]` (one character of, or not of, a set).
//! Matching is iterative and linear in practice (no backtracking blow-up).

/// One piece of a compiled pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Char(char),
    Any,
    Star,
    Set { negated: bool, ranges: Vec<(char, char)> },
}

/// A compiled glob pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("\"[\" at character {0} of the pattern is never closed")]
pub struct GlobError(pub usize);

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut pieces = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i += 1;
            match c {
                '*' => {
                    if pieces.last() != Some(&Piece::Star) {
                        pieces.push(Piece::Star);
                    }
                }
                '?' => pieces.push(Piece::Any),
                '\\' => {
                    pieces.push(Piece::Char(chars.get(i).copied().unwrap_or('\\')));
                    i += 1;
                }
                '[' => {
                    let open = i - 1;
                    let negated = matches!(chars.get(i), Some('!') | Some('^'));
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(i) else { return Err(GlobError(open + 1)) };
                        if c == ']' && !first {
                            i += 1;
                            break;
                        }
                        first = false;
                        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&e| e != ']') {
                            let end = chars.get(i + 2).copied().unwrap_or(c);
                            ranges.push((c, end));
                            i += 3;
                        } else {
                            ranges.push((c, c));
                            i += 1;
                        }
                    }
                    pieces.push(Piece::Set { negated, ranges });
                }
                c => pieces.push(Piece::Char(c)),
            }
        }
        Ok(Self { pieces })
    }

    /// Whether the pattern has any wildcard (a pattern without one is an exact match).
    pub fn is_literal(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Char(_)))
    }

    /// For a pattern that is a literal followed by one `*` ("rsync*"), the literal.
    pub fn prefix_only(&self) -> Option<String> {
        let (last, init) = self.pieces.split_last()?;
        if *last != Piece::Star {
            return None;
        }
        init.iter()
            .map(|p| match p {
                Piece::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    pub fn matches(&self, text: &str) -> bool {
        // The character at byte offset `t` of the text (no allocation: the
        // daemon runs many patterns over each process's arguments).
        let at = |t: usize| text.get(t..).and_then(|rest| rest.chars().next());
        let (mut p, mut t) = (0usize, 0usize);
        // Where to resume after the last star: (pattern index after it, text offset).
        let mut resume: Option<(usize, usize)> = None;
        loop {
            let piece = self.pieces.get(p);
            let ch = at(t);
            match (piece, ch) {
                (Some(Piece::Star), _) => {
                    resume = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                (Some(piece), Some(c)) if one(piece, c) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                (None, None) => return true,
                _ => {}
            }
            // Mismatch: let the last star eat one more character.
            match resume.and_then(|(rp, rt)| at(rt).map(|c| (rp, rt + c.len_utf8()))) {
                Some((rp, rt)) => {
                    resume = Some((rp, rt));
                    p = rp;
                    t = rt;
                }
                None => return false,
            }
        }
    }
}

/// The pattern written back (`*`, `?`, `[a-z]`, `[!a-z]`, escapes), for
/// `shaper explain`.
impl std::fmt::Display for Glob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for piece in &self.pieces {
            match piece {
                Piece::Char(c) if matches!(c, '*' | '?' | '[' | '\\') => write!(f, "\\{c}")?,
                Piece::Char(c) => write!(f, "{c}")?,
                Piece::Any => f.write_str("?")?,
                Piece::Star => f.write_str("*")?,
                Piece::Set { negated, ranges } => {
                    f.write_str(if *negated { "[!" } else { "[" })?;
                    for (lo, hi) in ranges {
                        if lo == hi {
                            write!(f, "{lo}")?;
                        } else {
                            write!(f, "{lo}-{hi}")?;
                        }
                    }
                    f.write_str("]")?;
                }
            }
        }
        Ok(())
    }
}

fn one(piece: &Piece, c: char) -> bool {
    match piece {
        Piece::Char(x) => *x == c,
        Piece::Any => true,
        Piece::Star => false,
        Piece::Set { negated, ranges } => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated,
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).unwrap().matches(text)
    }

    #[test]
    fn wildcards() {
        assert!(m("rsync", "rsync"));
        assert!(!m("rsync", "rsyncd"));
        assert!(m("rsync*", "rsyncd"));
        assert!(m("*--limit-rate*", "--limit-rate=5k"));
        assert!(m("http?", "https"));
        assert!(!m("http?", "http"));
        assert!(m("*.service", "sshd.service"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("*", ""));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(Glob::new("[abc").is_err());
        assert!(Glob::new("ssh").unwrap().is_literal());
        assert!(!Glob::new("ss*").unwrap().is_literal());
        assert_eq!(Glob::new("rsync*").unwrap().prefix_only().as_deref(), Some("rsync"));
        assert_eq!(Glob::new("/system.slice/*").unwrap().prefix_only().as_deref(), Some("/system.slice/"));
        assert_eq!(Glob::new("*sync").unwrap().prefix_only(), None);
        assert_eq!(Glob::new("r?ync*").unwrap().prefix_only(), None);
        // Many stars on a long text stay fast.
        let long = "a".repeat(10_000);
        assert!(!m("*a*a*a*a*a*b", &long));
        // Characters past ASCII count as one each.
        assert!(m("?é*ü", "xéabcü"));
        assert!(!m("?é", "éé é"));
        for pattern in ["rsync*", "[!a-c]x?", "\\*lit", "*.service"] {
            assert_eq!(Glob::new(pattern).unwrap().to_string(), pattern);
        }
    }
}
