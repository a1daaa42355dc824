//! `cargo xtask lint`'s structure check: the promises README makes about the
//! shape of the code, checked on every lint run.
//!
//! - No import cycle between the modules of a crate (shaper-user,
//!   shaper-ebpf, shaper-common): each module imports only modules that do
//!   not import it back, directly or through others.
//! - No function in the daemon (shaper-user/src/daemon) longer than
//!   [`MAX_DAEMON_FN_LINES`] lines.
//!
//! Modules are files (`a/b.rs` or `a/b/mod.rs` is `a::b`); a file depends on
//! the modules its `use crate::…`, `use super::…` and inline `crate::…` /
//! `super::…` paths name (the longest path that is a module). Declaring a
//! child module (`mod x;`) is not a dependency, and neither is a path into a
//! module's own children. Test modules (`#[cfg(test)] mod tests { … }` at the
//! end of a file, and `tests.rs` files) are left out: tests may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

pub(crate) const MAX_DAEMON_FN_LINES: usize = 80;
const CRATES: [&str; 3] = ["shaper-user/src", "shaper-ebpf/src", "shaper-common/src"];
const DAEMON: &str = "shaper-user/src/daemon";

type Module = Vec<String>;

pub(crate) fn check(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for krate in CRATES {
        let modules = modules(&root.join(krate))?;
        for cycle in cycles(&dependencies(&modules)) {
            problems.push(format!("{krate}: import cycle: {}", cycle.join(" → ")));
        }
    }
    for (path, name, lines) in long_functions(&root.join(DAEMON))? {
        let shown = path.strip_prefix(root).unwrap_or(&path).display().to_string();
        problems.push(format!(
            "{shown}: fn {name} has {lines} lines (at most {MAX_DAEMON_FN_LINES} in the daemon)"
        ));
    }
    if !problems.is_empty() {
        bail!("structure check failed:\n  {}", problems.join("\n  "));
    }
    println!("structure: no import cycles; daemon functions at most {MAX_DAEMON_FN_LINES} lines");
    Ok(())
}

