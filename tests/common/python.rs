//! A Python with pinned packages from PyPI, for tests that read spendgate's output with the tools
//! people use: a virtual environment under the target directory, made once per set of packages.

use std::path::PathBuf;
use std::process::Command;

/// The `python` of a virtual environment holding `packages` (pinned, `name==version`).
pub fn python_with(packages: &[&str]) -> PathBuf {
    // The tests of one binary run on threads of one process, which would share one building
    // directory: one installs, the others wait.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let name = packages.join("+").replace(['=', '.'], "_");
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("python-{name}"));
    let python = home.join("bin/python");
    if python.exists() {
        return python;
    }
    // Made beside its final place and renamed into it, so that a test never finds half of one.
    let building = home.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let made = Command::new("python3").args(["-m", "venv"]).arg(&building).status().expect("python3 runs");
    assert!(made.success(), "python3 -m venv failed");
    let installed = Command::new(building.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .expect("pip runs");
    assert!(installed.success(), "pip install {packages:?} failed");
    // A venv's scripts name its directory: the interpreter is called by path, which works anywhere.
    if std::fs::rename(&building, &home).is_err() {
        let _ = std::fs::remove_dir_all(&building);
    }
    python
}
