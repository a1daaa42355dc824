//! Recursive-descent parser for the `match` language:
//!
//! ```text
//! expr  := or
//! or    := and ("or" and)*
//! and   := unary ("and" unary)*
//! unary := "not" unary | "(" expr ")" | "true" | "false" | cmp
//! cmp   := ATTR ["[" NUMBER "]"] OP VALUE
//! OP    := == | != | in | not in | ~ | < | <= | > | >=
//! VALUE := scalar | scalar ".." scalar | "[" VALUE ("," VALUE)* [","] "]"
//! scalar:= NUMBER | STRING | IP | CIDR
//! ```

use super::{
    ast::{Attr, Cmp, Expr, Op, Spanned, Value},
    lexer::{tokenize, Span, Token},
    RuleError,
};

/// Nesting depth beyond which an expression is refused (keeps the parser's stack bounded).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    tokens: Vec<(Token, Span)>,
    pos: usize,
    source: &'a str,
    depth: usize,
}

/// Parses a `match` string.
pub fn parse(source: &str) -> Result<Expr, RuleError> {
    let tokens = tokenize(source)?;
    let mut parser = Parser { tokens, pos: 0, source, depth: 0 };
    if parser.tokens.is_empty() {
        return Err(RuleError::new(Span::new(0, source.len()), "empty match: write a condition, or `true`"));
    }
    let expr = parser.or()?;
    if let Some((token, span)) = parser.peek() {
        let hint = match token {
            Token::RParen => "\")\" without a matching \"(\"".to_string(),
            Token::Ident(_) | Token::LParen => {
                format!("expected \"and\" or \"or\" before {}", token.describe())
            }
            _ => format!("unexpected {}", token.describe()),
        };
        return Err(RuleError::new(span, hint));
    }
    Ok(expr)
}

fn is_keyword(token: &Token, word: &str) -> bool {
    matches!(token, Token::Ident(w) if w == word)
}

