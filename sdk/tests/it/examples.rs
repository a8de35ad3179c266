//! The programs in `sdk/examples/` (built by `cargo test`, as every example is) run against
//! a real server and print what they promise.

use super::harness::Target;
use cairn_testing::example_binary;

crate::on_both!(1: every_example_runs);

fn run(t: &Target, name: &str) -> String {
    let out = std::process::Command::new(example_binary(name))
        .env("CAIRN_ENDPOINTS", t.cluster.endpoints())
        .output()
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{name}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn every_example_runs(t: Target) {
    assert!(run(&t, "connect").starts_with("connected: member "));
    let kv = run(&t, "kv");
    assert!(
        kv.contains("replaced Some(\"hello\")") && kv.contains("now: hello again") && kv.contains("deleted 2"),
        "{kv}"
    );
    assert_eq!(run(&t, "txn"), "counter: 1\ncounter: 2\ncounter: 3\n");
    let w = run(&t, "watch");
    assert!(w.starts_with("Put /example/watch/a = \"1\"\nPut /example/watch/a = \"2\"\nDelete /example/watch/a = \"\"\ncurrent to revision "), "{w}");
    let l = run(&t, "lease");
    assert!(l.contains("keys 1") && l.ends_with("after close: 0 keys\n"), "{l}");
    let lock = run(&t, "lock");
    let lines: Vec<&str> = lock.lines().collect();
    assert_eq!(lines.len(), 4, "{lock}");
    // Strictly one holder at a time: each release follows its own hold.
    assert!(lines[0].ends_with("holds the lock") && lines[1].ends_with("releases it"), "{lock}");
    assert_eq!(lines[0].split(' ').next(), lines[1].split(' ').next(), "{lock}");
}
