//! The module table in `docs/ARCHITECTURE.md` is the dependency order: a module may import only
//! the modules listed below it. This test reads the table and every file under `src/`, and fails
//! naming the file and the import that goes up (or a module the table does not list), so the
//! document and the code cannot drift apart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The modules of the table's rows, top to bottom.
fn table_order() -> Vec<String> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/ARCHITECTURE.md"))
        .unwrap_or_else(|e| panic!("docs/ARCHITECTURE.md: {e}"));
    let section = doc
        .split("## Modules")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no '## Modules' section"));
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_owned)
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs and main.rs).
fn owner(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Every top-level module a source text names as `crate::m` or inside `crate::{a, b}`.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            found.extend(inner.split(',').filter_map(|p| ident(p.trim())));
        } else if let Some(m) = ident(rest) {
            found.push(m);
        }
    }
    found
}

fn ident(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_owned())
}

#[test]
fn no_module_imports_one_above_it_in_the_architecture_table() {
    let order = table_order();
    assert!(order.len() > 10, "the module table lists only {order:?}");
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(me) = owner(&src, file) else {
            continue;
        };
        let Some(&my_rank) = rank.get(me.as_str()) else {
            wrong.push(format!(
                "{}: module `{me}` has no row in docs/ARCHITECTURE.md",
                file.display()
            ));
            continue;
        };
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for used in imports(&text) {
            if used == me {
                continue;
            }
            match rank.get(used.as_str()) {
                Some(&r) if r > my_rank => {}
                Some(_) => wrong.push(format!(
                    "{}: `{me}` imports `{used}`, which is above it in docs/ARCHITECTURE.md's table",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{}: imports `{used}`, which has no row in docs/ARCHITECTURE.md",
                    file.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn imports_are_read_from_paths_and_groups() {
    let text = "use crate::{date, x509};\nlet a = crate::hub::Hub::new();";
    assert_eq!(imports(text), vec!["date", "x509", "hub"]);
}
