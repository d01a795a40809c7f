//! Data flows one way: no import cycle between the crate's modules.
//!
//! The graph is read from the source text, at the granularity of `crate::<top>::<sub>`
//! (`procfs::host::reader` counts as `procfs::host`; `snapshot.rs` is `snapshot`; a
//! directory's `mod.rs` is `<top>` itself). An edge is any path a module names through
//! `crate::`, `super::`, `self::` or a child module's name, in a `use` or written in
//! the code. A parent's
//! `pub use child::Name` is a facade, not a dependency: a path through it counts as a
//! path to the child that defines `Name`. `#[cfg(test)]` inline modules are left out:
//! a unit test may reach for anything without the product depending on it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// A module's path below `crate`, e.g. `["cgroup", "stats"]`.
type ModPath = Vec<String>;

/// A node of the graph: the module's path cut to its first `depth` segments.
fn node(path: &[String], depth: usize) -> String {
    path.iter()
        .take(depth)
        .cloned()
        .collect::<Vec<_>>()
        .join("::")
}

/// Every `.rs` file under `dir`, with the module path it defines.
fn source_files(src: &Path) -> Vec<(PathBuf, ModPath)> {
    fn walk(dir: &Path, prefix: &ModPath, out: &mut Vec<(PathBuf, ModPath)>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if path.is_dir() {
                let mut sub = prefix.clone();
                sub.push(name);
                walk(&path, &sub, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let mut module = prefix.clone();
                match stem {
                    "mod" | "lib" => {}
                    // The binary is its own crate: it reaches the library as `collector_user`.
                    "main" if prefix.is_empty() => continue,
                    _ => module.push(stem.to_owned()),
                }
                out.push((path, module));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, &Vec::new(), &mut out);
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    /// `::`
    PathSep,
    /// `#[cfg(test)]`
    CfgTest,
}

/// The file's tokens that matter for paths: identifiers and punctuation, with comments,
/// strings and character literals dropped.
fn tokens(text: &str) -> Vec<Tok> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && {
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            chars.get(j) == Some(&'"')
        } {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    i = j + 1 + hashes;
                    break;
                }
                j += 1;
            }
        } else if c == '"' {
            i += 1;
            while chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 3;
                while chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c == ':' && next == Some(':') {
            out.push(Tok::PathSep);
            i += 2;
        } else if c == '#'
            && text[text.char_indices().nth(i).unwrap().0..].starts_with("#[cfg(test)]")
        {
            out.push(Tok::CfgTest);
            i += "#[cfg(test)]".len();
        } else {
            if !c.is_whitespace() {
                out.push(Tok::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// One path a module names, made absolute (below `crate`), and whether it stands in a
/// `pub use` (a re-export).
struct Named {
    path: ModPath,
    reexport: bool,
}

/// Expands a use tree starting at `toks[*i]` with `prefix` already read.
fn use_tree(toks: &[Tok], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(name)) => {
                path.push(name.clone());
                *i += 1;
                match toks.get(*i) {
                    Some(Tok::PathSep) => *i += 1,
                    Some(Tok::Ident(kw)) if kw == "as" => {
                        *i += 2;
                        out.push(path);
                        return;
                    }
                    _ => {
                        out.push(path);
                        return;
                    }
                }
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push(path);
                return;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                loop {
                    match toks.get(*i) {
                        Some(Tok::Punct('}')) => {
                            *i += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *i += 1,
                        _ => use_tree(toks, i, path.clone(), out),
                    }
                }
            }
            _ => {
                out.push(path);
                return;
            }
        }
    }
}

/// Resolves `crate::…`, `super::…`, `self::…` and `child::…` (a module declared in
/// `here`) against the module `here`.
fn absolute(modules: &BTreeSet<ModPath>, here: &[String], path: &[String]) -> Option<ModPath> {
    let mut base: ModPath = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") | Some("super") => here.to_vec(),
        Some(child) if modules.contains(&[here, &[child.to_owned()]].concat()) => here.to_vec(),
        _ => return None,
    };
    let mut rest = if path[0] == "crate" { &path[1..] } else { path };
    while let Some(first) = rest.first() {
        match first.as_str() {
            "self" => rest = &rest[1..],
            "super" => {
                base.pop()?;
                rest = &rest[1..];
            }
            _ => break,
        }
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// Every path the file names, absolute.
fn named_paths(modules: &BTreeSet<ModPath>, file_module: &[String], text: &str) -> Vec<Named> {
    let toks = tokens(text);
    let mut out = Vec::new();
    // Inline modules: (name, brace depth inside it, under #[cfg(test)]).
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut cfg_test = false;
    let mut i = 0;
    while i < toks.len() {
        let in_test = inline.iter().any(|m| m.2);
        let mut here = file_module.to_vec();
        here.extend(inline.iter().map(|m| m.0.clone()));
        match &toks[i] {
            Tok::CfgTest => {
                cfg_test = true;
                i += 1;
                continue;
            }
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if inline.last().is_some_and(|m| m.1 > depth) {
                    inline.pop();
                }
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    depth += 1;
                    inline.push((name.clone(), depth, cfg_test));
                    cfg_test = false;
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(kw) if kw == "use" => {
                let reexport = matches!(i.checked_sub(1).map(|p| &toks[p]), Some(Tok::Ident(p)) if p == "pub")
                    || matches!(i.checked_sub(4).map(|p| &toks[p]), Some(Tok::Ident(p)) if p == "pub");
                let mut trees = Vec::new();
                i += 1;
                use_tree(&toks, &mut i, Vec::new(), &mut trees);
                if !in_test && !cfg_test {
                    for tree in trees {
                        if let Some(path) = absolute(modules, &here, &tree) {
                            out.push(Named { path, reexport });
                        }
                    }
                }
                cfg_test = false;
                continue;
            }
            Tok::Ident(first)
                if (["crate", "super", "self"].contains(&first.as_str())
                    || modules.contains(&[&here[..], std::slice::from_ref(first)].concat()))
                    && toks.get(i + 1) == Some(&Tok::PathSep)
                    && !matches!(i.checked_sub(1).map(|p| &toks[p]), Some(Tok::PathSep)) =>
            {
                let mut path = vec![first.clone()];
                i += 1;
                while toks.get(i) == Some(&Tok::PathSep) {
                    if let Some(Tok::Ident(seg)) = toks.get(i + 1) {
                        path.push(seg.clone());
                        i += 2;
                    } else {
                        break;
                    }
                }
                if !in_test {
                    if let Some(path) = absolute(modules, &here, &path) {
                        out.push(Named {
                            path,
                            reexport: false,
                        });
                    }
                }
                continue;
            }
            Tok::Punct(';') => cfg_test = false,
            _ => {}
        }
        i += 1;
    }
    out
}

struct Graph {
    /// node -> nodes it imports, with one file that does, for the message.
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn graph(src: &Path, depth: usize) -> Graph {
    let files = source_files(src);
    let modules: BTreeSet<ModPath> = files.iter().map(|(_, m)| m.clone()).collect();
    let named: Vec<(PathBuf, ModPath, Vec<Named>)> = files
        .iter()
        .map(|(path, module)| {
            let text = fs::read_to_string(path).unwrap();
            (
                path.clone(),
                module.clone(),
                named_paths(&modules, module, &text),
            )
        })
        .collect();
    // A parent's facade: `pub use child::…::Name` in `<top>/mod.rs` -> (top, Name) -> child path.
    let mut facade: BTreeMap<(ModPath, String), ModPath> = BTreeMap::new();
    for (_, module, paths) in &named {
        for n in paths.iter().filter(|n| n.reexport) {
            if let Some(name) = n.path.last() {
                facade.insert((module.clone(), name.clone()), n.path.clone());
            }
        }
    }
    // The module a path lands in: its longest prefix that is a module, seen through facades.
    let target = |path: &[String]| -> ModPath {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let len = (0..=path.len())
                .rev()
                .find(|&l| modules.contains(&path[..l]))
                .unwrap_or(0);
            let module = path[..len].to_vec();
            match path
                .get(len)
                .and_then(|name| facade.get(&(module.clone(), name.clone())))
            {
                Some(through) if through.starts_with(&module) && through.len() > len + 1 => {
                    path = through.clone();
                }
                _ => return module,
            }
        }
        path
    };
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (file, module, paths) in &named {
        let from = node(module, depth);
        edges.entry(from.clone()).or_default();
        for n in paths {
            let to_module = target(&n.path);
            let to = node(&to_module, depth);
            // A facade's re-export of its own child is not a dependency of the facade.
            if n.reexport && to_module.starts_with(module) {
                continue;
            }
            if to != from && !to.is_empty() {
                let shown = file.strip_prefix(src).unwrap().display().to_string();
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert(shown);
            }
        }
    }
    Graph { edges }
}

/// Every cycle's nodes, one cycle for each strongly connected set of two or more nodes.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    // Reachability by depth-first search from every node: small graph, plain code.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(n) = stack.pop() {
            for next in g.edges.get(&n).into_iter().flat_map(|e| e.keys()) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for start in g.edges.keys() {
        if done.contains(start) || !reach(start).contains(start) {
            continue;
        }
        // A shortest way back to `start`, by breadth-first search.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        'search: while let Some(n) = queue.pop_front() {
            for next in g.edges.get(&n).into_iter().flat_map(|e| e.keys()) {
                if next == start {
                    let mut cycle = vec![n.clone()];
                    while let Some(p) = prev.get(cycle.last().unwrap()) {
                        cycle.push(p.clone());
                    }
                    cycle.reverse();
                    if cycle[0] != *start {
                        cycle.insert(0, start.clone());
                    }
                    done.extend(cycle.iter().cloned());
                    out.push(cycle);
                    break 'search;
                }
                if !prev.contains_key(next) && next != start {
                    prev.insert(next.clone(), n.clone());
                    queue.push_back(next.clone());
                }
            }
        }
    }
    out
}

fn describe(g: &Graph, cycle: &[String]) -> String {
    let mut text = String::new();
    for (k, from) in cycle.iter().enumerate() {
        let to = &cycle[(k + 1) % cycle.len()];
        text += &format!("\n  {from} -> {to}   ({})", g.edges[from][to]);
    }
    text
}

fn assert_acyclic(depth: usize) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src, depth);
    let found = cycles(&g);
    let report: Vec<String> = found.iter().map(|c| describe(&g, c)).collect();
    assert!(
        found.is_empty(),
        "import cycles between modules:{}",
        report.join("\n")
    );
}

