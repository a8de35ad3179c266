//! `lock` and `elect`: etcdctl's coordination commands, on cairn-recipes (the same key
//! layouts, so they interoperate with etcdctl and Go's concurrency package).

use cairn_recipes::{Election, Mutex};
use cairn_sdk::{Client, KeyValueExt, Session};

/// Take the lock `name` and print its key; run `command` under it (with `ETCD_LOCK_KEY`
/// and `ETCD_LOCK_REV` set, as etcdctl does) or hold it until interrupted.
pub async fn lock(c: &Client, name: &str, ttl: i64, command: &[String]) -> anyhow::Result<()> {
    let session = Session::new(c, ttl).await?;
    let guard = Mutex::new(&session, name).lock().await?;
    if let Some((program, args)) = command.split_first() {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("ETCD_LOCK_KEY", guard.key())
            .env("ETCD_LOCK_REV", guard.fencing_token().to_string())
            .spawn()?;
        let status = tokio::select! {
            s = child.wait() => s?,
            _ = guard.lost() => anyhow::bail!("session expired while running {program}"),
        };
        guard.unlock().await?;
        session.close().await?;
        if !status.success() {
            anyhow::bail!("{program} exited with {status}");
        }
        return Ok(());
    }
    println!("{}", guard.key());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = guard.lost() => anyhow::bail!("session expired: the lock is lost"),
    }
    guard.unlock().await?;
    session.close().await?;
    Ok(())
}

/// Campaign in `name` with `proposal` and print the leader key and value once elected,
/// then lead until interrupted; or, with `listen`, print every leader.
pub async fn elect(c: &Client, name: &str, proposal: Option<&str>, listen: bool, ttl: i64) -> anyhow::Result<()> {
    let election = Election::new(c, name);
    if listen {
        let mut leaders = election.observe();
        loop {
            tokio::select! {
                next = leaders.next() => match next {
                    Some(kv) => {
                        let kv = kv?;
                        println!("{}\n{}", kv.key_str(), kv.value_str());
                    }
                    None => return Ok(()),
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
    let Some(proposal) = proposal else {
        return Err(crate::BadArgs("elect needs a proposal (or -l to listen)".into()).into());
    };
    let session = Session::new(c, ttl).await?;
    let leadership = election.campaign(&session, proposal).await?;
    println!("{}\n{proposal}", leadership.key());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = leadership.lost() => anyhow::bail!("session expired: leadership is lost"),
    }
    leadership.resign().await?;
    session.close().await?;
    Ok(())
}
