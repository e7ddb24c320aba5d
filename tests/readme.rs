//! README's tour, run as printed against `serve --demo`: each `# → text` line says what the command
//! before it prints. A tour that stops working fails here.

use std::process::Command;

mod common;

use common::process::{BIN, serve};

/// The shell block after README's `<!-- tour` marker.
fn tour() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme.split("<!-- tour").nth(1).expect("README marks its tour");
    let block = after.split("```sh\n").nth(1).expect("a shell block");
    block.split("\n```").next().unwrap().to_owned()
}

#[test]
fn the_readme_tour_works_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--demo"], &[]);
    // Each expectation becomes a marker in the output, so that what a command printed can be told apart.
    let mut script = String::from("set -e\n");
    let mut expected = Vec::new();
    for line in tour().lines() {
        match line.strip_prefix("# → ") {
            Some(text) => {
                script.push_str(&format!("echo '@@expect {}'\n", expected.len()));
                expected.push(text.to_owned());
            }
            None => script.push_str(&format!("{line}\n")),
        }
    }
    assert!(expected.len() >= 6, "the tour says what to expect: {expected:?}");
    let bin_dir = std::path::Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", path)
        .env("SPENDGATE_URL", &server.base)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the tour failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut segments = stdout.split("@@expect ");
    let mut printed = segments.next().unwrap_or_default().to_owned();
    for (i, text) in expected.iter().enumerate() {
        assert!(
            printed.contains(text.as_str()),
            "expectation {i} ({text:?}) not in what the command printed:\n{printed}"
        );
        let next = segments.next().unwrap_or_default();
        printed = next.split_once('\n').map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    }
}

/// A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link in README, the project's own pages and docs/ leads to a file that exists and,
/// when it names a heading, to a heading that exists.
#[test]
fn the_docs_links_resolve() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages: Vec<std::path::PathBuf> =
        ["README.md", "CONTRIBUTING.md", "SECURITY.md", "CHANGELOG.md"].iter().map(|p| root.join(p)).collect();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for link in text.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
            if link.starts_with("http") || link.contains(' ') {
                continue;
            }
            let (path, heading) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            let Ok(target_text) = std::fs::read_to_string(&target) else {
                broken.push(format!("{}: {link}", page.display()));
                continue;
            };
            let headings: Vec<String> = target_text
                .lines()
                .filter_map(|l| l.trim_start_matches('#').strip_prefix(' ').filter(|_| l.starts_with('#')))
                .map(anchor)
                .collect();
            if !heading.is_empty() && !headings.iter().any(|h| h == heading) {
                broken.push(format!("{}: {link}", page.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    assert!(pages.len() > 12, "the docs are where this test looks");
}
