//! `stm()` beside etcd's own STM (clientv3 `concurrency.NewSTM`, Go, built from Debian's
//! etcd 3.4 sources): the two commit against each other's writes on the same keys.

use crate::harness::*;
use cairn_recipes::{stm, Isolation};
use cairn_testing::Cluster;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn go(bin: &PathBuf, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    cmd
}

fn iso_name(iso: Isolation) -> &'static str {
    match iso {
        Isolation::SerializableSnapshot => "serializable-snapshot",
        Isolation::Serializable => "serializable",
        Isolation::RepeatableReads => "repeatable-reads",
        Isolation::ReadCommitted => "read-committed",
    }
}

async fn number(cl: &cairn_sdk::Client, key: &str) -> i64 {
    let got = cl.get(key, None).await.unwrap();
    got.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).parse().unwrap()).unwrap_or(0)
}

/// Go's STM and Cairn's `stm()` transfer money between the same accounts at once: no money
/// is made or lost and no transfer is counted twice or lost (each side's commit checks the
/// other's writes). Then, for each serializable level, each side's transaction is made to
/// conflict with the other's write and runs again, seeing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stm_and_clientv3_stm_commit_against_each_other() {
    let bin = go_program("stm").await;
    let c = Cluster::start(3, &[]).await;
    let ep = c.members[0].endpoint();
    let cl = client(&c, 1).await;
    const ACCOUNTS: usize = 3;
    const EACH: usize = 60;
    for a in 0..ACCOUNTS {
        cl.put(format!("/bank/acct/{a}"), "100", None).await.unwrap();
    }
    let goes: Vec<Streaming> = (0..2)
        .map(|_| {
            let args = ["transfer", &ep, "serializable-snapshot", &EACH.to_string(), &ACCOUNTS.to_string(), "/bank/"];
            Streaming::spawn(go(&bin, &args))
        })
        .collect();
    let mut rust = Vec::new();
    for t in 0..2usize {
        let cl = client(&c, t + 1).await;
        rust.push(tokio::spawn(async move {
            let mut runs = 0;
            for n in 0..EACH {
                let (from, to) =
                    (format!("/bank/acct/{}", (n + t) % ACCOUNTS), format!("/bank/acct/{}", (n + t + 2) % ACCOUNTS));
                stm(&cl, Isolation::SerializableSnapshot, |tx| {
                    runs += 1;
                    let (from, to) = (from.clone(), to.clone());
                    async move {
                        let num = |v: Option<String>| v.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                        let (f, g) = (num(tx.get_string(&from).await?), num(tx.get_string(&to).await?));
                        let count = num(tx.get_string("/bank/count").await?);
                        tx.put(&from, (f - 5).to_string());
                        tx.put(&to, (g + 5).to_string());
                        tx.put("/bank/count", (count + 1).to_string());
                        Ok(())
                    }
                })
                .await
                .unwrap();
            }
            runs
        }));
    }
    let mut retries = 0;
    for t in rust {
        retries += within(Duration::from_secs(120), "Rust transfers", t).await.unwrap() - EACH;
    }
    for g in &goes {
        let line = tokio::task::block_in_place(|| g.take(1)).remove(0);
        let runs: usize =
            line.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("Go said {line:?}"));
        retries += runs - EACH;
    }
    let mut total = 0;
    for a in 0..ACCOUNTS {
        total += number(&cl, &format!("/bank/acct/{a}")).await;
    }
    assert_eq!(total, 100 * ACCOUNTS as i64, "money was made or lost between the two STMs");
    assert_eq!(number(&cl, "/bank/count").await, 4 * EACH as i64, "a transfer was lost or counted twice");
    println!("{retries} transactions ran again after a conflict");

    for iso in [Isolation::SerializableSnapshot, Isolation::Serializable, Isolation::RepeatableReads] {
        let key = format!("/held/{}", iso_name(iso));
        cl.put(key.as_str(), "before", None).await.unwrap();
        // Go reads, Cairn's stm() writes, Go commits: Go runs again and sees the write.
        let (held, mut stdin) = Streaming::spawn_with_input(go(&bin, &["hold", &ep, iso_name(iso), &key]));
        assert_eq!(tokio::task::block_in_place(|| held.take(1)), ["read before"], "{iso:?}");
        stm(&cl, iso, |tx| {
            let key = key.clone();
            async move {
                tx.put(&key, "from-rust");
                Ok(())
            }
        })
        .await
        .unwrap();
        use std::io::Write;
        writeln!(stdin, "go on").unwrap();
        assert_eq!(tokio::task::block_in_place(|| held.take(1)), ["runs 2 seen from-rust"], "{iso:?}");
        assert_eq!(cl.get(format!("{key}/seen"), None).await.unwrap().kvs[0].value, b"from-rust");

        // Cairn's stm() reads, Go's STM writes, Cairn commits: it runs again and sees it.
        let mut runs = 0;
        let seen = stm(&cl, iso, |tx| {
            runs += 1;
            let (key, bin, ep, first) = (key.clone(), bin.clone(), ep.clone(), runs == 1);
            async move {
                let v = tx.get_string(&key).await?;
                if first {
                    let k = key.clone();
                    let out = tokio::task::spawn_blocking(move || {
                        go(&bin, &["put", &ep, iso_name(iso), &k, "from-go"]).output().unwrap()
                    })
                    .await
                    .unwrap();
                    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
                }
                tx.put(format!("{key}/rust-seen"), v.clone().unwrap_or_default());
                Ok(v)
            }
        })
        .await
        .unwrap();
        assert_eq!((runs, seen.as_deref()), (2, Some("from-go")), "{iso:?}");
    }
}
