//! The fuzz corpus (`fuzz/corpus/<target>/`, checked in) and every crash the fuzzers found
//! (`fuzz/regressions/<target>/`), replayed through the fuzz targets' own entry points on
//! every test run: each input is answered (an `Err` is fine) and none panics.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).expect("a readable corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "{target}: the corpus is empty");
}

#[test]
fn frames() {
    replay("frames", chat_node::fuzzing::frame);
}

#[test]
fn http_bodies() {
    replay("http_bodies", chat_node::fuzzing::http_body);
}

#[test]
fn tokens() {
    replay("tokens", chat_node::fuzzing::token);
}

#[test]
fn records() {
    replay("records", chat_node::fuzzing::record);
}

#[test]
fn ws_bytes() {
    replay("ws_bytes", chat_node::fuzzing::ws_bytes);
}
