//! etcd's command line, environment and config file, brought to Cairn's [`Flags`].
//!
//! An existing etcd deployment (a kubeadm manifest, a systemd unit, an `etcd.conf.yml`)
//! must start Cairn unchanged. Before clap sees the arguments, this module:
//!
//! - accepts Go's flag syntax: `-name` as well as `--name`, and `--flag=true|false` for
//!   booleans (Cairn's own booleans take the same values);
//! - reads `--config-file` (or `ETCD_CONFIG_FILE`): etcd's YAML, the keys of
//!   `etcd.conf.yml.sample`, with `client-transport-security` / `peer-transport-security`
//!   nested and durations in nanoseconds. As etcd, command-line flags and the environment
//!   are then ignored (and Cairn says so);
//! - takes out every etcd 3.5 flag Cairn does not implement. A flag set to etcd's default
//!   changes nothing and passes quietly; one that only tunes etcd's internals (bbolt, v2,
//!   pprof, log rotation) is accepted and named on one warning line (never refused);
//! - names `ETCD_*` environment variables that match no flag, as etcd does.
//!
//! Unknown flags are then clap's to refuse, with a short error.

use crate::config::{parse_bool as go_bool, Flags};
use clap::CommandFactory;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use yaml_rust2::{Yaml, YamlLoader};

/// An etcd 3.5 flag Cairn does not implement: name, whether it is a boolean, and etcd's
/// default (as given on a command line). Set to anything else, it is named on the warning
/// line.
struct EtcdOnly {
    name: &'static str,
    boolean: bool,
    default: &'static str,
}

const fn ignore(name: &'static str, boolean: bool, default: &'static str) -> EtcdOnly {
    EtcdOnly { name, boolean, default }
}

/// Every flag of etcd 3.5 (3.5.1 to 3.5.33) that Cairn's [`Flags`] lacks, plus the v2-era
/// flags etcd itself still accepts and ignores.
const ETCD_ONLY: &[EtcdOnly] = &[
    ignore("backend-batch-interval", false, ""),
    ignore("backend-batch-limit", false, "0"),
    ignore("backend-bbolt-freelist-type", false, "map"),
    ignore("client-cert-file", false, ""),
    ignore("client-key-file", false, ""),
    ignore("enable-grpc-gateway", true, "true"),
    ignore("enable-log-rotation", true, "false"),
    ignore("enable-pprof", true, "false"),
    ignore("enable-v2", true, "false"),
    ignore("experimental-bootstrap-defrag-threshold-megabytes", false, "0"),
    ignore("experimental-compact-hash-check-enabled", true, "false"),
    ignore("experimental-compact-hash-check-time", false, "1m"),
    ignore("experimental-compaction-batch-limit", false, "1000"),
    ignore("experimental-compaction-sleep-interval", false, "10ms"),
    ignore("experimental-distributed-tracing-address", false, "localhost:4317"),
    ignore("experimental-distributed-tracing-instance-id", false, ""),
    ignore("experimental-distributed-tracing-sampling-rate", false, "0"),
    ignore("experimental-distributed-tracing-service-name", false, "etcd"),
    ignore("experimental-downgrade-check-time", false, "5s"),
    ignore("experimental-enable-distributed-tracing", true, "false"),
    ignore("experimental-enable-lease-checkpoint", true, "false"),
    ignore("experimental-enable-lease-checkpoint-persist", true, "false"),
    ignore("experimental-enable-v2v3", false, ""),
    ignore("experimental-memory-mlock", true, "false"),
    ignore("experimental-peer-skip-client-san-verification", true, "false"),
    ignore("experimental-snapshot-catchup-entries", false, "5000"),
    ignore("experimental-stop-grpc-service-on-defrag", true, "false"),
    ignore("experimental-txn-mode-write-with-shared-buffer", true, "true"),
    ignore("initial-election-tick-advance", true, "true"),
    ignore("log-rotation-config-json", false, ""),
    ignore("max-snapshots", false, "5"),
    ignore("max-wals", false, "5"),
    ignore("metrics", false, "basic"),
    ignore("pre-vote", true, "true"),
    ignore("proxy-failure-wait", false, "5000"),
    ignore("proxy-read-timeout", false, "0"),
    ignore("proxy-refresh-interval", false, "30000"),
    ignore("proxy-write-timeout", false, "5000"),
    ignore("raft-read-timeout", false, "5s"),
    ignore("raft-write-timeout", false, "5s"),
    ignore("socket-reuse-address", true, "false"),
    ignore("socket-reuse-port", true, "false"),
    ignore("strict-reconfig-check", true, "true"),
    ignore("unsafe-no-fsync", true, "false"),
    ignore("v2-deprecation", false, "not-yet"),
    // Flags of etcd's v2 era that etcd 3.5 accepts and ignores.
    ignore("cluster-active-size", false, ""),
    ignore("cluster-remove-delay", false, ""),
    ignore("cluster-sync-interval", false, ""),
    ignore("config", false, ""),
    ignore("force", true, "false"),
    ignore("max-result-buffer", false, ""),
    ignore("max-retry-attempts", false, ""),
    ignore("peer-heartbeat-interval", false, ""),
    ignore("peer-election-timeout", false, ""),
    ignore("retry-interval", false, ""),
    ignore("snapshot", false, ""),
    ignore("v", true, "false"),
    ignore("vv", true, "false"),
];

