//! The module graph of `host/src` has no cycles (issue 17): data flows one way, ingress →
//! conversions → ledger and outbox → store, and a newcomer can change a lower module
//! without reading the ones above it.
//!
//! The test reads the sources, as a reviewer would: every `crate::` and `super::` path (in
//! `use` items and inline, groups `{a, b::{c}}` expanded), resolved to the module that
//! holds it. Within each folder, the graph of its children (files and subfolders, a
//! subfolder standing for everything under it) must be acyclic; that covers the crate's
//! top level (`callbacks` ↔ `conversions`) and files side by side (`plugin/http.rs` ↔
//! `plugin/state.rs`). A module using its own parent or children is not an edge between
//! siblings and is allowed (a `mod.rs` declares its children; they use its types).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every module of the library, by its path, with its file.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, prefix: &Module, out: &mut BTreeMap<Module, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read host/src") {
            let path = entry.expect("entry").path();
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
            if path.is_dir() {
                // The binaries are not modules of the library.
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut p = prefix.clone();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.clone();
                if !matches!(name.as_str(), "mod" | "lib" | "main") {
                    p.push(name);
                }
                out.insert(p, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &Vec::new(), &mut out);
    out
}

/// The source without comments (doc comments name modules in prose; that is no use).
fn strip_comments(text: &str) -> String {
    text.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

fn ident_at(s: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') {
        i += 1;
    }
    (String::from_utf8_lossy(&s[start..i]).into_owned(), i)
}

