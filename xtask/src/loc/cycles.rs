//! File-level import cycles within a crate: file A uses B and B uses A,
//! directly or through a chain.
//!
//! A file's module path comes from its place under `src/` (`lib.rs` and
//! `main.rs` are the root, `a/mod.rs` and `a.rs` are `a`, `a/b.rs` is
//! `a::b`). A file uses another when its code (not its comments, literals or
//! test code) names a path into it: `crate::a::X`, `super::X`,
//! `super::b::X`, `self::a::X`, or a child module `a::X` (in `use` trees,
//! `use crate::{a::X, b}`, and in expressions alike), resolved to the
//! deepest module that has a file; inside an inline `mod x { .. }`,
//! `super::` is the file itself. A module owns its submodules: what it
//! says of them (declaring `mod a;`, re-exporting `pub use a::X;`, calling
//! into them) is structure, not a use that can close a cycle; a child's
//! use of an item its parent defines is a use. So a cycle is a chain of
//! uses between siblings or up to an ancestor that comes back to where it
//! started. Approximations: `#[path]` attributes are not
//! followed (none here), and a type named like a child module followed by
//! `::` would count (module names are snake case, types are not).

use std::collections::BTreeMap;

/// One file in the graph.
#[derive(Debug)]
pub(super) struct Node {
    /// Its path, relative to the crate directory.
    pub(super) path: String,
    /// Its module path (empty for the crate root).
    pub(super) module: Vec<String>,
    /// Its code, comments and literals and test code blanked out.
    pub(super) clean: String,
}

/// A use of one file by another, with the first path that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Edge {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) via: String,
}

/// The module path of a file at `rel` under `src/` (`/`-separated).
pub(super) fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.strip_suffix(".rs").unwrap_or(&last);
    let is_root = parts.is_empty() && (stem == "lib" || stem == "main");
    if stem != "mod" && !is_root {
        parts.push(stem.to_string());
    }
    parts
}

/// Every use of one file by another.
pub(super) fn edges(nodes: &[Node]) -> Vec<Edge> {
    let mut by_module: BTreeMap<&[String], usize> = BTreeMap::new();
    // The root is `lib.rs` when a crate has both it and `main.rs`.
    let is_main = |n: &Node| n.module.is_empty() && n.path.ends_with("main.rs");
    for (i, n) in nodes.iter().enumerate().filter(|(_, n)| !is_main(n)) {
        by_module.insert(&n.module, i);
    }
    for (i, n) in nodes.iter().enumerate().filter(|(_, n)| is_main(n)) {
        by_module.entry(&n.module).or_insert(i);
    }
    let mut out: Vec<Edge> = Vec::new();
    for (from, n) in nodes.iter().enumerate() {
        for (within, path) in paths(&n.clean) {
            let here: Vec<String> = n.module.iter().chain(&within).cloned().collect();
            let Some(to) = resolve(&here, &path, &by_module) else {
                continue;
            };
            // Into one's own submodule: ownership, not a use (see above).
            let owned = nodes[to].module.starts_with(&n.module);
            if to != from && !owned && !out.iter().any(|e| e.from == from && e.to == to) {
                out.push(Edge {
                    from,
                    to,
                    via: path.join("::"),
                });
            }
        }
    }
    out
}

/// The file a path in module `here` leads into, when it is one of ours.
fn resolve(here: &[String], path: &[String], files: &BTreeMap<&[String], usize>) -> Option<usize> {
    let first = path.first()?;
    let (mut full, rest): (Vec<String>, &[String]) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.to_vec(), &path[1..]),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let keep = here.len().checked_sub(ups)?;
            (here[..keep].to_vec(), &path[ups..])
        }
        _ => {
            let mut child = here.to_vec();
            child.push(first.clone());
            if !files.contains_key(child.as_slice()) {
                return None;
            }
            (here.to_vec(), path)
        }
    };
    full.extend(rest.iter().cloned());
    (0..=full.len())
        .rev()
        .find_map(|len| files.get(&full[..len]).copied())
}

/// Paths in code: `a::b::C`, with `use` trees (`a::{b, c::D}`) expanded,
/// each with the inline modules (`mod x { .. }`) it is in, which its
/// `super::` and `self::` start from. Only paths of two segments or more,
/// or a `use` of one (`use a;`).
fn paths(clean: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let tokens = tokens(clean);
    let mut out = Vec::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i].as_str() {
            "{" => {
                depth += 1;
                if i >= 2 && tokens[i - 2] == "mod" && is_ident_token(&tokens[i - 1]) {
                    inline.push((tokens[i - 1].clone(), depth));
                }
                i += 1;
                continue;
            }
            "}" => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            _ => {}
        }
        let starts = is_ident_token(&tokens[i]) && (i == 0 || tokens[i - 1] != "::");
        if !starts {
            i += 1;
            continue;
        }
        let in_use = i > 0 && tokens[i - 1] == "use";
        let mut found = Vec::new();
        i = tree(&tokens, i, &[], &mut found);
        let within: Vec<String> = inline.iter().map(|(m, _)| m.clone()).collect();
        // Outside `use`, a lone name is no path into another module.
        out.extend(
            found
                .into_iter()
                .filter(|p| in_use || p.len() > 1)
                .map(|p| (within.clone(), p)),
        );
    }
    out
}

