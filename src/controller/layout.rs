//! The controller's shape, checked: imports between its modules go one way (no circle), and
//! no file outgrows one job (about 500 lines).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/controller") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The controller's top-level module a file belongs to (`runs` for `runs/stop.rs`).
fn module_of(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).expect("under src/controller");
    let first = relative.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

/// Test-only modules and the parent (which declares everyone) are not part of the layering.
fn counted(root: &Path, file: &Path) -> bool {
    let relative = file.strip_prefix(root).expect("under src/controller");
    let name = relative.to_string_lossy();
    !(name == "mod.rs"
        || name == "layout.rs"
        || name.starts_with("fixtures")
        || name.contains("tests"))
}

#[test]
fn imports_inside_the_controller_go_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/controller");
    let mut all = Vec::new();
    files(&root, &mut all);
    let modules: BTreeSet<String> = all.iter().map(|f| module_of(&root, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in all.iter().filter(|f| counted(&root, f)) {
        let from = module_of(&root, file);
        let text = std::fs::read_to_string(file).expect("a source file");
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        for line in code {
            for prefix in ["super::super::", "super::", "crate::controller::"] {
                for (at, _) in line.match_indices(prefix) {
                    let rest = &line[at + prefix.len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    // `super::` inside a submodule names its own module's items.
                    let sibling = prefix != "super::" || file.parent() == Some(root.as_path());
                    if sibling && name != from && modules.contains(&name) {
                        edges.entry(from.clone()).or_default().insert(name);
                    }
                }
            }
        }
    }
    // Depth-first search for a circle.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, edges, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for module in edges.keys() {
        let circle = visit(module, &edges, &mut Vec::new(), &mut done);
        assert!(
            circle.is_none(),
            "an import circle: {}",
            circle.unwrap_or_default().join(" -> ")
        );
    }
}

#[test]
fn no_controller_file_outgrows_one_job() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/controller");
    let mut all = Vec::new();
    files(&root, &mut all);
    for file in all {
        let lines = std::fs::read_to_string(&file)
            .expect("a source file")
            .lines()
            .count();
        assert!(
            lines <= 520,
            "{} has {lines} lines: split it by job",
            file.display()
        );
    }
}