/// Parses a path at `i` (after `crate::` or `super::`, with `base` already read) and
/// pushes every full path it names; returns where it ends.
fn parse_path(s: &[u8], mut i: usize, base: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = base;
    loop {
        if s.get(i) == Some(&b'{') {
            i += 1;
            loop {
                while i < s.len() && s[i].is_ascii_whitespace() {
                    i += 1;
                }
                match s.get(i) {
                    Some(b'}') => return i + 1,
                    Some(b',') => i += 1,
                    None => return i,
                    _ => {
                        let next = parse_path(s, i, path.clone(), out);
                        // Skip `as name` and anything else up to the next item.
                        i = next.max(i + 1);
                        while i < s.len() && !matches!(s[i], b',' | b'}') {
                            i += 1;
                        }
                    }
                }
            }
        }
        let (ident, next) = ident_at(s, i);
        if ident.is_empty() {
            out.push(path);
            return i;
        }
        path.push(ident);
        i = next;
        if s[i..].starts_with(b"::") {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// Every module path the file of `module` names, made absolute.
fn references(module: &Module, is_folder: bool, text: &str) -> Vec<Vec<String>> {
    let text = strip_comments(text);
    let s = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let word_start = i == 0 || !(s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_' || s[i - 1] == b':');
        let rest = &s[i..];
        let (is_crate, is_super) = (rest.starts_with(b"crate::"), rest.starts_with(b"super::"));
        if word_start && (is_crate || is_super) {
            let mut base: Vec<String> = if is_crate {
                i += "crate::".len();
                Vec::new()
            } else {
                // `super` of a file is its folder's module; of a `mod.rs`, the one above.
                let mut b = module.clone();
                let _ = is_folder;
                b.pop();
                i += "super::".len();
                while s[i..].starts_with(b"super::") {
                    b.pop();
                    i += "super::".len();
                }
                b
            };
            base.shrink_to_fit();
            i = parse_path(s, i, base, &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// The graph of each folder's children: folder → child → (child → why).
type Graphs = BTreeMap<Module, BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>>;

fn graphs(src: &Path) -> Graphs {
    let modules = modules(src);
    let mut graphs = Graphs::new();
    for (module, file) in &modules {
        let is_folder = file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        let text = std::fs::read_to_string(file).expect("read source");
        for path in references(module, is_folder, &text) {
            let Some(target) = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains_key(p))
            else {
                continue;
            };
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == module.len() || common == target.len() {
                continue; // itself, an ancestor or a descendant
            }
            let (from, to) = (module[..=common].to_vec(), target[..=common].to_vec());
            graphs
                .entry(module[..common].to_vec())
                .or_default()
                .entry(from)
                .or_default()
                .entry(to)
                .or_default()
                .insert(format!("{} names {}", module.join("::"), path.join("::")));
        }
    }
    graphs
}

/// The cycles of `graph`: its strongly connected components of more than one node.
fn cycles(graph: &BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>) -> Vec<Vec<Module>> {
    // Tarjan's algorithm, iterative enough for a few dozen nodes.
    struct T<'a> {
        g: &'a BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Module) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(edges) = t.g.get(v) {
            for w in edges.keys() {
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).expect("low");
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).expect("low");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut component = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                t.out.push(component);
            }
        }
    }
    let mut t =
        T { g: graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: vec![], on: BTreeSet::new(), out: vec![] };
    let nodes: Vec<&Module> = graph.keys().chain(graph.values().flat_map(|e| e.keys())).collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn report(graphs: &Graphs) -> Vec<String> {
    let mut found = Vec::new();
    for (folder, graph) in graphs {
        for component in cycles(graph) {
            let mut text = format!(
                "in {}: {}",
                if folder.is_empty() { "host/src".to_string() } else { folder.join("::") },
                component.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(", ")
            );
            for from in &component {
                for (to, why) in &graph[from] {
                    if component.contains(to) {
                        let why: Vec<_> = why.iter().take(3).cloned().collect();
                        text.push_str(&format!("\n    {} -> {}: {}", from.join("::"), to.join("::"), why.join("; ")));
                    }
                }
            }
            found.push(text);
        }
    }
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_modules_of_host_src_import_each_other_without_cycles() {
    let graphs = graphs(&src());
    // The reader is checked on the tree itself: it must see the edges it is meant to.
    let top = &graphs[&Vec::<String>::new()];
    let edge = |a: &str, b: &str| top.get(&vec![a.to_string()]).is_some_and(|e| e.contains_key(&vec![b.to_string()]));
    assert!(edge("conversions", "ledger"), "the reader missed conversions -> ledger");
    assert!(edge("http", "conversions"), "the reader missed http -> conversions");
    let found = report(&graphs);
    assert!(
        found.is_empty(),
        "module cycles in host/src (data flows one way; README's map shows the layers):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cycle_check_sees_a_cycle_between_folders_and_between_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a/mod.rs", "pub mod x;\npub mod y;\nuse crate::b::{self, Thing};\n");
    write("a/x.rs", "use super::y::Y; // a comment naming crate::c is not an edge\n");
    write("a/y.rs", "pub struct Y;\nfn f() { super::x::g(); }\n");
    write("b.rs", "pub struct Thing;\nfn f() { crate::c::h(); }\n");
    write("c.rs", "use crate::{a::{x::g, y}, b as bee};\n");
    let found = report(&graphs(dir.path()));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("in host/src: a, b, c"), "{}", found[0]);
    assert!(found[1].starts_with("in a: a::x, a::y"), "{}", found[1]);
    // The same tree without the back edges has no cycle.
    write("c.rs", "pub fn h() {}\n");
    write("a/y.rs", "pub struct Y;\n");
    assert!(report(&graphs(dir.path())).is_empty());
}

/// Every transaction of the host begins through `db::begin` (or `db::begin_with`): sqlx's
/// own `Pool::begin` leaves a pooled PostgreSQL connection inside a transaction when its
/// caller is dropped mid-`BEGIN` (`faults::a_transaction_begun_by_a_caller_dropped_mid_begin_...`).
#[test]
fn every_transaction_of_host_src_begins_through_db_begin() {
    let mut offenders = Vec::new();
    for (module, path) in modules(&src()) {
        if module == ["db"] {
            continue;
        }
        let text = strip_comments(&std::fs::read_to_string(&path).expect("read"));
        for (n, line) in text.lines().enumerate() {
            if line.contains("pool.begin") {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    let load = src().join("bin/cashbackd-load.rs");
    let text = strip_comments(&std::fs::read_to_string(&load).expect("read"));
    offenders
        .extend(text.lines().filter(|l| l.contains("pool.begin")).map(|l| format!("{}: {}", load.display(), l.trim())));
    assert!(offenders.is_empty(), "transactions begun with sqlx's Pool::begin:\n{}", offenders.join("\n"));
}
