//! The `spendgate` binary as a separate process, for tests that kill it or run two of it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_spendgate");

pub struct Server {
    pub child: Child,
    pub base: String,
    pub stdout: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `spendgate serve` in `dir` on a free port and waits until it listens.
pub fn serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPENDGATE_LISTEN", "127.0.0.1:0")
        .env("SPENDGATE_WORKERS", "1")
        // No traffic beyond this machine: the bundled rates.
        .env("SPENDGATE_FX_URL", "")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spendgate serve");
    // Everything before the "listening" line (keys, the demo banner) is printed first.
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(base) = line.strip_prefix("spendgate is listening on ") {
                let _ = tx.send((base.to_owned(), text.clone()));
            }
            text.push_str(&line);
            text.push('\n');
        }
    });
    let (base, stdout) = rx.recv_timeout(Duration::from_secs(30)).expect("the server should say where it listens");
    Server { child, base, stdout }
}