/// Environment variables named like flags that are not flags (etcd reads them too).
const NOT_FLAGS: &[&str] = &["ETCD_UNSUPPORTED_ARCH", "ETCD_VERIFY", "ETCD_CONFIG_FILE"];

/// The arguments for [`Flags`] and what to tell the operator.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Arguments for clap, program name first.
    pub args: Vec<OsString>,
    /// The flags came from `--config-file`: clap must not read the environment.
    pub from_file: bool,
    /// One line naming what was accepted without effect, if anything.
    pub warning: Option<String>,
}

/// How Cairn's own flags take their values: `name -> takes the next argument`.
fn cairn_flags() -> BTreeMap<String, bool> {
    let cmd = Flags::command();
    let mut out = BTreeMap::new();
    for a in cmd.get_arguments() {
        let separate = a.get_action().takes_values() && !a.is_require_equals_set();
        for long in a.get_long_and_visible_aliases().into_iter().flatten() {
            out.insert(long.to_string(), separate);
        }
        for alias in a.get_all_aliases().into_iter().flatten() {
            out.insert(alias.to_string(), separate);
        }
    }
    out
}

fn etcd_only(name: &str) -> Option<&'static EtcdOnly> {
    ETCD_ONLY.iter().find(|f| f.name == name)
}

/// Whether `value` of `f` behaves as etcd's default.
fn is_default(f: &EtcdOnly, value: &str) -> bool {
    if f.boolean {
        return go_bool(value).ok() == go_bool(f.default).ok();
    }
    value == f.default || (value.is_empty() && f.default.is_empty())
}

/// The flag name in `arg` (`--name`, `--name=v`, Go's `-name`), and the inline value.
fn split_flag(arg: &str) -> Option<(&str, Option<&str>)> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if body.is_empty() || body.starts_with('-') || !body.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    Some(match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    })
}

/// Notes gathered while preparing.
#[derive(Default)]
struct Notes {
    ignored: BTreeSet<String>,
    other: Vec<String>,
}