impl Parser<'_> {
    fn peek(&self) -> Option<(Token, Span)> {
        self.tokens.get(self.pos).cloned()
    }

    fn next(&mut self) -> Option<(Token, Span)> {
        let token = self.peek();
        if token.is_some() {
            self.pos += 1;
        }
        token
    }

    fn end_span(&self) -> Span {
        Span::new(self.source.len(), self.source.len())
    }

    fn at_keyword(&self, word: &str) -> bool {
        self.peek().is_some_and(|(t, _)| is_keyword(&t, word))
    }

    fn expect_more(&mut self, what: &str) -> Result<(Token, Span), RuleError> {
        self.next().ok_or_else(|| {
            RuleError::new(self.end_span(), format!("unexpected end of the match: expected {what}"))
        })
    }

    fn or(&mut self) -> Result<Expr, RuleError> {
        let mut items = vec![self.and()?];
        while self.at_keyword("or") {
            self.next();
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::Or(items) })
    }

    fn and(&mut self) -> Result<Expr, RuleError> {
        let mut items = vec![self.unary()?];
        while self.at_keyword("and") {
            self.next();
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::And(items) })
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        let (token, span) = self.expect_more("a condition")?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(RuleError::new(span, format!("expression nested deeper than {MAX_DEPTH} levels")));
        }
        let result = match token {
            Token::Ident(w) if w == "not" => self.unary().map(|e| Expr::Not(Box::new(e))),
            Token::Ident(w) if w == "true" => Ok(Expr::Bool(true)),
            Token::Ident(w) if w == "false" => Ok(Expr::Bool(false)),
            Token::LParen => {
                let inner = self.or()?;
                match self.next() {
                    Some((Token::RParen, _)) => Ok(inner),
                    Some((t, s)) => Err(RuleError::new(s, format!("expected \")\", found {}", t.describe()))),
                    None => Err(RuleError::new(span, "\"(\" is never closed")),
                }
            }
            Token::Ident(w) if matches!(w.as_str(), "and" | "or" | "in") => {
                Err(RuleError::new(span, format!("expected a condition, found \"{w}\"")))
            }
            Token::Ident(name) => self.cmp(&name, span).map(Expr::Cmp),
            other => Err(RuleError::new(
                span,
                format!("expected an attribute such as rport, found {}", other.describe()),
            )),
        };
        self.depth -= 1;
        result
    }

    fn cmp(&mut self, name: &str, span: Span) -> Result<Cmp, RuleError> {
        let attr = Attr::from_name(name).ok_or_else(|| unknown_attribute(name, span))?;
        let attr = Spanned::new(attr, span);
        let mut index = None;
        if let Some((Token::LBracket, open)) = self.peek() {
            self.next();
            let (token, num_span) = self.expect_more("an index")?;
            let Token::Number(n) = token else {
                return Err(RuleError::new(
                    num_span,
                    format!("expected an index number, found {}", token.describe()),
                ));
            };
            let n = u32::try_from(n).map_err(|_| RuleError::new(num_span, "index too large"))?;
            match self.next() {
                Some((Token::RBracket, close)) => index = Some(Spanned::new(n, open.to(close))),
                Some((t, s)) => {
                    return Err(RuleError::new(s, format!("expected \"]\", found {}", t.describe())))
                }
                None => return Err(RuleError::new(open, "\"[\" is never closed")),
            }
        }
        let (token, op_span) = self.expect_more(&format!("an operator after {name}"))?;
        let op = match token {
            Token::Eq => Op::Eq,
            Token::Ne => Op::Ne,
            Token::Tilde => Op::Glob,
            Token::Lt => Op::Lt,
            Token::Le => Op::Le,
            Token::Gt => Op::Gt,
            Token::Ge => Op::Ge,
            Token::Ident(w) if w == "in" => Op::In,
            Token::Ident(w) if w == "not" => match self.next() {
                Some((Token::Ident(w), s)) if w == "in" => {
                    return self.finish_cmp(attr, index, Spanned::new(Op::NotIn, op_span.to(s)));
                }
                _ => return Err(RuleError::new(op_span, "expected \"not in\"")),
            },
            other => {
                return Err(RuleError::new(
                    op_span,
                    format!(
                        "expected an operator (==, !=, in, not in, ~, <, <=, >, >=) after {name}, found {}",
                        other.describe()
                    ),
                ))
            }
        };
        self.finish_cmp(attr, index, Spanned::new(op, op_span))
    }

    fn finish_cmp(
        &mut self,
        attr: Spanned<Attr>,
        index: Option<Spanned<u32>>,
        op: Spanned<Op>,
    ) -> Result<Cmp, RuleError> {
        let value = self.value(0)?;
        Ok(Cmp { attr, index, op, value })
    }

    fn scalar(&mut self) -> Result<Spanned<Value>, RuleError> {
        let (token, span) = self.expect_more("a value")?;
        let value = match token {
            Token::Number(n) => Value::Number(n),
            Token::Str(s) => Value::Str(s),
            Token::Ip(a) => Value::Ip(a),
            Token::Cidr(a, l) => Value::Cidr(a, l),
            Token::Ident(w) => {
                return Err(RuleError::new(
                    span,
                    format!("expected a value, found {w}; strings need quotes: \"{w}\""),
                ))
            }
            other => {
                return Err(RuleError::new(span, format!("expected a value, found {}", other.describe())))
            }
        };
        Ok(Spanned::new(value, span))
    }

    fn value(&mut self, depth: usize) -> Result<Spanned<Value>, RuleError> {
        if let Some((Token::LBracket, open)) = self.peek() {
            if depth > 0 {
                return Err(RuleError::new(open, "lists cannot be nested"));
            }
            self.next();
            let mut items = Vec::new();
            loop {
                if let Some((Token::RBracket, close)) = self.peek() {
                    self.next();
                    if items.is_empty() {
                        return Err(RuleError::new(open.to(close), "empty list"));
                    }
                    return Ok(Spanned::new(Value::List(items), open.to(close)));
                }
                items.push(self.value(depth + 1)?);
                match self.next() {
                    Some((Token::Comma, _)) => {}
                    Some((Token::RBracket, close)) => {
                        return Ok(Spanned::new(Value::List(items), open.to(close)))
                    }
                    Some((t, s)) => {
                        return Err(RuleError::new(
                            s,
                            format!("expected \",\" or \"]\", found {}", t.describe()),
                        ))
                    }
                    None => return Err(RuleError::new(open, "\"[\" is never closed")),
                }
            }
        }
        let lo = self.scalar()?;
        if let Some((Token::DotDot, _)) = self.peek() {
            self.next();
            let hi = self.scalar()?;
            let span = lo.span.to(hi.span);
            return Ok(Spanned::new(Value::Range(Box::new(lo), Box::new(hi)), span));
        }
        Ok(lo)
    }
}

