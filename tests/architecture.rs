//! The layers of docs/architecture.md, enforced: every `crate::` path in `src/`
//! names the file's own module or one of a lower layer, never one above (so there
//! is no import circle between modules either).

use std::path::{Path, PathBuf};

/// Each top-level module's layer; a module may use only modules of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("domain", 0),
    ("metrics", 0),
    ("protocol", 1),
    ("payments", 1),
    ("fanout", 1),
    ("store", 1),
    ("inventory", 2),
    ("config", 3),
    ("app", 4),
    ("server", 5),
    // the `jetway backup` command (a client of a running server's backup endpoint):
    // it uses only the store's snapshot format, and config names its arguments
    ("backup", 2),
];

/// Arrows up that are known and on their way out: (file, the module it uses).
const KNOWN: &[(&str, &str)] = &[];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The module a `crate::` path names (the root re-exports count as their module).
fn module_of(path: &str) -> &str {
    match path {
        "Config" => "config",
        "Running" | "start" => "server",
        other => other,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every module named by a `crate::` path in the code (comments left out).
fn uses(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push(module_of(&name).to_owned());
        }
    }
    found
}

#[test]
fn no_module_uses_one_of_a_higher_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let top = rel
            .trim_start_matches("src/")
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(own) = layer(&top) else {
            assert!(
                top == "lib" || top == "main",
                "{rel}: a new top-level module needs its layer in LAYERS (docs/architecture.md)"
            );
            continue;
        };
        for used in uses(&std::fs::read_to_string(file).unwrap()) {
            let Some(theirs) = layer(&used) else {
                wrong.push(format!("{rel}: crate::{used} is no module of LAYERS"));
                continue;
            };
            let known = KNOWN.iter().any(|(f, m)| *f == rel && *m == used);
            if used != top && theirs >= own && !known {
                wrong.push(format!(
                    "{rel} ({top}) uses crate::{used}, not a lower layer"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_reads_paths_and_skips_comments() {
    let text = "use crate::app::App; // see crate::server\n/// [`crate::Config`]\nlet x = crate::Config::parse();";
    assert_eq!(uses(text), ["app", "config"]);
}

/// The sibling modules a file of a folder names through `super::` (in a path or in
/// a `use super::{...}` group), or through `crate::app::`, comments left out. In a
/// file `depth` folders below them, the siblings are named by `super::` that many
/// times.
fn sibling_uses(text: &str, siblings: &[String], depth: usize) -> Vec<String> {
    let mut found = Vec::new();
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let up = "super::".repeat(depth);
    for prefix in [up.as_str(), "crate::app::"] {
        for (i, _) in code.match_indices(prefix) {
            // `super::super::x` in a file one folder down is not its `super::x`
            if code[..i].ends_with("super::") {
                continue;
            }
            let rest = &code[i + prefix.len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    group
                        .split(',')
                        .map(|item| item.trim().split("::").next().unwrap_or(""))
                        .collect()
                }
                None => vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")],
            };
            for n in names {
                if siblings.iter().any(|s| s == n) && !found.iter().any(|f| f == n) {
                    found.push(n.to_owned());
                }
            }
        }
    }
    found
}

/// Inside `src/app/` the use cases form no import circle (one may build on another,
/// never both ways), so a reader can follow one from the bottom up.
#[test]
fn the_use_cases_import_each_other_without_circles() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/app");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    // a use case is a file of src/app, or a folder of it (all its files together)
    let parts = |p: &Path| -> Vec<String> {
        p.strip_prefix(&dir)
            .unwrap()
            .with_extension("")
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    };
    let files: Vec<(String, usize, &PathBuf)> = files
        .iter()
        .filter(|f| parts(f) != ["mod"])
        .map(|f| {
            let parts = parts(f);
            let depth = parts.len() - usize::from(parts.last().is_some_and(|l| l == "mod"));
            (parts[0].clone(), depth, f)
        })
        .collect();
    let mut siblings: Vec<String> = files.iter().map(|(n, _, _)| n.clone()).collect();
    siblings.sort();
    siblings.dedup();
    let mut edges: Vec<(String, Vec<String>)> =
        siblings.iter().map(|n| (n.clone(), Vec::new())).collect();
    for (own, depth, f) in &files {
        let used = sibling_uses(&std::fs::read_to_string(f).unwrap(), &siblings, *depth);
        let out = &mut edges.iter_mut().find(|(n, _)| n == own).unwrap().1;
        for u in used {
            if u != *own && !out.contains(&u) {
                out.push(u);
            }
        }
    }
    // depth-first search; a node met again while still on the path closes a circle
    fn visit(
        n: &str,
        edges: &[(String, Vec<String>)],
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut circle = path[i..].to_vec();
            circle.push(n.to_owned());
            return Some(circle);
        }
        if done.iter().any(|d| d == n) {
            return None;
        }
        path.push(n.to_owned());
        let next = edges.iter().find(|(o, _)| o == n).map(|(_, u)| u.clone());
        for m in next.unwrap_or_default() {
            if let Some(c) = visit(&m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(n.to_owned());
        None
    }
    let mut done = Vec::new();
    for (n, _) in &edges {
        if let Some(c) = visit(n, &edges, &mut Vec::new(), &mut done) {
            panic!("an import circle in src/app: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_circle_check_reads_groups_and_paths() {
    let siblings = ["bookings", "busy", "refunds"].map(String::from);
    let text =
        "use super::{event, busy::Busy, App};\nuse super::refunds::CANCEL;\n// super::bookings";
    assert_eq!(sibling_uses(text, &siblings, 1), ["busy", "refunds"]);
    // one folder down: `super::` is the folder's own module
    let nested =
        "use super::{busy, App};\nuse super::super::refunds::CANCEL;\nuse crate::app::bookings::X;";
    let siblings = ["bookings", "busy", "refunds"].map(String::from);
    assert_eq!(sibling_uses(nested, &siblings, 2), ["refunds", "bookings"]);
}

/// Lines of the use cases that break "typed at the edge": a function returning JSON
/// (`serde_json::Value`), or the wire's error named outside `app/error.rs`, where
/// `AppError` maps to it.
fn untyped_lines(file: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let returns_json = ["-> Result<Value", "-> Result<serde_json::Value"]
            .iter()
            .any(|p| code.contains(p));
        let wire_error = code.contains("ApiError") && !file.ends_with("app/error.rs");
        if returns_json || wire_error {
            found.push(format!("{file}: {}", line.trim()));
        }
    }
    found
}

#[test]
fn the_use_cases_return_typed_results_and_app_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/app"), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(root).unwrap().to_string_lossy();
        wrong.extend(untyped_lines(&rel, &std::fs::read_to_string(file).unwrap()));
    }
    assert!(
        wrong.is_empty(),
        "use cases return typed results (protocol/results.rs) and AppError:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_typed_results_check_reads_signatures() {
    let bad = "pub async fn hold(&self) -> Result<Value, AppError> {";
    assert_eq!(untyped_lines("src/app/bookings.rs", bad).len(), 1);
    let bad = "use crate::protocol::ApiError;";
    assert_eq!(untyped_lines("src/app/bookings.rs", bad).len(), 1);
    assert!(untyped_lines("src/app/error.rs", bad).is_empty());
    let good =
        "pub async fn hold(&self) -> Result<Answer<BookingResult>, AppError> { // -> Result<Value";
    assert!(untyped_lines("src/app/bookings.rs", good).is_empty());
}