/// Bring `args` (program name first) and `vars` (the environment) to Cairn's flags.
pub fn prepare(args: Vec<OsString>, vars: &[(String, String)]) -> Result<Prepared, String> {
    let mut args: Vec<String> = args
        .into_iter()
        .map(|a| a.into_string().map_err(|a| format!("argument {a:?} is not UTF-8")))
        .collect::<Result<_, _>>()?;
    let program = if args.is_empty() { "cairn".to_string() } else { args.remove(0) };
    let env = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut notes = Notes::default();

    let config_file = find_config_file(&args).or_else(|| env("ETCD_CONFIG_FILE").filter(|v| !v.is_empty()));
    let from_file = config_file.is_some();
    let flags = cairn_flags();
    let tokens = match &config_file {
        Some(path) => {
            let passed: Vec<&str> =
                args.iter().filter_map(|a| split_flag(a).map(|(n, _)| n)).filter(|n| *n != "config-file").collect();
            if !passed.is_empty() {
                notes.other.push(format!(
                    "flags given beside --config-file are ignored, as by etcd: --{}",
                    passed.join(", --")
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| format!("--config-file {path}: {e}"))?;
            from_yaml(&text, &flags).map_err(|e| format!("--config-file {path}: {e}"))?
        }
        None => args,
    };

    let mut out = vec![program];
    let mut it = tokens.into_iter();
    while let Some(tok) = it.next() {
        if tok == "--" {
            out.push(tok);
            out.extend(it.by_ref());
            break;
        }
        let Some((name, inline)) = split_flag(&tok) else {
            out.push(tok);
            continue;
        };
        if name == "config-file" {
            if inline.is_none() {
                it.next();
            }
            continue;
        }
        if let Some(&separate) = flags.get(name) {
            // A value given separately is joined on, so one starting with `-` stays a value.
            out.push(match (inline, separate) {
                (Some(v), _) => format!("--{name}={v}"),
                (None, true) => match it.next() {
                    Some(v) => format!("--{name}={v}"),
                    None => format!("--{name}"),
                },
                (None, false) => format!("--{name}"),
            });
            continue;
        }
        let Some(f) = etcd_only(name) else {
            // Unknown to etcd too: clap refuses it with a short error.
            out.push(tok);
            continue;
        };
        let value = match inline {
            Some(v) => v.to_string(),
            None if f.boolean => "true".to_string(),
            None => it.next().ok_or_else(|| format!("flag needs an argument: --{name}"))?,
        };
        check_etcd_only(f, &value, &mut notes)?;
    }

    if !from_file {
        for (k, v) in vars {
            let Some(rest) = k.strip_prefix("ETCD_") else { continue };
            if NOT_FLAGS.contains(&k.as_str()) {
                continue;
            }
            let name = rest.to_ascii_lowercase().replace('_', "-");
            if flags.contains_key(&name) {
                continue;
            }
            match etcd_only(&name) {
                Some(f) => check_etcd_only(f, v, &mut notes).map_err(|e| format!("{k}: {e}"))?,
                None => notes.other.push(format!("unrecognized environment variable {k}")),
            }
        }
    }

    let mut parts = Vec::new();
    if !notes.ignored.is_empty() {
        parts.push(format!(
            "accepted etcd flags that have no effect in Cairn: {}",
            notes.ignored.into_iter().collect::<Vec<_>>().join(" ")
        ));
    }
    parts.extend(notes.other);
    Ok(Prepared {
        args: out.into_iter().map(OsString::from).collect(),
        from_file,
        warning: (!parts.is_empty()).then(|| parts.join("; ")),
    })
}

fn check_etcd_only(f: &EtcdOnly, value: &str, notes: &mut Notes) -> Result<(), String> {
    if f.boolean {
        go_bool(value).map_err(|e| format!("invalid value for --{}: {e}", f.name))?;
    }
    if is_default(f, value) {
        return Ok(());
    }
    notes.ignored.insert(format!("--{}={value}", f.name));
    Ok(())
}

fn find_config_file(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            return None;
        }
        if let Some(("config-file", inline)) = split_flag(a) {
            return match inline {
                Some(v) => Some(v.to_string()),
                None => it.next().cloned(),
            };
        }
    }
    None
}

/// Keys of `client-transport-security` and `peer-transport-security` and the flags they
/// stand for.
const CLIENT_TLS_KEYS: &[(&str, &str)] = &[
    ("cert-file", "cert-file"),
    ("key-file", "key-file"),
    ("client-cert-auth", "client-cert-auth"),
    ("trusted-ca-file", "trusted-ca-file"),
    ("auto-tls", "auto-tls"),
    ("crl-file", "client-crl-file"),
    ("allowed-hostname", "client-cert-allowed-hostname"),
    ("client-cert-file", "client-cert-file"),
    ("client-key-file", "client-key-file"),
];
const PEER_TLS_KEYS: &[(&str, &str)] = &[
    ("cert-file", "peer-cert-file"),
    ("key-file", "peer-key-file"),
    ("client-cert-auth", "peer-client-cert-auth"),
    ("trusted-ca-file", "peer-trusted-ca-file"),
    ("auto-tls", "peer-auto-tls"),
    ("crl-file", "peer-crl-file"),
    ("allowed-cn", "peer-cert-allowed-cn"),
    ("allowed-hostname", "peer-cert-allowed-hostname"),
    ("client-cert-file", "peer-client-cert-file"),
    ("client-key-file", "peer-client-key-file"),
];

