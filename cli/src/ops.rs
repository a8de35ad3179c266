//! Cluster operations: member add/remove/update/promote, move-leader, defrag and
//! snapshot save/status/restore, printed as etcdctl prints them.

use crate::output::{self, Format};
use crate::{BadArgs, Cli};
use anyhow::Context as _;
use cairn_store::{backup, ids, EngineKind};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum MemberCmd {
    /// List the cluster's members.
    List,
    /// Add a member (then start it with the printed settings).
    Add {
        /// The new member's name.
        name: String,
        /// Its peer URLs, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a non-voting learner (promote it once it has caught up).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member (hex id).
    Remove {
        /// The member's ID (hex, from `member list`).
        id: String,
    },
    /// Change a member's peer URLs.
    Update {
        /// The member's ID (hex).
        id: String,
        /// Its new peer URLs, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
    /// Promote a learner that has caught up to a voting member.
    Promote {
        /// The learner's ID (hex).
        id: String,
    },
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Stream a backup of one member's store to FILE (one endpoint).
    Save {
        /// Where to write the backup (etcd's snapshot format).
        file: PathBuf,
    },
    /// Verify a backup file and print its hash, revision, keys and size.
    Status {
        /// A backup from `snapshot save` (Cairn's or etcd's).
        file: PathBuf,
    },
    /// Restore a backup into a new data directory, as a member of a new cluster.
    Restore(RestoreArgs),
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup to restore (from `snapshot save`, etcd's `etcdctl snapshot save`, or an
    /// etcd member's `member/snap/db` with --skip-hash-check).
    file: PathBuf,
    /// This member's name.
    #[arg(long, default_value = "default")]
    name: String,
    /// Data directory to create [default: ${name}.cairn].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The new cluster: name1=url1,name2=url2,...
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Add this much to the store revision (so it never goes back for watchers).
    #[arg(long, default_value_t = 0)]
    bump_revision: i64,
    /// Mark the restored revision compacted (watchers from before must resync).
    #[arg(long)]
    mark_compacted: bool,
    /// Accept an etcd database without a checksum (a copy of a member's member/snap/db).
    #[arg(long)]
    skip_hash_check: bool,
}

fn parse_id(id: &str) -> anyhow::Result<u64> {
    u64::from_str_radix(id.trim_start_matches("0x"), 16)
        .map_err(|_| BadArgs(format!("bad member ID {id:?}: expected hexadecimal")).into())
}

pub async fn member(cli: &Cli, cmd: &MemberCmd) -> anyhow::Result<()> {
    let c = cli.client().await?;
    let w = cli.write_out;
    match cmd {
        MemberCmd::List => {
            let (header, members) = c.member_list_with_header().await?;
            output::print_members(&members, Some(header), w);
        }
        MemberCmd::Add { name, peer_urls, learner } => {
            let r = c.member_add(peer_urls.clone(), *learner).await?;
            let id = r.member.as_ref().map_or(0, |m| m.id);
            if w == Format::Json {
                output::print_members(&r.members, Some(cairn_sdk::Header::from(r.header)), w);
                return Ok(());
            }
            println!("Member {id:16x} added to cluster {:16x}", r.header.map_or(0, |h| h.cluster_id));
            let mut initial = Vec::new();
            for m in &r.members {
                let n = if m.id == id { name.clone() } else { m.name.clone() };
                initial.extend(m.peer_ur_ls.iter().map(|u| format!("{n}={u}")));
            }
            println!();
            println!("ETCD_NAME=\"{name}\"");
            println!("ETCD_INITIAL_CLUSTER=\"{}\"", initial.join(","));
            println!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"", peer_urls.join(","));
            println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
        }
        MemberCmd::Remove { id } => {
            let id = parse_id(id)?;
            c.member_remove(id).await?;
            let cid = c.status().await.ok().and_then(|s| s.header).map_or(0, |h| h.cluster_id);
            println!("Member {id:16x} removed from cluster {cid:16x}");
        }
        MemberCmd::Update { id, peer_urls } => {
            let id = parse_id(id)?;
            c.member_update(id, peer_urls.clone()).await?;
            let cid = c.status().await.ok().and_then(|s| s.header).map_or(0, |h| h.cluster_id);
            println!("Member {id:16x} updated in cluster {cid:16x}");
        }
        MemberCmd::Promote { id } => {
            let id = parse_id(id)?;
            c.member_promote(id).await?;
            let cid = c.status().await.ok().and_then(|s| s.header).map_or(0, |h| h.cluster_id);
            println!("Member {id:16x} promoted in cluster {cid:16x}");
        }
    }
    Ok(())
}

pub async fn move_leader(cli: &Cli, target: &str) -> anyhow::Result<()> {
    let target = parse_id(target)?;
    let c = cli.client().await?;
    let from = c.status().await?.leader;
    c.move_leader(target).await?;
    println!("Leadership transferred from {from:x} to {target:x}");
    Ok(())
}

pub async fn defrag(cli: &Cli, cluster: bool) -> anyhow::Result<()> {
    let mut failed = false;
    for ep in cli.each_endpoint(cluster).await? {
        let r = async { anyhow::Ok(cli.client_to(std::slice::from_ref(&ep)).await?.defragment().await?) }.await;
        match r {
            Ok(()) => println!("Finished defragmenting etcd member[{ep}]"),
            Err(e) => {
                eprintln!("Failed to defragment etcd member[{ep}] ({e})");
                failed = true;
            }
        }
    }
    if failed {
        anyhow::bail!("defragment failed on some members");
    }
    Ok(())
}

pub async fn snapshot(cli: &Cli, cmd: &SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Save { file } => save(cli, file).await,
        SnapshotCmd::Status { file } => {
            let st = backup::status(file)?;
            match cli.write_out {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"hash": st.hash, "revision": st.revision, "totalKey": st.total_keys,
                        "totalSize": st.total_size, "sha256": st.sha256.map(|s| hex(&s))})
                ),
                Format::Table => {
                    let mut t = output::table(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]);
                    t.add_row(status_row(&st));
                    println!("{t}");
                }
                Format::Fields => {
                    output::field("Hash", st.hash);
                    output::field("Revision", st.revision);
                    output::field("Keys", st.total_keys);
                    output::field("Size", st.total_size);
                }
                Format::Simple => println!("{}", status_row(&st).join(", ")),
            }
            Ok(())
        }
        SnapshotCmd::Restore(a) => restore(a),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn status_row(st: &backup::BackupStatus) -> Vec<String> {
    vec![
        format!("{:x}", st.hash),
        st.revision.to_string(),
        st.total_keys.to_string(),
        output::human_bytes(st.total_size as i64),
    ]
}

