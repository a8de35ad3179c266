//! The member's log: level, format and outputs (`--log-level`, `--log-format`,
//! `--log-outputs`), set up once by the `cairn` binary.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;

/// One place logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Standard error (etcd's `default` and `stderr`; also `systemd/journal`, since systemd
    /// keeps a unit's standard error in its journal).
    Stderr,
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

impl Output {
    /// Parse `--log-outputs`: a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Output>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let o = match part {
                "default" | "stderr" | "systemd/journal" => Output::Stderr,
                "stdout" => Output::Stdout,
                path => Output::File(PathBuf::from(path)),
            };
            if !out.contains(&o) {
                out.push(o);
            }
        }
        if out.is_empty() {
            return Err("--log-outputs must name at least one output".into());
        }
        Ok(out)
    }
}

enum Sink {
    Stderr,
    Stdout,
    File(Mutex<File>),
}

/// Every output, as one writer for tracing (each event is written whole to each).
#[derive(Clone)]
struct Sinks(Arc<Vec<Sink>>);

impl Write for &Sinks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut first_err = None;
        for s in self.0.iter() {
            let r = match s {
                Sink::Stderr => std::io::stderr().lock().write_all(buf),
                Sink::Stdout => std::io::stdout().lock().write_all(buf),
                Sink::File(f) => f.lock().unwrap_or_else(|p| p.into_inner()).write_all(buf),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sinks {
    type Writer = &'a Sinks;

    fn make_writer(&'a self) -> &'a Sinks {
        self
    }
}

/// etcd's level names to a tracing filter (`panic` and `fatal` log errors).
fn level_filter(level: &str) -> String {
    match level {
        "panic" | "fatal" | "dpanic" => "error".to_string(),
        other => other.to_string(),
    }
}

/// Install the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, json: bool, outputs: &[Output]) -> Result<(), String> {
    let mut sinks = Vec::new();
    for o in outputs {
        sinks.push(match o {
            Output::Stderr => Sink::Stderr,
            Output::Stdout => Sink::Stdout,
            Output::File(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("--log-outputs {}: {e}", p.display()))?;
                Sink::File(Mutex::new(f))
            }
        });
    }
    let to_terminal = outputs == [Output::Stderr];
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{},openraft=warn", level_filter(level))));
    let logs =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(to_terminal).with_writer(Sinks(Arc::new(sinks)));
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_as_etcd_names_them() {
        assert_eq!(Output::parse_list("default"), Ok(vec![Output::Stderr]));
        assert_eq!(
            Output::parse_list("stderr, stdout,/var/log/cairn.log,stderr"),
            Ok(vec![Output::Stderr, Output::Stdout, Output::File("/var/log/cairn.log".into())])
        );
        assert!(Output::parse_list(" , ").is_err());
    }
}
