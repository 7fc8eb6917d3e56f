//! The host's modules form no import cycle: reads every `crate::` path in
//! `host/src` (in `use` lines and inline), builds the graph of top-level
//! modules (`socket`, `pubsub`, `runtime`, …), and fails naming the cycle
//! if there is one. `cargo test -p roost-host --test module_graph --
//! --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("reading host/src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level module a source file belongs to (`socket/session.rs` →
/// `socket`); `None` for the crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top-level modules named after `crate::` in a line of code, including
/// grouped imports (`use crate::{config::X, runtime::{A, B}};`).
fn referenced(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => found.extend(group_items(group).map(leading_name)),
            None => found.push(leading_name(rest)),
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

/// The items of a `{…}` group (after its `{`), split at its own commas.
fn group_items(group: &str) -> impl Iterator<Item = &str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items.into_iter();
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items.into_iter()
}

fn leading_name(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src) {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        let targets = edges.entry(module.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            for target in referenced(code) {
                if target != module {
                    targets.insert(target);
                }
            }
        }
    }
    // Only modules count (`crate::{…}` items may name re-exported types).
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for targets in edges.values_mut() {
        targets.retain(|target| modules.contains(target));
    }
    edges
}

/// A cycle through the graph, if any, as the list of its modules.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn host_modules_have_no_import_cycle() {
    let edges = graph();
    for (module, targets) in &edges {
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        println!("{module} -> {}", targets.join(", "));
    }
    assert!(edges.len() > 10, "found the modules: {edges:?}");
    if let Some(cycle) = cycle(&edges) {
        panic!("import cycle among host modules: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_check_finds_a_cycle_and_grouped_imports() {
    assert_eq!(
        referenced("use crate::{config::X, runtime::{A, B}};"),
        ["config", "runtime"]
    );
    assert_eq!(
        referenced("let x = crate::protocol::encode(a);"),
        ["protocol"]
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(
        cycle(&edges),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}
