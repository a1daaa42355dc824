//! Tokens of the `match` language, each with its byte span in the source.

use std::net::IpAddr;

use super::RuleError;

/// Byte range of a token or expression inside the `match` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span { start: self.start.min(other.start), end: self.end.max(other.end) }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    /// An attribute name or keyword (`and`, `or`, `not`, `in`, `true`, `false`).
    Ident(String),
    Number(u64),
    Str(String),
    Ip(IpAddr),
    /// Address and prefix length as written (validated later, with a better message).
    Cidr(IpAddr, u8),
    /// `..` of an inclusive range.
    DotDot,
    Eq,
    Ne,
    Tilde,
    Lt,
    Le,
    Gt,
    Ge,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

impl Token {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("\"{s}\""),
            Token::Number(n) => n.to_string(),
            Token::Str(s) => format!("the string {s:?}"),
            Token::Ip(a) => a.to_string(),
            Token::Cidr(a, l) => format!("{a}/{l}"),
            Token::DotDot => "\"..\"".into(),
            Token::Eq => "\"==\"".into(),
            Token::Ne => "\"!=\"".into(),
            Token::Tilde => "\"~\"".into(),
            Token::Lt => "\"<\"".into(),
            Token::Le => "\"<=\"".into(),
            Token::Gt => "\">\"".into(),
            Token::Ge => "\">=\"".into(),
            Token::LParen => "\"(\"".into(),
            Token::RParen => "\")\"".into(),
            Token::LBracket => "\"[\"".into(),
            Token::RBracket => "\"]\"".into(),
            Token::Comma => "\",\"".into(),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/')
}

/// Reads one bare word (no `..` inside): a number, address, CIDR or identifier.
fn word(text: &str, span: Span) -> Result<Token, RuleError> {
    if let Ok(n) = text.parse::<u64>() {
        return Ok(Token::Number(n));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::new(span, format!("number {text} is too large")));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Token::Ip(ip));
    }
    if let Some((addr, len)) = text.split_once('/') {
        let ip: IpAddr = addr.parse().map_err(|_| {
            RuleError::new(span, format!("{addr:?} in {text:?} is not an IPv4 or IPv6 address"))
        })?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| RuleError::new(span, format!("{text:?}: prefix length must be 0..{max}")))?;
        return Ok(Token::Cidr(ip, len));
    }
    let mut chars = text.chars();
    let ident_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if ident_start && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(Token::Ident(text.to_string()));
    }
    Err(RuleError::new(
        span,
        format!("cannot read {text:?}: expected an attribute, a number, an address or a CIDR"),
    ))
}

