//! The layers hold: every `crate::` path in `src/` is one its part may use, as the table in
//! docs/architecture.md ("The layers") states, and the pure parts name no I/O crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A part's row: the parts it may use, and whether it must be pure.
#[derive(Debug)]
struct Row {
    uses: Vec<String>,
    pure: bool,
}

/// The table in docs/architecture.md, by part (`ledger::core`, `rails::usdc::store`, …).
fn layers(doc: &str) -> BTreeMap<String, Row> {
    let section = &doc[doc.find("## The layers").expect("docs/architecture.md has a layers section")..];
    let mut rows = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with("| part")).skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let names = |cell: &str| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>();
        let part = names(cells[1]).pop().expect("a row names its part");
        rows.insert(part, Row { uses: names(cells[2]), pure: cells[3] == "yes" });
    }
    rows
}

/// The part a file under `src/` belongs to: `ledger/writer/decide.rs` is `ledger::writer::decide`.
fn part_of(relative: &Path) -> String {
    let mut parts: Vec<String> = relative.with_extension("").iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The most specific row for a part (`rails::usdc::store` before `rails`); None: composition.
fn row_for<'a>(rows: &'a BTreeMap<String, Row>, part: &str) -> Option<(&'a str, &'a Row)> {
    let mut prefix = part.to_owned();
    loop {
        if let Some((name, row)) = rows.get_key_value(&prefix) {
            return Some((name, row));
        }
        prefix = prefix.rsplit_once("::")?.0.to_owned();
    }
}

/// Whether `path` (`store::ledger::find`) is within `allowed` (`store`, `rails::card::issuing`).
fn within(path: &str, allowed: &str) -> bool {
    path == allowed || path.starts_with(&format!("{allowed}::"))
}

/// The code of a file without its tests (a trailing `#[cfg(test)]` module) and line comments.
fn code(source: &str) -> String {
    let end = source.find("#[cfg(test)]").unwrap_or(source.len());
    source[..end].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// What in `source` (the file of `part`) breaks its row: each as `part: what`.
fn violations(rows: &BTreeMap<String, Row>, part: &str, source: &str) -> Vec<String> {
    let Some((name, row)) = row_for(rows, part) else { return Vec::new() };
    let code = code(source);
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let path: String = code[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path = path.trim_end_matches(':');
        let own = within(path, name) || within(part, path);
        if !own && !row.uses.iter().any(|allowed| within(path, allowed)) {
            found.push(format!("{part}: uses crate::{path}, which `{name}` may not"));
        }
    }
    if row.pure {
        for io in ["diesel", "actix_web", "reqwest", "tokio", "std::fs", "std::net", "std::thread"] {
            if code.contains(&format!("{io}::")) || code.contains(&format!("use {io}")) {
                found.push(format!("{part}: uses {io} in a pure part"));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && path.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(path);
        }
    }
}

fn table() -> BTreeMap<String, Row> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    layers(&std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md"))
}

#[test]
fn every_part_uses_only_what_its_row_names() {
    let rows = table();
    assert!(rows.len() >= 15 && rows["ledger::core"].pure, "the table was read: {rows:?}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let part = part_of(file.strip_prefix(&src).unwrap());
        if row_for(&rows, &part).is_some() {
            checked += 1;
        }
        broken.extend(violations(&rows, &part, &std::fs::read_to_string(file).unwrap()));
    }
    assert!(checked > 60, "only {checked} files were checked");
    assert!(broken.is_empty(), "the layers are broken:\n{}", broken.join("\n"));
}

#[test]
fn a_forbidden_import_is_caught() {
    let rows = table();
    let caught = |part: &str, source: &str| !violations(&rows, part, source).is_empty();
    assert!(caught("domain::money", "use crate::store::Db;"));
    assert!(caught("policy::window", "fn f() { crate::ledger::Ledger::start(); }"));
    assert!(caught("ledger::core", "use diesel::prelude::*;"));
    assert!(caught("ledger::core", "use crate::store::ledger::AuthorizationRow;"));
    assert!(caught("rails::usdc::payments", "use crate::store::x402::PaymentRow;"));
    assert!(caught("approvals::slack", "use crate::store::approvals;"));
    assert!(caught("http::cards", "use crate::store::Db;"));
    assert!(caught("config", "use crate::rails::usdc::wallet::MasterKey;"));
    // What a row allows passes, and tests and comments do not count.
    assert!(!caught("rails::usdc::store", "use crate::store::x402::PaymentRow;"));
    assert!(!caught("ledger::writer::decide", "use crate::ledger::core::Hold;\nuse crate::policy::evaluate;"));
    assert!(!caught("admin::cards", "use crate::rails::card::issuing::Issuer;"));
    assert!(caught("admin::cards", "use crate::rails::usdc::Usdc;"));
    assert!(!caught("domain::money", "// crate::store is below\n#[cfg(test)]\nmod tests { use crate::store; }"));
}