async fn save(cli: &Cli, file: &Path) -> anyhow::Result<()> {
    if cli.endpoints.len() != 1 {
        return Err(
            BadArgs(format!("snapshot must be requested to one selected node, not {}", cli.endpoints.len())).into()
        );
    }
    let c = cli.client().await?;
    let mut stream = c.snapshot().await?;
    let mut part = file.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut out = std::io::BufWriter::new(
        // Private, as etcdctl makes it: a backup holds every value and the auth data.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&part)
            .with_context(|| format!("creating {}", part.display()))?,
    );
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = async {
        while let Some(msg) = stream.message().await? {
            out.write_all(&msg.blob)?;
            bar.set_length(bar.position() + msg.blob.len() as u64 + msg.remaining_bytes);
            bar.inc(msg.blob.len() as u64);
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        anyhow::Ok(())
    }
    .await;
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e.context("receiving the snapshot"));
    }
    // Check what arrived before calling it a backup.
    let st = match backup::status(&part) {
        Ok(st) => st,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(anyhow::anyhow!("the received snapshot is damaged: {e}"));
        }
    };
    std::fs::rename(&part, file)?;
    println!("Snapshot saved at {}", file.display());
    eprintln!(
        "revision {}, {} keys, {} bytes, sha256 {}",
        st.revision,
        st.total_keys,
        st.total_size,
        st.sha256.map(|s| hex(&s)).unwrap_or_default()
    );
    Ok(())
}

fn restore(a: &RestoreArgs) -> anyhow::Result<()> {
    let mut cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in a.initial_cluster.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, url) =
            part.split_once('=').ok_or_else(|| BadArgs(format!("--initial-cluster: {part:?} is not name=url")))?;
        cluster.entry(name.to_string()).or_default().push(url.to_string());
    }
    let mine = cluster.get(&a.name).ok_or_else(|| BadArgs(format!("--initial-cluster has no member {:?}", a.name)))?;
    let (mut m, mut adv) = (mine.clone(), a.initial_advertise_peer_urls.clone());
    m.sort();
    adv.sort();
    if m != adv {
        return Err(BadArgs(format!(
            "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
            a.name,
            m.join(","),
            adv.join(",")
        ))
        .into());
    }
    let token = &a.initial_cluster_token;
    let member_id = ids::member_id(&adv, token, 0);
    let cluster_id = ids::cluster_id(cluster.values().map(|urls| ids::member_id(urls, token, 0)));
    let dir = a.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("{}.cairn", a.name)));
    if dir.exists() {
        return Err(BadArgs(format!("data-dir {:?} exists", dir.display().to_string())).into());
    }
    let opts = backup::RestoreOptions {
        member_id,
        cluster_id,
        bump_revision: a.bump_revision,
        mark_compacted: a.mark_compacted,
        skip_hash_check: a.skip_hash_check,
    };
    let restored = (|| {
        let engine = cairn_store::engine::open(EngineKind::Redb, &dir.join("member"))?;
        let revision = backup::restore(&a.file, engine.as_ref(), &opts)?;
        anyhow::Ok(revision)
    })();
    match restored {
        Ok(revision) => {
            println!(
                "restored snapshot (revision {revision}) to {} as member {member_id:x} of new cluster {cluster_id:x}",
                dir.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}
