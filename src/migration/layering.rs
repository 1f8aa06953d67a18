//! The shape of `migration` as a test: its import graph has no circle, and no step
//! imports another step (docs/architecture.md, "The migration steps"). Read from the
//! sources, so a `use` that breaks either rule fails here, named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `migration::steps::takeover` for `src/migration/steps/takeover.rs`.
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).expect("under src/");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its `#[cfg(test)]` module and comments: tests may
/// reach anywhere, and a comment naming a path is no import.
fn code(text: &str) -> String {
    let body = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    body.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a file names below `prefix` (`crate::` or `super::`), with use-groups
/// expanded: `super::{a, b::c}` gives `a` and `b::c`.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        expand(rest, String::new(), &mut out);
    }
    out
}

/// Expand the use tree at the start of `s` under `base` into `out`.
fn expand(s: &str, base: String, out: &mut Vec<String>) {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(&inner[start..i], base.clone(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], base.clone(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        if !base.is_empty() {
            out.push(base);
        }
        return;
    }
    let path = if base.is_empty() {
        ident.clone()
    } else {
        format!("{base}::{ident}")
    };
    match s[ident.len()..].strip_prefix("::") {
        Some(more) => expand(more, path, out),
        None => out.push(path),
    }
}

/// The deepest known module a path names (`migration::nodes::list_nodes` ->
/// `migration::nodes`).
fn target(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Module -> the modules of `migration` it imports.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("migration"), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let me = module_of(&src, file);
        // `super` of a file is its parent module; of a mod.rs, the directory's parent.
        let mut parent: Vec<&str> = me.split("::").collect();
        parent.pop();
        let parent = parent.join("::");
        let text = code(&std::fs::read_to_string(file).expect("readable source"));
        let mut named: Vec<String> = paths_after(&text, "crate::");
        named.extend(
            paths_after(&text, "super::")
                .into_iter()
                .map(|p| format!("{parent}::{p}")),
        );
        let deps: BTreeSet<String> = named
            .iter()
            .filter_map(|p| target(p, &modules))
            .filter(|t| *t != me)
            .collect();
        graph.insert(me, deps);
    }
    graph
}

/// A circle in the graph, if any: the modules on it in order.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == node) {
            let mut c = stack[i..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_migration_import_graph_has_no_circle() {
    let graph = import_graph();
    assert!(graph.len() > 20, "read the migration sources: {graph:?}");
    if let Some(c) = circle(&graph) {
        panic!("import circle in src/migration: {}", c.join(" -> "));
    }
}

#[test]
fn no_step_imports_another_step() {
    let graph = import_graph();
    let is_step = |m: &str| m.starts_with("migration::steps::");
    let offenders: Vec<String> = graph
        .iter()
        .filter(|(m, _)| is_step(m))
        .flat_map(|(m, deps)| {
            deps.iter()
                .filter(|d| is_step(d) || d.as_str() == "migration::steps")
                .map(move |d| format!("{m} imports {d}"))
        })
        .collect();
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

#[test]
fn the_reader_sees_groups_and_nested_paths() {
    let mut out = Vec::new();
    expand(
        "{a, b::{c, d::e}, f::g}; fn x() {}",
        "migration".into(),
        &mut out,
    );
    assert_eq!(
        out,
        [
            "migration::a",
            "migration::b::c",
            "migration::b::d::e",
            "migration::f::g"
        ]
    );
    assert_eq!(
        paths_after(
            "use crate::migration::nodes::{list_nodes, NodeState};",
            "crate::"
        ),
        [
            "migration::nodes::list_nodes",
            "migration::nodes::NodeState"
        ]
    );
    // A circle is found and named.
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(circle(&graph).unwrap(), ["a", "b", "c", "a"]);
}