/// Reads a use tree (or a plain path) at `tokens[i]` under `prefix`,
/// pushing each path it names; returns the index after it.
fn tree(tokens: &[String], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let at = |k: usize| tokens.get(k).map_or("", String::as_str);
    let mut path = prefix.to_vec();
    let mut named = false;
    while is_ident_token(at(i)) || at(i) == "{" {
        if at(i) == "{" {
            i += 1;
            while !at(i).is_empty() && at(i) != "}" {
                let before = i;
                i = tree(tokens, i, &path, out);
                if at(i) == "," || i == before {
                    i += 1;
                }
            }
            return i + 1;
        }
        // `a::{self, b}` names `a` itself.
        if at(i) != "self" || path.is_empty() {
            path.push(tokens[i].clone());
        }
        named = true;
        i += 1;
        if at(i) == "::" && (at(i + 1) == "{" || is_ident_token(at(i + 1))) {
            i += 1;
        } else {
            break;
        }
    }
    if named {
        out.push(path);
    }
    if at(i) == "as" {
        i += 2;
    }
    i
}

fn is_ident_token(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::` and single punctuation characters.
fn tokens(clean: &str) -> Vec<String> {
    let c: Vec<char> = clean.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".to_string());
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
            i += 1;
        }
    }
    out
}

/// The strongly connected components of more than one file (Tarjan's
/// algorithm), each sorted, in order.
pub(super) fn cycles(n: usize, edges: &[Edge]) -> Vec<Vec<usize>> {
    struct Tarjan {
        adj: Vec<Vec<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    impl Tarjan {
        fn visit(&mut self, v: usize) {
            self.index[v] = Some(self.next);
            self.low[v] = self.next;
            self.next += 1;
            self.stack.push(v);
            self.on_stack[v] = true;
            for w in self.adj[v].clone() {
                match self.index[w] {
                    None => {
                        self.visit(w);
                        self.low[v] = self.low[v].min(self.low[w]);
                    }
                    Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                    Some(_) => {}
                }
            }
            if Some(self.low[v]) == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_unstable();
                    self.found.push(component);
                }
            }
        }
    }
    let mut adj = vec![Vec::new(); n];
    for e in edges {
        adj[e.from].push(e.to);
    }
    let mut t = Tarjan {
        adj,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            t.visit(v);
        }
    }
    t.found.sort();
    t.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str, clean: &str) -> Node {
        Node {
            path: format!("src/{path}"),
            module: module_path(path),
            clean: clean.to_string(),
        }
    }

    #[test]
    fn module_paths() {
        assert!(module_path("lib.rs").is_empty());
        assert_eq!(module_path("a/mod.rs"), vec!["a"]);
        assert_eq!(module_path("a/b.rs"), vec!["a", "b"]);
        assert_eq!(module_path("a.rs"), vec!["a"]);
    }

    #[test]
    fn use_trees_expand() {
        let p = paths("use crate::{a::X, b::{self, c::Y as Z}};\nlet v = super::d::f(); e::g(); h();\nmod m { use super::X; }");
        let s: Vec<String> = p.iter().map(|(_, p)| p.join("::")).collect();
        assert_eq!(
            s,
            [
                "crate::a::X",
                "crate::b",
                "crate::b::c::Y",
                "super::d::f",
                "e::g",
                "super::X"
            ]
        );
        assert!(p[..5].iter().all(|(within, _)| within.is_empty()));
        assert_eq!(p[5].0, ["m"]);
    }

    #[test]
    fn finds_cycles_and_not_declarations() {
        let nodes = [
            node("lib.rs", "mod a;\nmod b;\nmod c;\npub use a::A;\n"),
            node("a.rs", "use crate::b::B;\n"),
            node("b.rs", "use super::c::C;\n"),
            node(
                "c.rs",
                "pub(crate) fn f() { crate::a::g() }\nmod imp { use super::f; }\n",
            ),
            node("d/mod.rs", "mod e;\nuse std::fmt;\n"),
            node("d/e.rs", "use super::super::Thing;\n"),
        ];
        let e = edges(&nodes);
        let pairs: Vec<(usize, usize)> = e.iter().map(|e| (e.from, e.to)).collect();
        // lib.rs's re-export of its child a is ownership: no (0, 1).
        assert_eq!(pairs, [(1, 2), (2, 3), (3, 1), (5, 0)]);
        assert_eq!(cycles(nodes.len(), &e), vec![vec![1, 2, 3]]);
        assert_eq!(e[2].via, "crate::a::g");
    }
}
