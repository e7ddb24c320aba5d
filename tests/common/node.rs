//! Node.js packages from npm, pinned, for tests that drive spendgate with the official JavaScript
//! clients: installed once per set of packages into a directory under the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory whose `node_modules` holds `packages` (pinned, `name@version`); a script copied
/// into it imports them.
pub fn node_with(packages: &[&str]) -> PathBuf {
    // The tests of one binary run on threads of one process: one installs, the others wait.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let name = packages.join("+").replace(['@', '/', '.'], "_");
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("node-{name}"));
    if home.join("node_modules").exists() {
        return home;
    }
    // Made beside its final place and renamed into it, so that a test never finds half of one.
    let building = home.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    std::fs::create_dir_all(&building).unwrap();
    std::fs::write(building.join("package.json"), r#"{"private": true, "type": "module"}"#).unwrap();
    // Peer ranges are not enforced: the registry's newest peers of a pinned package can name
    // versions of it that do not exist yet; the versions a test pins are the ones it runs.
    let installed = Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund", "--save-exact", "--legacy-peer-deps"])
        .args(packages)
        .current_dir(&building)
        .status()
        .expect("npm runs");
    assert!(installed.success(), "npm install {packages:?} failed");
    if std::fs::rename(&building, &home).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    home
}

/// Runs the script `script` (a path in the repository) with node inside `home`, with `env` set;
/// returns its standard output, failing the test with its standard error if it fails.
pub fn run_script(home: &Path, script: &str, env: &[(&str, &str)]) -> String {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let name = source.file_name().unwrap();
    std::fs::copy(&source, home.join(name)).expect("script copied");
    let output =
        Command::new("node").arg(name).envs(env.iter().copied()).current_dir(home).output().expect("node runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "node {script} failed: {stderr}");
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Starts the script `script` with node inside `home` and `env`, and reads its first line of output
/// (a JSON document: where it listens); the rest of its output is read when it is stopped.
pub struct Running {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    pub first: serde_json::Value,
}

pub fn start_script(home: &Path, script: &str, env: &[(&str, &str)]) -> Running {
    use std::io::BufRead;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let name = source.file_name().unwrap();
    std::fs::copy(&source, home.join(name)).expect("script copied");
    let mut child = Command::new("node")
        .arg(name)
        .envs(env.iter().copied())
        .current_dir(home)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the script says where it listens").expect("a line");
    Running { child, lines, first: serde_json::from_str(&first).expect("a JSON line") }
}

impl Running {
    /// Stops the script; every line it printed after the first, each a JSON document.
    pub fn stop(mut self) -> Vec<serde_json::Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (&mut self.lines).map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
    }
}

/// A test that fails before `stop` leaves no server behind.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
