//! `cargo bench -p gantry --bench builds -- --scale [--runs N] [--builds N] [--concurrent C]
//! [--baseline-bin PATH]`: build throughput by backend and number of servers.
//!
//! Three set-ups in turn, each on fresh servers and a fresh database: one server on SQLite, one on
//! PostgreSQL, two on one PostgreSQL database. Each measures two queues of trivial builds (a
//! one-host pipeline whose step only records that it ran):
//!
//! - `--builds` (200) queued at once through the API, `max_concurrent_builds = --concurrent` (50)
//!   on each server;
//! - [`SERIAL_BUILDS`] queued at once with `max_concurrent_builds = 1`: builds one after the
//!   other on each server.
//!
//! With two servers the builds are queued through both in turn. Reported per measure: builds per
//! second from the first request to the last build's end, the servers' CPU time (user + system,
//! from `/proc/PID/stat`) per build, and how the builds split between the servers. Every build's
//! step leaves a file named after the build: the bench fails unless each build left exactly one
//! (no build run twice or lost) and passed. The median of `--runs` (3) runs is reported, and the
//! median of each run's ratio to SQLite in the same run. With `--baseline-bin`, another build of
//! Gantry (an older commit's) runs the SQLite set-up too, in each run right after this one's.
//!
//! PostgreSQL is the test suite's throwaway server (`tests/support/postgres.rs`: its own cluster
//! on a loopback port, `fsync=off`); SQLite runs as Gantry configures it (WAL,
//! `synchronous=NORMAL`), which does not wait for the disk on a commit either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::postgres;
use super::{admin_token, gantry_bin, git, Server, BUILD_DEADLINE, POLL_EVERY};

/// Builds of the serial measure.
const SERIAL_BUILDS: usize = 50;

/// One set-up: the backend and how many servers share it.
#[derive(Clone, Copy)]
struct Setup<'a> {
    postgres: bool,
    servers: usize,
    /// The `gantry` binary, when not the benchmark's own: `--baseline-bin`.
    baseline: Option<&'a Path>,
}

impl Setup<'_> {
    fn name(self) -> String {
        let backend = if self.postgres { "PostgreSQL" } else { "SQLite" };
        let servers = if self.servers == 1 { "1 server".to_string() } else { format!("{} servers", self.servers) };
        let binary = if self.baseline.is_some() { ", baseline binary" } else { "" };
        format!("{backend}, {servers}{binary}")
    }

    fn binary(self) -> PathBuf {
        self.baseline.map_or_else(gantry_bin, Path::to_path_buf)
    }
}

/// What one queue of builds measured.
#[derive(Clone, Copy)]
struct Measure {
    per_second: f64,
    cpu_ms_per_build: f64,
    /// The PostgreSQL server's CPU time per build (all its processes), 0 on SQLite.
    database_ms_per_build: f64,
    /// Builds the first server ran (of all of them).
    first_server: usize,
}

/// A repository whose `main` records each run of its step in `runs`.
fn repo(dir: &Path, runs: &Path) -> PathBuf {
    let repo = dir.join("scale-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let step = format!("touch {}/run-$GANTRY_BUILD-$$", runs.display());
    let pipeline =
        format!("version: 1\nhosts:\n  app: {{}}\nstages:\n  - name: step\n    host: app\n    run: {step:?}\n");
    std::fs::write(repo.join(".gantry.yml"), pipeline).unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["-c", "user.name=b", "-c", "user.email=b@b.invalid", "commit", "-q", "-m", "scale"]);
    repo
}

/// Clock ticks a process has run for (user + system), from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(pid).unwrap_or_else(|| panic!("no CPU time for process {pid}"))
}

/// Clock ticks a process has run for, or `None` when it is gone (or not readable).
fn stat_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it follow its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields; the first after ')' is the 3rd.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks `pid` and its living children have run for: a PostgreSQL server's postmaster and
/// its backends (the servers' pools hold their connections for the whole measure).
fn tree_cpu_ticks(pid: u32) -> u64 {
    let children: u64 = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .filter_map(stat_ticks)
        .sum();
    cpu_ticks(pid) + children
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as f64
}

/// Start `setup`'s servers, each in a directory of its own under `dir`, with `max_concurrent`.
async fn start(setup: Setup<'_>, dir: &Path, repo: &Path, max_concurrent: usize) -> (Vec<Server>, Option<String>) {
    let database = setup.postgres.then(|| postgres::server().database());
    let mut configs = Vec::new();
    for i in 0..setup.servers {
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let data = dir.join(format!("data-{}", listen.port()));
        let top = match &database {
            Some(url) => format!("database_url = \"{url}\"\nserver_id = \"server-{i}\"\n"),
            None => String::new(),
        };
        let config = dir.join(format!("gantry-{}.toml", listen.port()));
        std::fs::write(
            &config,
            format!(
                "{top}listen = \"{listen}\"\ndata_dir = {:?}\nmax_concurrent_builds = {max_concurrent}\n\
                 [provider.local]\naddresses = \"127.90.{}.0/22\"\n\
                 [[repo]]\nname = \"bench\"\nurl = {:?}\nsecret = \"x\"\ncancel_superseded = false\n",
                data.to_str().unwrap(),
                i * 4,
                repo.to_str().unwrap(),
            ),
        )
        .unwrap();
        configs.push((config, listen));
    }
    // One database: the first server's admin and token serve them all.
    let token = admin_token(&setup.binary(), &configs[0].0);
    let mut servers = Vec::new();
    for (config, listen) in &configs {
        servers.push(Server::launch(&setup.binary(), config, *listen, &token, None).await);
    }
    (servers, database)
}