/// Flags whose config-file value is a Go `time.Duration`, written as nanoseconds.
const DURATIONS: &[&str] = &[
    "grpc-keepalive-min-time",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "experimental-corrupt-check-time",
    "experimental-watch-progress-notify-interval",
    "experimental-compact-hash-check-time",
    "experimental-compaction-sleep-interval",
    "experimental-downgrade-check-time",
    "experimental-warning-apply-duration",
    "backend-batch-interval",
    "raft-read-timeout",
    "raft-write-timeout",
];

/// etcd's YAML config as `--flag=value` arguments.
fn from_yaml(text: &str, flags: &BTreeMap<String, bool>) -> Result<Vec<String>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let Some(doc) = docs.into_iter().next() else { return Ok(Vec::new()) };
    let top = match doc {
        Yaml::Hash(h) => h,
        Yaml::Null => return Ok(Vec::new()),
        _ => return Err("expected a mapping of etcd's configuration keys".into()),
    };
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    for (k, v) in top {
        let Some(key) = k.as_str() else { return Err(format!("a key that is not a string: {k:?}")) };
        let nested = match key {
            "client-transport-security" => Some(CLIENT_TLS_KEYS),
            "peer-transport-security" => Some(PEER_TLS_KEYS),
            _ => None,
        };
        if let Some(keys) = nested {
            let Yaml::Hash(h) = v else {
                if matches!(v, Yaml::Null) {
                    continue;
                }
                return Err(format!("{key}: expected a mapping"));
            };
            for (nk, nv) in h {
                let nk = nk.as_str().unwrap_or_default();
                match keys.iter().find(|(k, _)| *k == nk) {
                    Some((_, flag)) => out.extend(yaml_arg(flag, &nv)?),
                    None => unknown.push(format!("{key}.{nk}")),
                }
            }
            continue;
        }
        if flags.contains_key(key) || etcd_only(key).is_some() {
            out.extend(yaml_arg(key, &v)?);
        } else {
            unknown.push(key.to_string());
        }
    }
    if !unknown.is_empty() {
        return Err(format!("unknown keys: {}", unknown.join(", ")));
    }
    Ok(out)
}

