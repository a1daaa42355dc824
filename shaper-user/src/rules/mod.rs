//! The `match` language: parsed, type-checked and compiled, never executed.
//!
//! | stage | module | output |
//! |---|---|---|
//! | tokens | [`lexer`] | tokens with byte spans |
//! | syntax | [`parser`], [`ast`] | [`Expr`], printable in canonical form |
//! | types and names | [`lower`] | [`Pred`]: tests on the flow and the process behind it |
//! | rule table | [`compile`] (with `tree` and [`index`]) | each rule's program of `RuleNode`s, and the index |
//! | evaluation | `shaper_common::rules::eval`, [`engine`] | a verdict: in the classifier and in the daemon, the same code |
//! | explanation | [`explain`], [`describe`] | the same evaluation traced: each rule's tests and their values, in the language's words |
//!
//! The kernel decides what it can from the packet and the socket's owner
//! record (uid, gid, pid, process name, cgroup); tests on what only /proc tells
//! (exe, args, parent, ancestor, glob patterns on names) it takes as false and
//! marks its verdict provisional. The daemon then evaluates the same table
//! with everything it knows ([`Compiled::decide`](compile::Compiled::decide))
//! and has the final word. [`Pred::matches`] is the reference the tests hold
//! the table to.
//!
//! Every error carries the byte span of the offending part of the `match`
//! string; the config layer turns it into file:line:column.

pub mod ast;
pub mod compile;
pub mod describe;
pub mod engine;
pub mod explain;
pub mod glob;
pub mod index;
pub mod lexer;
pub mod lower;
pub mod parser;
pub mod pred;
mod tree;
mod views;

pub use ast::{Attr, Expr};
pub use lexer::Span;
pub use pred::Pred;
pub use views::ProcessView;

use crate::{accounts::Accounts, services::Services};

/// What names in rules are resolved against.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub services: &'a Services,
    pub accounts: &'a dyn Accounts,
}

/// This host's services and accounts, owned.
#[derive(Default)]
pub struct SystemEnv {
    pub services: Services,
    pub accounts: crate::accounts::SystemAccounts,
}

impl SystemEnv {
    pub fn load() -> Self {
        Self { services: Services::load_or_empty(), accounts: crate::accounts::SystemAccounts::default() }
    }

    pub fn env(&self) -> Env<'_> {
        Env { services: &self.services, accounts: &self.accounts }
    }
}

/// An error in a `match` string, at `span` (bytes of the string).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub span: Span,
    pub message: String,
}

impl RuleError {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        Self { span, message: message.into() }
    }
}

/// A class's `match`: as written, as parsed, and as lowered.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub source: String,
    pub expr: Expr,
    pub pred: Pred,
}

impl Rule {
    pub fn parse(source: &str, env: &Env<'_>) -> Result<Self, RuleError> {
        let expr = parser::parse(source)?;
        let pred = lower::lower(&expr, env)?;
        Ok(Self { source: source.to_string(), expr, pred })
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.expr.fmt(f)
    }
}

/// The answers to a table's userspace tests (numbered as in
/// [`compile::Compiled::userspace`]) for one process, as PROC_TESTS carries them.
pub fn answers(
    userspace: &[pred::Atom],
    process: &pred::ProcessFacts,
    rules_gen: u32,
) -> shaper_common::ProcTests {
    let key = shaper_common::FlowKey::default();
    let facts = pred::Facts { key: &key, process: Some(process) };
    let mut tests = shaper_common::ProcTests { rules_gen, ..Default::default() };
    for (i, atom) in userspace.iter().enumerate().take(shaper_common::USERSPACE_TESTS as usize) {
        if atom.known_for(process) {
            tests.known |= 1 << i;
            if atom.matches(&facts) {
                tests.values |= 1 << i;
            }
        }
    }
    tests
}

/// The class the rules give a flow, evaluated predicate by predicate with
/// everything known about it: first match wins. The reference the compiled
/// table is held to (the daemon decides with [`compile::Compiled::decide`]).
pub fn first_match(rules: &[(u16, &Pred)], facts: &pred::Facts<'_>) -> Option<u16> {
    rules.iter().find(|(_, p)| p.matches(facts)).map(|(class, _)| *class)
}

#[cfg(test)]
mod tests;