/// Edit distance counting a swap of neighbours as one edit ("rprot" is one from "rport").
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn unknown_attribute(name: &str, span: Span) -> RuleError {
    let close = Attr::ALL.iter().map(|a| (distance(name, a.name()), a.name())).min();
    let message = match close {
        Some((d, best)) if d <= 2 => format!("unknown attribute \"{name}\"; did you mean \"{best}\"?"),
        _ => {
            let all: Vec<&str> = Attr::ALL.iter().map(|a| a.name()).collect();
            format!("unknown attribute \"{name}\"; attributes are {}", all.join(", "))
        }
    };
    RuleError::new(span, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(source: &str) -> String {
        parse(source).unwrap_or_else(|e| panic!("{source}: {e:?}")).to_string()
    }

    fn error(source: &str) -> (usize, String) {
        let e = parse(source).unwrap_err();
        (e.span.start, e.message)
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_both() {
        assert_eq!(
            canonical("rport == 1 or rport == 2 and rport == 3"),
            "rport == 1 or rport == 2 and rport == 3"
        );
        assert_eq!(
            canonical("(rport == 1 or rport == 2) and rport == 3"),
            "(rport == 1 or rport == 2) and rport == 3"
        );
        assert_eq!(
            parse("a_or_b").unwrap_err().message,
            "unknown attribute \"a_or_b\"; attributes are proto, raddr, rport, laddr, lport, service, user, uid, group, gid, pid, cmd, exe, args, cgroup, unit, parent, ancestor"
        );
        let e = parse("rport == 1 or rport == 2 and rport == 3").unwrap();
        let Expr::Or(items) = e else { panic!("top level is not an or") };
        assert!(matches!(&items[1], Expr::And(v) if v.len() == 2));
        let e = parse("not rport == 1 and lport == 2").unwrap();
        let Expr::And(items) = e else { panic!("top level is not an and") };
        assert!(matches!(&items[0], Expr::Not(_)));
        assert_eq!(canonical("not (rport == 1 and lport == 2)"), "not (rport == 1 and lport == 2)");
        assert_eq!(canonical("not not true"), "not not true");
    }

    #[test]
    fn values_lists_ranges_cidrs_and_v6() {
        assert_eq!(canonical("rport in [80, 443, 8000..8080,]"), "rport in [80, 443, 8000..8080]");
        assert_eq!(canonical("raddr in 198.18.0.0/15"), "raddr in 198.18.0.0/15");
        assert_eq!(canonical("raddr in [fd00::/8, 2001:db8::1]"), "raddr in [fd00::/8, 2001:db8::1]");
        assert_eq!(canonical("laddr not in 10.0.0.1..10.0.0.9"), "laddr not in 10.0.0.1..10.0.0.9");
        assert_eq!(canonical("cmd ~ 'rsync*'"), "cmd ~ \"rsync*\"");
        assert_eq!(canonical("args[1] == \"sync\""), "args[1] == \"sync\"");
        assert_eq!(canonical("uid>=1000"), "uid >= 1000");
        assert_eq!(canonical("false or true"), "false or true");
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        assert_eq!(error("rprot == 80"), (0, "unknown attribute \"rprot\"; did you mean \"rport\"?".into()));
        assert_eq!(
            error("rport == 80 rport == 81"),
            (12, "expected \"and\" or \"or\" before \"rport\"".into())
        );
        assert_eq!(error("rport =="), (8, "unexpected end of the match: expected a value".into()));
        assert_eq!(error("(rport == 80"), (0, "\"(\" is never closed".into()));
        assert_eq!(error("rport == 80)"), (11, "\")\" without a matching \"(\"".into()));
        assert_eq!(
            error("proto == tcp"),
            (9, "expected a value, found tcp; strings need quotes: \"tcp\"".into())
        );
        assert_eq!(
            error("rport 80"),
            (6, "expected an operator (==, !=, in, not in, ~, <, <=, >, >=) after rport, found 80".into())
        );
        assert_eq!(error("rport in []"), (9, "empty list".into()));
        assert_eq!(error("rport in [[1]]"), (10, "lists cannot be nested".into()));
        assert_eq!(error("rport not 80"), (6, "expected \"not in\"".into()));
        assert_eq!(error(""), (0, "empty match: write a condition, or `true`".into()));
        assert_eq!(error("and"), (0, "expected a condition, found \"and\"".into()));
        assert_eq!(error("rport == 1 or"), (13, "unexpected end of the match: expected a condition".into()));
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(error(&deep).1.contains("nested deeper"));
    }
}