/// One config-file value as an argument (`None` for an empty value: etcd's default).
fn yaml_arg(flag: &str, v: &Yaml) -> Result<Option<String>, String> {
    let value = match v {
        Yaml::Null => return Ok(None),
        Yaml::String(s) if s.is_empty() => return Ok(None),
        Yaml::String(s) => s.clone(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Integer(n) if DURATIONS.contains(&flag) => format!("{n}ns"),
        Yaml::Integer(n) => n.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Yaml::String(s) => Ok(s.clone()),
                    Yaml::Integer(n) => Ok(n.to_string()),
                    other => Err(format!("{flag}: unexpected list item {other:?}")),
                })
                .collect::<Result<_, _>>()?;
            if parts.is_empty() {
                return Ok(None);
            }
            parts.join(",")
        }
        other => return Err(format!("{flag}: unexpected value {other:?}")),
    };
    Ok(Some(format!("--{flag}={value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(args: &[&str], vars: &[(&str, &str)]) -> Result<Prepared, String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        prepare(std::iter::once("cairn").chain(args.iter().copied()).map(OsString::from).collect(), &vars)
    }

    fn args(p: &Prepared) -> Vec<String> {
        p.args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_kubeadm_command_line_comes_through() {
        let line = [
            "--advertise-client-urls=https://127.0.0.1:2379",
            "--client-cert-auth=true",
            "--data-dir=/var/lib/etcd",
            "--experimental-initial-corrupt-check=true",
            "--experimental-watch-progress-notify-interval=5s",
            "--logger=zap",
            "--log-outputs=stderr",
            "--name=node-1",
            "--peer-client-cert-auth=true",
            "--snapshot-count=10000",
        ];
        let p = prep(&line, &[]).expect("prepared");
        assert_eq!(args(&p), line);
        assert_eq!(p.warning, None, "every flag kubeadm passes is Cairn's");
    }

    #[test]
    fn go_syntax_single_dashes_and_separate_values() {
        let p = prep(&["-name", "x", "--max-wals", "9", "-enable-v2", "--data-dir", "-odd-dir"], &[]).expect("ok");
        assert_eq!(args(&p), ["--name=x", "--data-dir=-odd-dir"]);
        assert_eq!(
            p.warning.as_deref(),
            Some("accepted etcd flags that have no effect in Cairn: --enable-v2=true --max-wals=9")
        );
    }

    #[test]
    fn defaults_pass_quietly_and_bad_booleans_are_refused() {
        let p = prep(&["--unsafe-no-fsync=false", "--max-wals=5", "--pre-vote"], &[]).expect("ok");
        assert!(args(&p).is_empty());
        assert_eq!(p.warning, None);
        let e = prep(&["--enable-v2=maybe"], &[]).unwrap_err();
        assert!(e.contains("not a boolean"), "{e}");
    }

    #[test]
    fn unknown_flags_are_left_for_clap_to_refuse() {
        let p = prep(&["--no-such-flag=1"], &[]).expect("ok");
        assert_eq!(args(&p), ["--no-such-flag=1"]);
    }

    #[test]
    fn environment_variables_are_checked_like_flags() {
        let p = prep(&[], &[("ETCD_ENABLE_PPROF", "true"), ("ETCD_NAME", "n"), ("ETCD_NAMEE", "x"), ("HOME", "/")])
            .expect("ok");
        let w = p.warning.expect("warning");
        assert!(w.contains("--enable-pprof=true") && w.contains("unrecognized environment variable ETCD_NAMEE"), "{w}");
        // A flag of Cairn's own (the proxy mode) passes to clap, unremarked.
        assert_eq!(prep(&[], &[("ETCD_PROXY", "readonly")]).expect("ok").warning, None);
    }

    #[test]
    fn an_etcd_config_file_becomes_flags_and_hides_the_command_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etcd.conf.yml");
        std::fs::write(
            &path,
            "name: 'node-2'\ndata-dir:\nwal-dir:\nsnapshot-count: 10000\nheartbeat-interval: 100\n\
             listen-client-urls: http://127.0.0.1:2379\nenable-v2: true\nstrict-reconfig-check: false\n\
             grpc-keepalive-min-time: 5000000000\nlog-outputs: [stderr]\nlogger: zap\n\
             client-transport-security:\n  cert-file:\n  client-cert-auth: false\n  auto-tls: false\n\
             peer-transport-security:\n  trusted-ca-file: /ca.pem\n  allowed-cn:\n",
        )
        .expect("write");
        let file = format!("--config-file={}", path.display());
        let p = prep(&[file.as_str(), "--name=ignored"], &[]).expect("ok");
        assert!(p.from_file);
        assert_eq!(
            args(&p),
            [
                "--name=node-2",
                "--snapshot-count=10000",
                "--heartbeat-interval=100",
                "--listen-client-urls=http://127.0.0.1:2379",
                "--grpc-keepalive-min-time=5000000000ns",
                "--log-outputs=stderr",
                "--logger=zap",
                "--client-cert-auth=false",
                "--auto-tls=false",
                "--peer-trusted-ca-file=/ca.pem",
            ]
        );
        let w = p.warning.expect("warning");
        assert!(w.contains("--enable-v2=true") && w.contains("--strict-reconfig-check=false"), "{w}");
        assert!(w.contains("beside --config-file are ignored, as by etcd: --name"), "{w}");
        std::fs::write(&path, "name: x\nnot-a-key: 1\n").expect("write");
        assert!(prep(&[file.as_str()], &[]).unwrap_err().contains("unknown keys: not-a-key"));
    }
}
