//! What the `keel` binary's integration tests share.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `keel serve --config CONFIG` with its data in `data_dir` and `env` set, and returns once it listens.
/// Its log is drained on a thread of its own, so keel never blocks on a full pipe.
pub fn serve(config: &Path, data_dir: &Path, env: &[(&str, &str)]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--config"])
        .arg(config)
        .env("KEEL_DATA_DIR", data_dir)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("keel exited before listening").unwrap();
        if line.contains("keel listening") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}
