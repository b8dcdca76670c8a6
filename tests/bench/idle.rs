//! `cargo bench -p gantry --bench builds -- --idle [--runs N] [--bin PATH] [--baseline-bin PATH]`:
//! the resident memory of one idle `gantry serve` on SQLite, and where it goes.
//!
//! Each run starts the binary on a fresh data directory with one repo (a local git repository,
//! not polled), waits for its log to say `gantry is ready`, lets it idle for [`IDLE`], then reads
//! `/proc/PID/status` (`VmRSS`, `RssAnon`, `RssFile`, `Threads`) and `/proc/PID/smaps`, whose
//! mappings it sums by what they are: the binary's own pages (file-backed, and the anonymous
//! copies of its relocated data), shared libraries (same split), the heap, the main stack, and
//! unnamed anonymous mappings (thread stacks, the other threads' malloc arenas). The median of
//! `--runs` (5) starts is reported for each field, for `--bin` (default: the benchmark's own
//! `gantry`) and, when given, `--baseline-bin` side by side. Nothing talks to the server: a
//! request would itself cost memory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server idles after it said it is ready, before it is measured.
const IDLE: Duration = Duration::from_secs(2);

/// How long a server may take to say it is ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// One measurement, in KiB (threads: a count).
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss: u64,
    anon: u64,
    file: u64,
    threads: u64,
    binary_file: u64,
    binary_anon: u64,
    libs_file: u64,
    libs_anon: u64,
    heap: u64,
    stack: u64,
    other_anon: u64,
}

/// A row of the report: its name and how to read it from a sample.
type Field = (&'static str, fn(&Sample) -> u64);

/// The rows of the report.
const FIELDS: [Field; 11] = [
    ("VmRSS", |s| s.rss),
    ("RssAnon", |s| s.anon),
    ("RssFile", |s| s.file),
    ("  the binary, file-backed pages", |s| s.binary_file),
    ("  the binary, relocated data (anonymous)", |s| s.binary_anon),
    ("  shared libraries, file-backed pages", |s| s.libs_file),
    ("  shared libraries, relocated data (anonymous)", |s| s.libs_anon),
    ("  heap (main arena)", |s| s.heap),
    ("  main thread's stack", |s| s.stack),
    ("  other anonymous (thread stacks, threads' arenas)", |s| s.other_anon),
    ("threads", |s| s.threads),
];

fn status_field(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
}

/// Read the process's memory now.
fn sample(pid: u32, binary: &Path) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mut s = Sample {
        rss: status_field(&status, "VmRSS:"),
        anon: status_field(&status, "RssAnon:"),
        file: status_field(&status, "RssFile:"),
        threads: status_field(&status, "Threads:"),
        ..Sample::default()
    };
    let binary = std::fs::canonicalize(binary).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut name = String::new();
    let (mut rss, mut anon) = (0, 0);
    let add = |name: &str, rss: u64, anon: u64, s: &mut Sample| match name {
        "" => s.other_anon += rss,
        "[heap]" => s.heap += rss,
        "[stack]" => s.stack += rss,
        n if Path::new(n) == binary => {
            s.binary_file += rss - anon;
            s.binary_anon += anon;
        }
        n if n.starts_with('/') => {
            s.libs_file += rss - anon;
            s.libs_anon += anon;
        }
        _ => s.other_anon += rss,
    };
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            add(&name, rss, anon, &mut s);
            name = line.split_whitespace().nth(5).unwrap_or("").to_string();
            (rss, anon) = (0, 0);
        } else if let Some(kib) = line.strip_prefix("Rss:") {
            rss = kib.split_whitespace().next().unwrap().parse().unwrap();
        } else if let Some(kib) = line.strip_prefix("Anonymous:") {
            anon = kib.split_whitespace().next().unwrap().parse().unwrap();
        }
    }
    add(&name, rss, anon, &mut s);
    s
}

/// Start `binary` once on a fresh data directory, wait for it to be ready and idle, measure it.
fn run_once(binary: &Path, dir: &Path, run: &str) -> Sample {
    let data = dir.join(format!("data-{run}"));
    let config = dir.join(format!("gantry-{run}.toml"));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[[repo]]\nname = \"idle\"\nurl = {:?}\nsecret = \"s\"\n",
            data.to_str().unwrap(),
            dir.join("repo").to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = Command::new(binary)
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    // Reads the log to its end, so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains("gantry is ready") {
                let _ = ready_tx.send(Instant::now());
            }
        }
    });
    ready_rx.recv_timeout(READY_DEADLINE).expect("gantry never said it is ready");
    std::thread::sleep(IDLE);
    let measured = sample(child.id(), binary);
    let _ = child.kill();
    let _ = child.wait();
    measured
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn idle_bench(runs: usize, binary: &Path, baseline: Option<&Path>) {
    let dir = tempfile::TempDir::new().unwrap();
    let repo = dir.path().join("repo");
    let git = |args: &[&str]| {
        let status = Command::new("git").arg("-C").arg(&repo).args(args).status().unwrap();
        assert!(status.success(), "git {args:?}");
    };
    std::fs::create_dir(&repo).unwrap();
    git(&["init", "-q", "-b", "main"]);
    git(&["-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-q", "--allow-empty", "-m", "idle"]);

    let mut binaries = vec![("measured", binary)];
    binaries.extend(baseline.map(|b| ("baseline", b)));
    // The binaries take turns, so both see the same machine.
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); binaries.len()];
    for run in 0..runs {
        for (i, (label, binary)) in binaries.iter().enumerate() {
            let s = run_once(binary, dir.path(), &format!("{label}-{run}"));
            eprintln!("{label} run {run}: {s:?}");
            samples[i].push(s);
        }
    }
    let medians: Vec<[u64; FIELDS.len()]> =
        samples.iter().map(|runs| FIELDS.map(|(_, field)| median(runs.iter().map(field).collect()))).collect();
    println!("idle `gantry serve` on SQLite, {IDLE:?} after ready, median of {runs} starts");
    let header: Vec<String> = binaries.iter().map(|(label, b)| format!("{label} ({})", b.display())).collect();
    println!("| | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(binaries.len()));
    for (i, (name, _)) in FIELDS.iter().enumerate() {
        let cells: Vec<String> =
            medians.iter().map(|m| if *name == "threads" { m[i].to_string() } else { mib(m[i]) }).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}
