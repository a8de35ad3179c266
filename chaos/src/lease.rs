//! Lease safety under faults.
//!
//! Lease clients grant a short lease, put a key of their own on it, sometimes renew it
//! once, and then read the key (linearizably) every quarter second until it is gone. The
//! member clocks and this process share the machine's monotonic clock, so the record says
//! when the lease must still have been alive and when it must have been gone:
//!
//! - **never early**: the leader starts a lease's countdown when it applies the grant or
//!   handles the renewal, after the client sent it, so the key must be present in any read
//!   that completed less than TTL after the grant (or after an acknowledged renewal) was
//!   sent. A renewal answered with TTL 0 (lease gone) counts as a read that found nothing.
//!   This holds under every fault: a new leader restarts each lease's clock from its
//!   checkpointed remaining TTL, never from less.
//! - **not much late**: without faults, the key is gone within `slack` after TTL from the
//!   latest moment the countdown can have started (the grant's or renewal's answer). A
//!   leader change may extend a lease (as in etcd: the new leader's clock restarts from the
//!   checkpoint), so reads in or shortly after a fault window are not held to this bound;
//!   after recovery every leased key must be gone within TTL plus `slack`.

use crate::history::elapsed_ns;
use cairn_api::etcdserverpb::kv_client::KvClient;
use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Key prefix of the leased keys (inside the watch check's `k`..`l` range).
pub const PREFIX: &str = "kl";

/// The TTL the lease clients ask for, in seconds.
pub const TTL: i64 = 2;

/// Time past a lease's TTL by which its key must be gone when nothing fails (the lessor
/// checks every 50 ms; the revocation is one proposal).
pub const SLACK: Duration = Duration::from_millis(1500);

/// How long after a fault healed a lease may still be extended by the leader change it
/// caused (an election, then the new lessor starts after a read barrier).
pub const AFTER_FAULT: Duration = Duration::from_secs(3);

/// One linearizable read of a leased key (times in ns since the run started).
#[derive(Debug, Clone, Serialize)]
pub struct Read {
    pub invoked: u64,
    pub completed: u64,
    pub present: bool,
}

/// One lease's life as a client saw it (times in ns since the run started).
#[derive(Debug, Clone, Serialize)]
pub struct LeaseRun {
    pub client: usize,
    pub key: String,
    /// The TTL the grant answered with, in seconds.
    pub ttl: i64,
    /// The grant's invoke and completion.
    pub granted: (u64, u64),
    /// An acknowledged renewal's invoke and completion.
    pub renewed: Option<(u64, u64)>,
    /// A renewal was sent and its outcome is unknown (it may have renewed at any later time).
    pub renew_unknown: bool,
    pub reads: Vec<Read>,
}

/// Grant, put, maybe renew once, read until the key is gone; repeat until `until`.
pub async fn client(
    url: String,
    id: usize,
    seed: u64,
    start: Instant,
    until: Instant,
    op_timeout: Duration,
    out: Arc<Mutex<Vec<LeaseRun>>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let Some(ch) = crate::runner::channel(&url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let key = format!("{PREFIX}{id}-{n}");
        match tokio::time::timeout(op_timeout * 3, one_lease(ch, key, id, &mut rng, start, until, op_timeout)).await {
            Ok(Some(run)) => out.lock().unwrap_or_else(|p| p.into_inner()).push(run),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn one_lease(
    ch: Channel,
    key: String,
    client: usize,
    rng: &mut StdRng,
    start: Instant,
    until: Instant,
    op_timeout: Duration,
) -> Option<LeaseRun> {
    let mut leases = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch.clone());
    let g_inv = elapsed_ns(start);
    let grant = tokio::time::timeout(op_timeout, leases.lease_grant(LeaseGrantRequest { ttl: TTL, id: 0 }))
        .await
        .ok()?
        .ok()?
        .into_inner();
    let granted = (g_inv, elapsed_ns(start));
    let put =
        PutRequest { key: key.clone().into_bytes(), value: b"leased".to_vec(), lease: grant.id, ..Default::default() };
    if !matches!(tokio::time::timeout(op_timeout, kv.put(put)).await, Ok(Ok(_))) {
        // Unknown whether it applied: the final check still wants the key gone.
        return None;
    }
    let mut run = LeaseRun { client, key, ttl: grant.ttl, granted, renewed: None, renew_unknown: false, reads: vec![] };
    if rng.random_bool(0.5) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        let k_inv = elapsed_ns(start);
        match tokio::time::timeout(op_timeout, keep_alive_once(leases.clone(), grant.id)).await {
            Ok(Ok(ttl)) if ttl > 0 => run.renewed = Some((k_inv, elapsed_ns(start))),
            // The lease was gone when the leader handled the renewal.
            Ok(Ok(_)) => run.reads.push(Read { invoked: k_inv, completed: elapsed_ns(start), present: false }),
            _ => run.renew_unknown = true,
        }
    }
    // Read until the key is gone, for at most TTL plus a few seconds past the last renewal.
    let last = run.renewed.map_or(run.granted.1, |r| r.1);
    let give_up = last + (Duration::from_secs(run.ttl.max(0) as u64) + Duration::from_secs(5)).as_nanos() as u64;
    while Instant::now() < until + Duration::from_secs(5) && elapsed_ns(start) < give_up {
        let invoked = elapsed_ns(start);
        let req = RangeRequest { key: run.key.clone().into_bytes(), ..Default::default() };
        if let Ok(Ok(r)) = tokio::time::timeout(op_timeout, kv.range(req)).await {
            let present = !r.into_inner().kvs.is_empty();
            run.reads.push(Read { invoked, completed: elapsed_ns(start), present });
            if !present {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = tokio::time::timeout(op_timeout, leases.lease_revoke(LeaseRevokeRequest { id: grant.id })).await;
    Some(run)
}

/// One keepalive round on a fresh stream: the TTL answered (0: the lease is gone).
async fn keep_alive_once(mut leases: LeaseClient<Channel>, id: i64) -> Result<i64, tonic::Status> {
    let req = LeaseKeepAliveRequest { id };
    let mut stream = leases.lease_keep_alive(crate::watch::tokio_stream_once(req)).await?.into_inner();
    match stream.message().await? {
        Some(r) => Ok(r.ttl),
        None => Err(tonic::Status::unavailable("keepalive stream ended")),
    }
}

/// The lease problems in `runs`; `faults` are the nemesis's (start, end) windows.
pub fn check(runs: &[LeaseRun], faults: &[(u64, u64)]) -> Vec<String> {
    let ns = |d: Duration| d.as_nanos() as u64;
    let mut problems = Vec::new();
    for run in runs {
        let ttl = ns(Duration::from_secs(run.ttl.max(0) as u64));
        // The countdown started no earlier than this ...
        let earliest = run.renewed.map_or(run.granted.0, |r| r.0.max(run.granted.0));
        // ... and, unless a renewal's outcome is unknown, no later than this.
        let latest = run.renewed.map_or(run.granted.1, |r| r.1);
        for read in &run.reads {
            if !read.present && read.completed < earliest + ttl {
                problems.push(format!(
                    "lease of {} (TTL {} s) expired early: gone in a read that completed {} ms after the \
                     countdown could have started at the earliest: {run:?}",
                    run.key,
                    run.ttl,
                    (read.completed - earliest) / 1_000_000
                ));
                break;
            }
            let late = read.present && !run.renew_unknown && read.invoked > latest + ttl + ns(SLACK);
            let faulty =
                faults.iter().any(|&(s, e)| s <= read.invoked && run.granted.0 <= e.saturating_add(ns(AFTER_FAULT)));
            if late && !faulty {
                problems.push(format!(
                    "{} outlived its lease (TTL {} s) by more than {} ms with no fault: present in a read \
                     invoked {} ms after the countdown started at the latest: {run:?}",
                    run.key,
                    run.ttl,
                    SLACK.as_millis(),
                    (read.invoked - latest) / 1_000_000
                ));
                break;
            }
        }
    }
    if problems.len() > 5 {
        let more = problems.len() - 5;
        problems.truncate(5);
        problems.push(format!("... and {more} more lease problems"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn run(renewed: Option<(u64, u64)>, reads: &[(u64, bool)]) -> LeaseRun {
        LeaseRun {
            client: 0,
            key: "kl0-1".into(),
            ttl: 2,
            granted: (1000 * MS, 1010 * MS),
            renewed: renewed.map(|(a, b)| (a * MS, b * MS)),
            renew_unknown: false,
            reads: reads
                .iter()
                .map(|&(t, present)| Read { invoked: t * MS, completed: t * MS + MS, present })
                .collect(),
        }
    }

    #[test]
    fn a_lease_that_lives_its_ttl_and_goes_passes() {
        let ok = run(None, &[(1500, true), (2900, true), (3100, false)]);
        assert!(check(&[ok], &[]).is_empty());
        let renewed = run(Some((2000, 2010)), &[(2900, true), (3900, true), (4100, false)]);
        assert!(check(&[renewed], &[]).is_empty());
    }

    #[test]
    fn early_expiry_is_caught_even_under_faults() {
        let early = run(None, &[(1500, true), (2500, false)]);
        let p = check(&[early], &[(0, u64::MAX)]);
        assert!(p.len() == 1 && p[0].contains("expired early"), "{p:?}");
        // Gone before TTL after an acknowledged renewal.
        let after_renewal = run(Some((2000, 2010)), &[(3100, false)]);
        assert!(check(&[after_renewal], &[]).iter().any(|p| p.contains("expired early")));
    }

    #[test]
    fn a_late_key_is_caught_only_away_from_faults() {
        let late = run(None, &[(3100, true), (4700, true)]);
        let p = check(std::slice::from_ref(&late), &[]);
        assert!(p.len() == 1 && p[0].contains("outlived its lease"), "{p:?}");
        // A fault during the lease's life excuses it (a leader change extends leases) ...
        assert!(check(std::slice::from_ref(&late), &[(1200 * MS, 1500 * MS)]).is_empty());
        // ... a fault after the late read does not.
        let p = check(std::slice::from_ref(&late), &[(5000 * MS, 5100 * MS)]);
        assert!(p.iter().any(|p| p.contains("outlived")), "{p:?}");
        // Nor is a renewal whose outcome is unknown held to the bound.
        let unknown = LeaseRun { renew_unknown: true, ..late };
        assert!(check(&[unknown], &[]).is_empty());
    }
}