/// `crate::<top>::<sub>`: no two files of one directory import each other.
#[test]
fn modules_import_one_way() {
    assert_acyclic(2);
}

/// `crate::<top>`: the layers (kernel, cgroup, procfs -> collect -> snapshot -> api) too.
#[test]
fn top_level_modules_import_one_way() {
    assert_acyclic(1);
}

/// The checker itself: it sees a cycle when there is one, through `use` lines, written
/// paths and a facade's re-exports.
#[test]
fn a_cycle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let path = src.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\n");
    write(
        "a/mod.rs",
        "mod x;\nmod y;\npub use x::Thing;\n#[cfg(test)]\nmod tests { use crate::b::Other; }\n",
    );
    write(
        "a/x.rs",
        "// use crate::b::Other;\nlet s = \"crate::b::z\";\npub fn f() -> crate::b::Other {}\n",
    );
    write("a/y.rs", "use super::super::b;\n");
    write("b.rs", "use crate::a::{Thing as T, self};\n");
    let g = graph(src, 2);
    let found = cycles(&g);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut nodes = found[0].clone();
    nodes.sort();
    assert_eq!(nodes, ["a::x", "b"]);
    // a::y -> b, and the facade `a` (its test module left out) imports nothing.
    assert!(g.edges["a::y"].contains_key("b"));
    assert!(g.edges["a"].is_empty(), "{:?}", g.edges["a"]);
}