/// Splits `source` into tokens.
pub fn tokenize(source: &str) -> Result<Vec<(Token, Span)>, RuleError> {
    let mut tokens = Vec::new();
    let mut chars = source.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' || c == '\'' {
            chars.next();
            let mut value = String::new();
            let mut closed = false;
            while let Some((i, ch)) = chars.next() {
                if ch == c {
                    tokens.push((Token::Str(value.clone()), Span::new(start, i + 1)));
                    closed = true;
                    break;
                }
                if ch == '\\' {
                    match chars.next() {
                        Some((_, esc)) if esc == c || esc == '\\' => value.push(esc),
                        Some((j, esc)) => {
                            return Err(RuleError::new(
                                Span::new(i, j + esc.len_utf8()),
                                format!(
                                "unknown escape \"\\{esc}\" in a string (only \\\\ and \\{c} are escapes)"
                            ),
                            ))
                        }
                        None => break,
                    }
                } else {
                    value.push(ch);
                }
            }
            if !closed {
                return Err(RuleError::new(Span::new(start, source.len()), "string is not closed"));
            }
            continue;
        }
        if is_word_char(c) {
            let mut end = start;
            while let Some(&(i, ch)) = chars.peek() {
                if !is_word_char(ch) {
                    break;
                }
                end = i + ch.len_utf8();
                chars.next();
            }
            let text = &source[start..end];
            // A range `lo..hi` is one word: split it at the first "..".
            let mut rest = text;
            let mut offset = start;
            while let Some(at) = rest.find("..") {
                if at > 0 {
                    let span = Span::new(offset, offset + at);
                    tokens.push((word(&rest[..at], span)?, span));
                }
                tokens.push((Token::DotDot, Span::new(offset + at, offset + at + 2)));
                rest = &rest[at + 2..];
                offset += at + 2;
            }
            if !rest.is_empty() {
                let span = Span::new(offset, end);
                tokens.push((word(rest, span)?, span));
            }
            continue;
        }
        chars.next();
        let next = chars.peek().map(|&(_, n)| n);
        let (token, len) = match (c, next) {
            ('=', Some('=')) => (Token::Eq, 2),
            ('!', Some('=')) => (Token::Ne, 2),
            ('<', Some('=')) => (Token::Le, 2),
            ('>', Some('=')) => (Token::Ge, 2),
            ('<', _) => (Token::Lt, 1),
            ('>', _) => (Token::Gt, 1),
            ('~', _) => (Token::Tilde, 1),
            ('(', _) => (Token::LParen, 1),
            (')', _) => (Token::RParen, 1),
            ('[', _) => (Token::LBracket, 1),
            (']', _) => (Token::RBracket, 1),
            (',', _) => (Token::Comma, 1),
            ('=', _) => {
                return Err(RuleError::new(
                    Span::new(start, start + 1),
                    "\"=\" is not an operator; use \"==\"",
                ))
            }
            ('&', _) | ('|', _) | ('!', _) => {
                let hint = match c {
                    '&' => "and",
                    '|' => "or",
                    _ => "not",
                };
                return Err(RuleError::new(
                    Span::new(start, start + 1),
                    format!("unexpected {c:?}; write \"{hint}\""),
                ));
            }
            _ => {
                return Err(RuleError::new(
                    Span::new(start, start + c.len_utf8()),
                    format!("unexpected character {c:?}"),
                ))
            }
        };
        if len == 2 {
            chars.next();
        }
        tokens.push((token, Span::new(start, start + len)));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<Token> {
        tokenize(source).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    #[test]
    fn words_numbers_addresses_and_ranges() {
        use Token::*;
        assert_eq!(
            kinds("rport in 6000..6010 and raddr in fd00::/8"),
            [
                Ident("rport".into()),
                Ident("in".into()),
                Number(6000),
                DotDot,
                Number(6010),
                Ident("and".into()),
                Ident("raddr".into()),
                Ident("in".into()),
                Cidr("fd00::".parse().unwrap(), 8)
            ]
        );
        assert_eq!(kinds("rport==80"), [Ident("rport".into()), Eq, Number(80)]);
        assert_eq!(kinds("[80,443]"), [LBracket, Number(80), Comma, Number(443), RBracket]);
        assert_eq!(kinds("::1"), [Ip("::1".parse().unwrap())]);
        assert_eq!(kinds("cmd == 'a\\'b'"), [Ident("cmd".into()), Eq, Str("a'b".into())]);
        assert_eq!(kinds("1 .. 2"), [Number(1), DotDot, Number(2)]);
    }

    #[test]
    fn spans_point_into_the_source() {
        let tokens = tokenize("rport in 6000..6010").unwrap();
        let spans: Vec<(usize, usize)> = tokens.iter().map(|(_, s)| (s.start, s.end)).collect();
        assert_eq!(spans, [(0, 5), (6, 8), (9, 13), (13, 15), (15, 19)]);
    }

    #[test]
    fn lexical_errors() {
        let err = tokenize("rport = 80").unwrap_err();
        assert_eq!((err.span.start, err.message.as_str()), (6, "\"=\" is not an operator; use \"==\""));
        assert_eq!(tokenize("a && b").unwrap_err().message, "unexpected '&'; write \"and\"");
        assert_eq!(tokenize("cmd == \"x").unwrap_err().message, "string is not closed");
        assert_eq!(
            tokenize("raddr in 10.0.0.0/33").unwrap_err().message,
            "\"10.0.0.0/33\": prefix length must be 0..32"
        );
        assert_eq!(
            tokenize("rport == 99999999999999999999").unwrap_err().message,
            "number 99999999999999999999 is too large"
        );
        assert!(tokenize("1.2.3").unwrap_err().message.starts_with("cannot read \"1.2.3\""));
    }
}