/// Queue `builds` builds through `setup`'s fresh servers and measure them.
async fn measure(setup: Setup<'_>, builds: usize, max_concurrent: usize) -> Measure {
    let dir = tempfile::TempDir::new().unwrap();
    // Host steps run as users of their own: let them reach the runs directory.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    std::fs::set_permissions(&runs, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let repo = repo(dir.path(), &runs);
    let (servers, database) = start(setup, dir.path(), &repo, max_concurrent).await;
    let cpu_before: u64 = servers.iter().map(|server| cpu_ticks(server.child.id())).sum();
    let database_cpu = || if setup.postgres { tree_cpu_ticks(postgres::server().pid()) } else { 0 };
    let database_before = database_cpu();

    let start = Instant::now();
    let mut ids = Vec::with_capacity(builds);
    for i in 0..builds {
        ids.push(servers[i % servers.len()].trigger("main").await);
    }
    // Wait for the runs without asking the servers (which would cost them CPU), then for the
    // builds' ends.
    while std::fs::read_dir(&runs).unwrap().count() < builds {
        assert!(
            start.elapsed() < BUILD_DEADLINE,
            "only {} of {builds} builds ran",
            std::fs::read_dir(&runs).unwrap().count()
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    servers[0].wait_all(&ids, || {}).await;
    let elapsed = start.elapsed();
    let cpu_after: u64 = servers.iter().map(|server| cpu_ticks(server.child.id())).sum();
    let database_after = database_cpu();

    let mut per_number: BTreeMap<u64, usize> = BTreeMap::new();
    for entry in std::fs::read_dir(&runs).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        *per_number.entry(name.split('-').nth(1).unwrap().parse().unwrap()).or_default() += 1;
    }
    let expected: BTreeMap<u64, usize> = (1..=builds as u64).map(|number| (number, 1)).collect();
    assert_eq!(per_number, expected, "{}: every build runs exactly once", setup.name());

    let first_server = match &database {
        Some(url) => {
            let name = url.rsplit('/').next().unwrap();
            postgres::server()
                .psql(name, "SELECT count(*) FROM builds WHERE server_id = 'server-0'")
                .trim()
                .parse()
                .unwrap()
        }
        None => builds,
    };
    Measure {
        per_second: builds as f64 / elapsed.as_secs_f64(),
        cpu_ms_per_build: (cpu_after - cpu_before) as f64 / ticks_per_second() * 1000.0 / builds as f64,
        database_ms_per_build: database_after.saturating_sub(database_before) as f64 / ticks_per_second() * 1000.0
            / builds as f64,
        first_server,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub async fn scale_bench(runs: usize, builds: usize, concurrent: usize, baseline: Option<&Path>) {
    let mut setups = vec![Setup { postgres: false, servers: 1, baseline: None }];
    if baseline.is_some() {
        setups.push(Setup { postgres: false, servers: 1, baseline });
    }
    setups.push(Setup { postgres: true, servers: 1, baseline: None });
    setups.push(Setup { postgres: true, servers: 2, baseline: None });
    let queues = [(builds, concurrent), (SERIAL_BUILDS, 1)];
    // results[setup][queue]: one measure per run.
    let mut results = vec![vec![Vec::new(); queues.len()]; setups.len()];
    for run in 0..runs {
        for (s, setup) in setups.iter().enumerate() {
            for (q, &(count, max)) in queues.iter().enumerate() {
                let measured = measure(*setup, count, max).await;
                eprintln!(
                    "run {}: {}, {count} builds, max_concurrent_builds = {max}: {:.1} builds/s, {:.1} ms CPU per build \
                     ({:.1} ms in PostgreSQL), {} on the first server",
                    run + 1,
                    setup.name(),
                    measured.per_second,
                    measured.cpu_ms_per_build,
                    measured.database_ms_per_build,
                    measured.first_server
                );
                results[s][q].push(measured);
            }
        }
    }
    println!(
        "| set-up | queue | builds/s | ratio to SQLite | server CPU per build | PostgreSQL CPU per build | \
         builds on the first server |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (q, &(count, max)) in queues.iter().enumerate() {
        for (s, setup) in setups.iter().enumerate() {
            let measures = &results[s][q];
            let per_second = median(measures.iter().map(|m| m.per_second).collect());
            // Each run's ratio to SQLite measured in the same run, minutes apart: the machine's
            // load moves between runs far more than within one.
            let ratio = median(
                measures.iter().zip(&results[0][q]).map(|(m, sqlite)| m.per_second / sqlite.per_second).collect(),
            );
            let cpu = median(measures.iter().map(|m| m.cpu_ms_per_build).collect());
            let database = median(measures.iter().map(|m| m.database_ms_per_build).collect());
            let split: Vec<String> = measures.iter().map(|m| m.first_server.to_string()).collect();
            println!(
                "| {} | {count} queued, max_concurrent_builds = {max} | {per_second:.1} | {:.2}× | {cpu:.1} ms | {database:.1} ms | {} of {count} |",
                setup.name(),
                ratio,
                split.join(", ")
            );
        }
    }
}
