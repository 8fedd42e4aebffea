//! The `keel-mock-upstream` binary: prints its address, then serves.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::client;

#[tokio::test]
async fn binary_prints_its_url_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel-mock-upstream"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let url = line.trim_end().strip_prefix("listening on ").map(str::to_owned);
    let served = match url {
        Some(ref url) => client().get(format!("{url}/v1/models")).send().await.map(|r| r.status()),
        None => Ok(reqwest::StatusCode::IM_A_TEAPOT),
    };
    child.kill().unwrap();
    child.wait().unwrap();

    read.unwrap();
    let url = url.unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    assert_eq!(served.unwrap(), 200);
}