/// Every module of the crate at `src` and the text of its file (tests cut off).
fn modules(src: &Path) -> Result<BTreeMap<Module, String>> {
    let mut out = BTreeMap::new();
    for file in rust_files(src)? {
        let rel = file.strip_prefix(src).context("a file outside its crate")?.with_extension("");
        let mut module: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            module.pop();
        }
        if module.last().map(String::as_str) == Some("tests") {
            continue;
        }
        let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        out.insert(module, without_tests(&without_comments(&text)));
    }
    Ok(out)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn without_comments(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn without_tests(text: &str) -> String {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// Module → the modules it imports.
fn dependencies(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    modules
        .iter()
        .map(|(module, text)| {
            let deps = paths(text)
                .iter()
                .filter_map(|p| resolve(modules, module, p))
                .filter(|d| d != module && !d.starts_with(module))
                .collect();
            (module.clone(), deps)
        })
        .collect()
}

/// Every `crate::…`/`super::…`/`self::…` path in `text`, `use` trees expanded.
fn paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for statement in text.split(';') {
        if let Some(at) = statement.find("use ") {
            let tree = &statement[at + 4..];
            if tree.trim_start().starts_with(['c', 's']) {
                out.extend(expand(&tree.split_whitespace().collect::<String>()));
            }
        }
    }
    let bytes = text.as_bytes();
    for start in ["crate::", "super::"] {
        for (at, _) in text.match_indices(start) {
            let before = at.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let end = text[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(text.len(), |e| at + e);
            out.push(text[at..end].to_string());
        }
    }
    out
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else { return vec![tree.to_string()] };
    let Some(close) = tree.rfind('}') else { return vec![tree.to_string()] };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..close]);
    let mut parts = Vec::new();
    let (mut depth, mut current) = (0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts.iter().filter(|p| !p.is_empty()).flat_map(|p| expand(p)).map(|p| format!("{prefix}{p}")).collect()
}

/// The module a path from `from` names: the longest prefix that is a module.
fn resolve(modules: &BTreeMap<Module, String>, from: &Module, path: &str) -> Option<Module> {
    let path = path.split(" as ").next().unwrap_or(path);
    let mut segments = path.split("::").filter(|s| !s.is_empty()).peekable();
    let mut base: Module = match segments.peek().copied() {
        Some("crate") => Vec::new(),
        Some("super" | "self") => from.clone(),
        _ => return None,
    };
    if segments.peek() == Some(&"crate") {
        segments.next();
    }
    while let Some(&s) = segments.peek() {
        match s {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        segments.next();
    }
    let mut best = modules.contains_key(&base).then(|| base.clone());
    for s in segments {
        base.push(s.to_string());
        if modules.contains_key(&base) {
            best = Some(base.clone());
        }
    }
    best
}

/// The import cycles (strongly connected groups of two modules or more).
fn cycles(deps: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    let reach = |from: &Module| -> BTreeSet<Module> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Module> = deps.get(from).into_iter().flatten().collect();
        while let Some(m) = todo.pop() {
            if seen.insert(m.clone()) {
                todo.extend(deps.get(m).into_iter().flatten());
            }
        }
        seen
    };
    let reachable: BTreeMap<&Module, BTreeSet<Module>> = deps.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in deps.keys() {
        if done.contains(m) || !reachable[m].contains(m) {
            continue;
        }
        let group: Vec<&Module> =
            deps.keys().filter(|o| reachable[m].contains(*o) && reachable[*o].contains(m)).collect();
        done.extend(group.iter().map(|g| (*g).clone()));
        out.push(group.iter().map(|g| if g.is_empty() { "crate".into() } else { g.join("::") }).collect());
    }
    out
}

/// Functions of the files under `dir` longer than the limit: (file, name, lines).
fn long_functions(dir: &Path) -> Result<Vec<(PathBuf, String, usize)>> {
    let mut out = Vec::new();
    for file in rust_files(dir)? {
        let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for (name, lines) in function_lengths(&text) {
            if lines > MAX_DAEMON_FN_LINES {
                out.push((file.clone(), name, lines));
            }
        }
    }
    Ok(out)
}

/// (name, lines) of each function with a body, from its `fn` line to the
/// closing brace at the same indentation (rustfmt's layout).
fn function_lengths(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(at) = trimmed.find("fn ") else { continue };
        let head = &trimmed[..at];
        if !head.split_whitespace().all(|w| {
            matches!(w, "pub" | "async" | "unsafe" | "const" | "extern" | "\"C\"") || w.starts_with("pub(")
        }) {
            continue;
        }
        let name: String =
            trimmed[at + 3..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let indent = &line[..line.len() - trimmed.len()];
        let Some(open) = (i..lines.len()).find(|j| lines[*j].ends_with('{') || lines[*j].ends_with(';'))
        else {
            continue;
        };
        if lines[open].ends_with(';') {
            continue;
        }
        let closing = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|j| lines[*j] == closing) {
            out.push((name, end - i + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str) -> Module {
        path.split("::").filter(|s| !s.is_empty()).map(String::from).collect()
    }

    #[test]
    fn use_trees_expand_and_resolve_to_the_longest_module() {
        assert_eq!(expand("crate::{a::b,c::{d,e}}"), ["crate::a::b", "crate::c::d", "crate::c::e"]);
        let modules: BTreeMap<Module, String> =
            ["", "daemon", "daemon::host", "tc"].iter().map(|m| (module(m), String::new())).collect();
        let from = module("daemon::host");
        assert_eq!(resolve(&modules, &from, "crate::tc::Link"), Some(module("tc")));
        assert_eq!(resolve(&modules, &from, "super::Shaper"), Some(module("daemon")));
        assert_eq!(resolve(&modules, &from, "std::fs"), None);
    }

    #[test]
    fn a_cycle_is_found_and_a_chain_is_not() {
        let text = |deps: &[&str]| deps.iter().map(|d| format!("use crate::{d}::X;\n")).collect::<String>();
        let mut modules: BTreeMap<Module, String> = BTreeMap::new();
        modules.insert(module("a"), text(&["b"]));
        modules.insert(module("b"), text(&["c"]));
        modules.insert(module("c"), text(&[]));
        assert!(cycles(&dependencies(&modules)).is_empty());
        modules.insert(module("c"), "fn f() { crate::a::g() }".into());
        assert_eq!(cycles(&dependencies(&modules)), [vec!["a".to_string(), "b".into(), "c".into()]]);
    }

    #[test]
    fn function_lengths_follow_rustfmt_layout() {
        let text =
            "impl X {\n    pub(super) fn short(&self) -> u8 {\n        1\n    }\n\n    fn decl();\n}\n";
        assert_eq!(function_lengths(text), [("short".to_string(), 3)]);
    }
}
