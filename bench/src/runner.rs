//! The load loop shared by every workload: N concurrent clients issue operations until a
//! total count or a duration is reached (whichever the options say, always capped by
//! `--max-seconds`), optionally paced to `--rate`, and record each latency in an HDR
//! histogram.

use crate::Opts;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            min: ms(h.min()),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// The outcome of one workload run.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Report {
    pub workload: String,
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed.
    pub errors: u64,
    pub seconds: f64,
    /// Successful operations per second.
    pub throughput: f64,
    pub latency_ms: Latency,
    /// The first error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Workload-specific figures (events/s for watches, ...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty", default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Human-readable summary (a closed stdout, as with `| head`, is not an error).
    pub fn print(&self) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let l = &self.latency_ms;
        let _ = writeln!(
            out,
            "{}: {} ops in {:.2} s = {:.0} ops/s, {} errors",
            self.workload, self.ops, self.seconds, self.throughput, self.errors
        )
        .and_then(|_| {
            writeln!(
                out,
                "  latency ms: min {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
                l.min, l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            )
        })
        .and_then(|_| self.extra.iter().try_for_each(|(k, v)| writeln!(out, "  {k}: {v}")))
        .and_then(|_| match &self.first_error {
            Some(e) => writeln!(out, "  first error: {e}"),
            None => Ok(()),
        });
    }
}

/// A new latency histogram in microseconds (1 µs .. 5 min, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000, 3).expect("static histogram bounds are valid")
}

fn progress(opts: &Opts) -> ProgressBar {
    if opts.json || opts.no_progress {
        return ProgressBar::hidden();
    }
    let (len, template) = match opts.duration {
        Some(d) => (d * 1000, "{spinner} {elapsed_precise} [{bar:40}] {msg}"),
        None => (opts.total, "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {per_sec}"),
    };
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// `Report::extra` key: CPU time (user and system) the processes of `Opts::cpu_of` used per
/// operation over the measured window, in microseconds.
pub const SERVER_CPU: &str = "server_cpu_us_per_op";
/// `Report::extra` key: the same for this load generator.
pub const BENCH_CPU: &str = "bench_cpu_us_per_op";

/// CPU time a process has used so far (`/proc/<pid>/stat`'s utime and stime; `None`: this
/// process). Zero if the process is gone.
fn cpu_time(pid: Option<u32>) -> Duration {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let ticks = std::fs::read_to_string(path).ok().and_then(|s| {
        // The command name, in parentheses, may hold spaces: count the fields after it.
        let mut f = s.rsplit_once(')')?.1.split_whitespace().skip(11);
        Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
    });
    let per_second = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs_f64(ticks.unwrap_or(0) as f64 / per_second as f64)
}

/// CPU used over a measured window by the servers named in `Opts::cpu_of` and by this load
/// generator, so a comparison can tell CPU per operation apart from the share of the cores
/// each side got.
pub struct CpuWindow {
    pids: Vec<u32>,
    servers: Duration,
    bench: Duration,
}

impl CpuWindow {
    pub fn start(opts: &Opts) -> CpuWindow {
        let pids = opts.cpu_of.clone();
        let servers = pids.iter().map(|p| cpu_time(Some(*p))).sum();
        CpuWindow { pids, servers, bench: cpu_time(None) }
    }

    /// Record the CPU per operation of `report.ops` in `report.extra` ([`SERVER_CPU`],
    /// [`BENCH_CPU`]); nothing when no server was named.
    pub fn finish(self, report: &mut Report) {
        if self.pids.is_empty() {
            return;
        }
        let servers: Duration = self.pids.iter().map(|p| cpu_time(Some(*p))).sum();
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / report.ops.max(1) as f64;
        let (s, b) = (per_op(servers.saturating_sub(self.servers)), per_op(cpu_time(None).saturating_sub(self.bench)));
        report.extra.insert(SERVER_CPU.into(), s.into());
        report.extra.insert(BENCH_CPU.into(), b.into());
    }
}

/// Run `op(client, seq)` from `opts.clients` concurrent clients and measure it.
pub async fn drive<F, Fut>(name: &str, opts: &Opts, op: F) -> Report
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let cpu = CpuWindow::start(opts);
    let start = Instant::now();
    let limit = opts.duration.map_or(opts.max_seconds, |d| d.min(opts.max_seconds));
    let deadline = start + Duration::from_secs(limit);
    let total = if opts.duration.is_some() { u64::MAX } else { opts.total };
    let pb = progress(opts);
    let rate = opts.rate;
    let mut tasks = Vec::new();
    for client in 0..opts.clients.max(1) {
        let (op, next, pb) = (op.clone(), next.clone(), pb.clone());
        let duration_bar = opts.duration.is_some();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total || Instant::now() >= deadline {
                    break;
                }
                if rate > 0.0 {
                    // Open-loop pacing: operation `seq` is due at start + seq / rate.
                    let due = start + Duration::from_secs_f64(seq as f64 / rate);
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                }
                let t0 = Instant::now();
                match op(client, seq).await {
                    Ok(()) => {
                        let us = t0.elapsed().as_micros().clamp(1, 300_000_000) as u64;
                        let _ = h.record(us);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{:?}: {}", e.code(), e.message()));
                    }
                }
                if duration_bar {
                    pb.set_position(start.elapsed().as_millis() as u64);
                } else {
                    pb.inc(1);
                }
            }
            (h, errors, first_error)
        }));
    }
    let mut h = histogram();
    let (mut errors, mut first_error) = (0u64, None);
    for t in tasks {
        if let Ok((th, e, fe)) = t.await {
            let _ = h.add(&th);
            errors += e;
            if first_error.is_none() {
                first_error = fe;
            }
        }
    }
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let ops = h.len();
    let mut report = Report {
        workload: name.to_string(),
        ops,
        errors,
        seconds,
        throughput: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
        latency_ms: Latency::of(&h),
        first_error,
        extra: Default::default(),
    };
    cpu.finish(&mut report);
    report
}
