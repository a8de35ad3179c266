//! Examples shown under every command's `--help` (clap's `after_help`), kept in one table
//! so they read as a whole; a test checks that every command has one.

/// Command path (without `cairnctl`) -> examples.
const EXAMPLES: &[(&str, &str)] = &[
    ("get", "cairnctl get foo\ncairnctl get --prefix /config/ -w json\ncairnctl get foo --rev 12 --consistency s\ncairnctl get a z --keys-only --limit 10 --order DESCEND"),
    ("put", "cairnctl put foo bar\ncairnctl put foo --lease 694d77aa9e38260f < value.txt\ncairnctl put foo bar2 --prev-kv\ncairnctl put foo --ignore-value --lease 694d77aa9e38260f"),
    ("del", "cairnctl del foo\ncairnctl del --prefix /jobs/ --prev-kv\ncairnctl del a z"),
    ("txn", "cairnctl txn <<'EOF'\nmod(\"lock\") = \"0\"\n\nput lock me\n\nget lock\n\nEOF\ncairnctl txn -i"),
    ("watch", "cairnctl watch foo\ncairnctl watch --prefix /config/ --prev-kv -w json\ncairnctl watch foo --rev 1           # replay history, then follow\ncairnctl watch foo -- sh -c 'echo \"$ETCD_WATCH_KEY changed\"'\nprintf 'watch a\\nwatch --prefix b\\n' | cairnctl watch -i"),
    ("compaction", "cairnctl compaction 1234\ncairnctl compaction 1234 --physical"),
    ("lease grant", "cairnctl lease grant 60\nID=$(cairnctl lease grant 10 | cut -d' ' -f2); cairnctl put svc/a up --lease $ID"),
    ("lease revoke", "cairnctl lease revoke 694d77aa9e38260f"),
    ("lease timetolive", "cairnctl lease timetolive 694d77aa9e38260f --keys"),
    ("lease list", "cairnctl lease list"),
    ("lease keep-alive", "cairnctl lease keep-alive 694d77aa9e38260f\ncairnctl lease keep-alive --once 694d77aa9e38260f"),
    ("member list", "cairnctl member list -w table\ncairnctl member list -w json"),
    ("member add", "cairnctl member add m4 --peer-urls http://10.0.0.4:2380\ncairnctl member add m4 --peer-urls http://10.0.0.4:2380 --learner"),
    ("member remove", "cairnctl member remove 8e9e05c52164694d"),
    ("member update", "cairnctl member update 8e9e05c52164694d --peer-urls http://10.0.0.9:2380"),
    ("member promote", "cairnctl member promote 8e9e05c52164694d"),
    ("move-leader", "cairnctl --endpoints 10.0.0.1:2379 move-leader 8e9e05c52164694d"),
    ("defrag", "cairnctl defrag --endpoints 10.0.0.1:2379\ncairnctl defrag --cluster"),
    ("make-mirror", "cairnctl make-mirror --prefix /app/ 10.0.1.1:2379\ncairnctl make-mirror --prefix /app/ --dest-prefix /copy/ 10.0.1.1:2379\ncairnctl make-mirror --prefix /app/ --no-dest-prefix 10.0.1.1:2379   # keys without /app/ there"),
    ("snapshot save", "cairnctl --endpoints 10.0.0.1:2379 snapshot save backup.db"),
    ("snapshot status", "cairnctl snapshot status backup.db -w table"),
    ("snapshot restore", "cairnctl snapshot restore backup.db --name m1 --data-dir m1.cairn \\\n  --initial-cluster m1=http://10.0.0.1:2380 --initial-advertise-peer-urls http://10.0.0.1:2380"),
    ("endpoint status", "cairnctl endpoint status --cluster -w table"),
    ("endpoint health", "cairnctl endpoint health --cluster"),
    ("endpoint hashkv", "cairnctl endpoint hashkv --cluster\ncairnctl endpoint hashkv --rev 1000"),
    ("alarm list", "cairnctl alarm list"),
    ("alarm disarm", "cairnctl alarm disarm"),
    ("lock", "cairnctl lock deploy\ncairnctl lock deploy -- ./deploy.sh   # runs while holding the lock"),
    ("elect", "cairnctl elect scheduler node-1\ncairnctl elect -l scheduler            # print each leader"),
    ("auth enable", "cairnctl user add root:secret && cairnctl auth enable"),
    ("auth disable", "cairnctl --user root:secret auth disable"),
    ("auth status", "cairnctl auth status"),
    ("user add", "cairnctl user add alice:secret\ncairnctl user add alice --new-user-password secret\ncairnctl user add svc --no-password      # client certificates only"),
    ("user delete", "cairnctl user delete alice"),
    ("user get", "cairnctl user get alice"),
    ("user list", "cairnctl user list"),
    ("user passwd", "cairnctl user passwd alice"),
    ("user grant-role", "cairnctl user grant-role alice readers"),
    ("user revoke-role", "cairnctl user revoke-role alice readers"),
    ("role add", "cairnctl role add readers"),
    ("role delete", "cairnctl role delete readers"),
    ("role get", "cairnctl role get readers"),
    ("role list", "cairnctl role list"),
    ("role grant-permission", "cairnctl role grant-permission readers read /config/ --prefix\ncairnctl role grant-permission writers readwrite a z"),
    ("role revoke-permission", "cairnctl role revoke-permission readers /config/ --prefix"),
    ("check perf", "cairnctl check perf\ncairnctl check perf --load m --prefix /perf/ --auto-compact --auto-defrag"),
    ("version", "cairnctl version"),
    ("completion", "source <(cairnctl completion bash)\ncairnctl completion zsh > \"${fpath[1]}/_cairnctl\""),
];

/// `cmd` with the examples attached to its subcommands.
pub fn attach(cmd: clap::Command) -> clap::Command {
    attach_under(cmd, "")
}

fn attach_under(mut cmd: clap::Command, path: &str) -> clap::Command {
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in names {
        let sub_path = if path.is_empty() { name.clone() } else { format!("{path} {name}") };
        cmd = cmd.mut_subcommand(&name, |s| {
            let s = match EXAMPLES.iter().find(|(p, _)| *p == sub_path) {
                Some((_, text)) => s.after_help(format!("Examples:\n{}", indent(text))),
                None => s,
            };
            attach_under(s, &sub_path)
        });
    }
    cmd
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_example_parses() {
        let mut checked = 0;
        for (path, text) in super::EXAMPLES {
            let joined = text.replace("\\\n", " ");
            for line in joined.lines() {
                // Without the comment and shell plumbing around the cairnctl command itself.
                let line = line.split("  #").next().unwrap_or_default().trim();
                let line = line.strip_prefix("source <(").map_or(line, |l| l.trim_end_matches(')'));
                let line = line.split(" < ").next().unwrap_or_default();
                let line = line.split(" > ").next().unwrap_or_default();
                let line = line.split(" <<").next().unwrap_or_default();
                if !line.starts_with("cairnctl ") || line.contains(['$', '|', ';']) || line.contains("&&") {
                    continue;
                }
                let args = shlex::split(line).unwrap_or_else(|| panic!("{path}: cannot split {line:?}"));
                let r = super::attach(crate::Cli::command()).try_get_matches_from(&args);
                assert!(
                    r.is_ok(),
                    "{path}: {line:?} does not parse: {}",
                    r.err().map(|e| e.to_string()).unwrap_or_default()
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} example lines checked");
    }
}
