//! Soak: the production path at a multiple of the fleet's live rate for a long time, on real
//! brokers (Mosquitto → `vendflow bridge` → tansu → `vendflow run`, release binaries on loopback).
//! The question is whether anything grows: the backlog (published but not yet in the views) and
//! the memory of each process must stay flat once the run has warmed up.
//!
//! Every `--sample-secs` it records, per process, the resident set (VmRSS, not the peak) and the
//! CPU time used, the bridge's envelopes received, forwarded and in flight, and the engine's
//! consumed messages and events and how far its frontier is behind the wall clock. At the end it
//! prints the samples as a table and a verdict: the growth of each from the end of the warm-up (a
//! fifth of the run) to the end, each process's share of the CPU over that time (the simulated
//! fleet's too: it runs on the same cores), and the re-deliveries the engine dropped (events sent
//! again after a late receipt), and what grew inside the engine (its `/metrics`: each view's
//! rows, of them on disk, and each keyed operator's keys and table bytes; every sample of them
//! with `--state-csv FILE`), and what Mosquitto says of its own heap and the messages it holds
//! (its `$SYS` tree, through `mosquitto_sub`): its RSS keeps its heap's high-water mark.
//!
//! `cargo bench -p vendflow-benches --bench soak [-- --machines 50000 --speed 10 --minutes 30
//!  --sample-secs 30 --warm-up-minutes M --tansu sqlite|memory --state-csv FILE]`. The fleet's simulated hours end
//! now (`publish --hours`, here minutes × speed / 60), so a run faster than real time is a fleet
//! catching up: at 10× for 30 minutes its events start 5 hours behind the wall clock, by which
//! the engine judges its horizons (windows leave memory 30 minutes after they close). Needs
//! `mosquitto` and `tansu` (tests/install.sh installs them) and `cargo build --release --bins`.
//!
//! `--history-hours H` starts the engine from H hours of the same fleet's history instead of
//! empty: `vendflow simulate` of the fleet (heartbeats every 5 minutes), moved in time to end a
//! minute before the live stream begins, loaded with `vendflow replay --state` into the
//! checkpoint `vendflow run --state` starts from. State that fills with the fleet's days (a
//! slot's first sale, a machine's baselines per hour of the day) is then full when the soak
//! starts, and what still grows is what the run itself adds. The engine then checkpoints into
//! that directory every 10 minutes (`--checkpoint-secs 600`). The history's transaction ids and
//! event numbers are made distinct from the live controllers' (a machine's live counters would
//! go on from its history's; two simulations of one machine start both at 1).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vendflow_benches::release_bin;
use vendflow_tests::{
    Daemon, TansuStorage, bridge_metric, free_port, require_mosquitto, require_program,
    require_tansu, start_bridge, start_mosquitto, start_tansu_with,
};

struct Args {
    machines: usize,
    speed: f64,
    minutes: f64,
    sample_secs: f64,
    /// Growth is measured from here on (None: the first fifth of the run).
    warm_up_minutes: Option<f64>,
    tansu: TansuStorage,
    /// Hours of the fleet's history the engine starts from (0: it starts empty).
    history_hours: u32,
    /// Where to write every sample of the engine's state (its views' rows, its operators'
    /// keys and bytes), one column each, beside its RSS.
    state_csv: Option<std::path::PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        machines: 50_000,
        speed: 10.0,
        minutes: 30.0,
        sample_secs: 30.0,
        warm_up_minutes: None,
        tansu: TansuStorage::Sqlite,
        history_hours: 0,
        state_csv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--machines" => a.machines = value()?.parse()?,
            "--speed" => a.speed = value()?.parse()?,
            "--minutes" => a.minutes = value()?.parse()?,
            "--sample-secs" => a.sample_secs = value()?.parse()?,
            "--warm-up-minutes" => a.warm_up_minutes = Some(value()?.parse()?),
            "--history-hours" => a.history_hours = value()?.parse()?,
            "--state-csv" => a.state_csv = Some(value()?.into()),
            "--tansu" => {
                a.tansu = match value()?.as_str() {
                    "sqlite" => TansuStorage::Sqlite,
                    "memory" => TansuStorage::Memory,
                    other => bail!("--tansu takes sqlite or memory, not {other}"),
                }
            }
            "--bench" => {}
            other => {
                bail!("unknown argument {other} (see the comment at the top of benches/soak.rs)")
            }
        }
    }
    if a.machines == 0 || a.speed <= 0.0 || a.minutes <= 0.0 || a.sample_secs <= 0.0 {
        bail!("--machines, --speed, --minutes and --sample-secs must be positive");
    }
    if a.warm_up_minutes
        .is_some_and(|w| !(0.0..a.minutes).contains(&w))
    {
        bail!("--warm-up-minutes must be at least 0 and less than --minutes");
    }
    Ok(a)
}

/// `hours` of the fleet's history (`machines` of seed 3, as the soak's publisher), ending a
/// minute before `live_start_ms`, loaded into a checkpoint in `state` with `vendflow replay
/// --state`. Prints what each step took.
fn load_history(
    bin: &std::path::Path,
    d: &std::path::Path,
    machines: usize,
    hours: u32,
    live_start_ms: i64,
    state: &std::path::Path,
) -> anyhow::Result<()> {
    let sim = d.join("history-simulated");
    let started = Instant::now();
    let out = Command::new(bin)
        .args(["simulate", "--out"])
        .arg(&sim)
        .args([
            "--machines",
            &machines.to_string(),
            "--hours",
            &hours.to_string(),
        ])
        .args(["--seed", "3", "--heartbeat-secs", "300"])
        .output()?;
    if !out.status.success() {
        bail!(
            "vendflow simulate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "history: simulated {hours} h of {machines} machines in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let history = d.join("history.jsonl");
    vendflow_tests::history_ending_at(&sim.join("events.jsonl"), live_start_ms - 60_000, &history)?;
    std::fs::remove_dir_all(&sim)?;
    let started = Instant::now();
    let out = Command::new(bin)
        .args(["--workers", "2", "replay"])
        .arg(&history)
        .arg("--state")
        .arg(state)
        .output()?;
    if !out.status.success() {
        bail!(
            "vendflow replay --state failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_file(&history)?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("history: {line}");
    }
    println!(
        "history: loaded into the engine's state in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Resident set of a running process now, in MiB.
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// CPU time a running process has used so far (user and system, every thread), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, counted after the command name (which may hold
    // spaces and parentheses, so from its last ')'), in clock ticks: USER_HZ, 100 on Linux.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
            Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// The engine's gauges of what it holds, from its `/metrics`: rows per view (`rows …`), of
/// them on disk (`on disk …`), and keys and bytes per keyed operator (`keys …`, `bytes …`).
/// Empty if the engine did not answer.
fn engine_state(curl: &std::path::Path, http: &str) -> std::collections::BTreeMap<String, u64> {
    let out = Command::new(curl)
        .args(["-s", "--max-time", "10"])
        .arg(format!("http://{http}/metrics"))
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut gauges = std::collections::BTreeMap::new();
    for line in text.lines() {
        for (prefix, short) in [
            ("vendflow_view_rows{view=\"", "rows"),
            ("vendflow_view_rows_on_disk{view=\"", "on disk"),
            ("vendflow_operator_state_keys{operator=\"", "keys"),
            ("vendflow_operator_state_bytes{operator=\"", "bytes"),
        ] {
            let Some(rest) = line.strip_prefix(prefix) else {
                continue;
            };
            if let Some((name, value)) = rest.split_once("\"} ")
                && let Ok(v) = value.trim().parse::<u64>()
            {
                gauges.insert(format!("{short} {name}"), v);
            }
        }
    }
    gauges
}

#[derive(Clone, Copy, Default)]
struct Sample {
    at_s: f64,
    received: u64,
    forwarded: u64,
    inflight: u64,
    /// The bridge's nonce window: envelopes' nonces held to recognise a redelivery, and the
    /// bytes of their tables (the bridge's state with a horizon, `--max-skew-secs`).
    nonces: u64,
    nonce_bytes: u64,
    consumed: u64,
    /// Events in the consumed messages (a machine's envelope carries what its outbox held).
    events: u64,
    lag_ms: i64,
    rss: [u64; 4],
    /// Bytes free on the soak's disk (the brokers' logs, the engine's state and checkpoints).
    disk_free: u64,
    /// Mosquitto's own count of its heap, and the messages it holds (queued for subscribers,
    /// in flight, retained), from its `$SYS` tree: what of its RSS is live.
    mosquitto: MosquittoSys,
    /// CPU seconds so far of each of [`NAMES`], then of the publisher (the simulated fleet).
    cpu: [f64; 5],
}

/// Bytes available to an unprivileged writer on the filesystem of `dir` (`df`).
fn free_disk(dir: &std::path::Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 30)
}

/// What Mosquitto says of itself in `$SYS` (published every 10 s by default).
#[derive(Clone, Copy, Default)]
struct MosquittoSys {
    heap_bytes: u64,
    stored_messages: u64,
    stored_bytes: u64,
}

/// The latest of Mosquitto's `$SYS` figures, kept by a `mosquitto_sub` child and a thread
/// reading its lines (`topic value`).
struct MosquittoWatch {
    latest: std::sync::Arc<std::sync::Mutex<MosquittoSys>>,
    _child: KillOnDrop,
}

impl MosquittoWatch {
    const TOPICS: [&str; 3] = [
        "$SYS/broker/heap/current",
        "$SYS/broker/store/messages/count",
        "$SYS/broker/store/messages/bytes",
    ];

    fn start(program: &std::path::Path, port: u16) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v"]);
        for topic in Self::TOPICS {
            command.args(["-t", topic]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting mosquitto_sub for Mosquitto's $SYS figures")?;
        let stdout = child.stdout.take().context("mosquitto_sub's output")?;
        let latest = std::sync::Arc::new(std::sync::Mutex::new(MosquittoSys::default()));
        let writer = latest.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some((topic, value)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(value) = value.trim().parse::<u64>() else {
                    continue;
                };
                let Ok(mut latest) = writer.lock() else { break };
                match topic {
                    t if t == Self::TOPICS[0] => latest.heap_bytes = value,
                    t if t == Self::TOPICS[1] => latest.stored_messages = value,
                    t if t == Self::TOPICS[2] => latest.stored_bytes = value,
                    _ => {}
                }
            }
        });
        Ok(Self {
            latest,
            _child: KillOnDrop(Some(child)),
        })
    }

    fn now(&self) -> MosquittoSys {
        self.latest.lock().map(|l| *l).unwrap_or_default()
    }
}

/// The first row's `n` of the engine's answer to `sql` (`POST /sql`).
fn engine_count(curl: &std::path::Path, http: &str, sql: &str) -> anyhow::Result<u64> {
    let body = serde_json::json!({ "sql": sql }).to_string();
    let out = Command::new(curl)
        .args(["-s", "--max-time", "30", "-X", "POST"])
        .args(["-H", "content-type: application/json", "-d", &body])
        .arg(format!("http://{http}/sql"))
        .output()?;
    let answer: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("the engine's answer to /sql")?;
    answer["rows"][0]["n"]
        .as_u64()
        .with_context(|| format!("no count in the engine's answer: {answer}"))
}

const NAMES: [&str; 4] = ["mosquitto", "tansu", "bridge", "engine"];

fn growth(first: f64, last: f64) -> String {
    if first <= 0.0 {
        return format!("{first:.0} → {last:.0}");
    }
    format!(
        "{first:.0} → {last:.0} ({:+.1} %)",
        (last / first - 1.0) * 100.0
    )
}

/// A child process killed when dropped.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn child(&mut self) -> anyhow::Result<&mut std::process::Child> {
        self.0.as_mut().context("the publisher is gone")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let bin = release_bin()?;
    let mosquitto_bin =
        require_mosquitto()?.context("mosquitto is not installed (tests/install.sh)")?;
    let tansu_bin = require_tansu()?.context("tansu is not installed (tests/install.sh)")?;
    let curl = require_program("curl", &[])?.context("curl is not installed")?;
    let mosquitto_sub = require_program("mosquitto_sub", &[])?
        .context("mosquitto_sub is not installed (tests/install.sh)")?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let vendflow_tests::Loopback {
        mqtt_port,
        kafka_port,
        mqtt,
        kafka,
        http,
        ..
    } = vendflow_tests::Loopback::new()?;
    let mut mosquitto = start_mosquitto(&mosquitto_bin, d, mqtt_port)?;
    let mosquitto_sys = MosquittoWatch::start(&mosquitto_sub, mqtt_port)?;
    let mut tansu = start_tansu_with(&tansu_bin, d, kafka_port, args.tansu)?;
    let mut bridge = start_bridge(&bin, d, &mqtt, &kafka, args.machines, 4, &http)?;
    let machines = args.machines.to_string();
    let status_path = d.join("status.json");
    let status_text = status_path.display().to_string();
    let engine_http = format!("127.0.0.1:{}", free_port()?);
    let hours = args.minutes * args.speed / 60.0;
    let state = d.join("state");
    let state_text = state.display().to_string();
    let mut engine_args = vec!["--workers", "2", "run"];
    if args.history_hours > 0 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let live_start_ms = now_ms - (hours * 3_600_000.0) as i64;
        load_history(
            &bin,
            d,
            args.machines,
            args.history_hours,
            live_start_ms,
            &state,
        )?;
        // A warm fleet's checkpoint is gigabytes (benches/README.md, soak): one every 10
        // minutes, not the default minute, or the bench would measure the checkpoints.
        engine_args.extend(["--state", &state_text, "--checkpoint-secs", "600"]);
    }
    engine_args.extend([
        "--insecure-open-api",
        "--kafka",
        &kafka,
        "--status",
        &status_text,
        "--every",
        "1",
        "--partitions",
        "4",
        "--http",
        &engine_http,
    ]);
    let mut engine = Daemon::spawn("engine", &bin, &engine_args, &d.join("engine.log"))?;
    let publisher = Command::new(&bin)
        .args([
            "publish",
            "--mqtt",
            &mqtt,
            "--seed",
            "3",
            "--machines",
            &machines,
        ])
        // As machines do in production: a message leaves on the platform's receipt.
        .arg("--receipts")
        .arg("--speed")
        .arg(args.speed.to_string())
        .arg("--hours")
        .arg(format!("{hours:.6}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // Stopped with the bench, whatever ends it (an error, a failed sample, Ctrl-C of cargo).
    let mut publisher = KillOnDrop(Some(publisher));
    println!(
        "soak: {} machines at {}× real time for {} min ({hours:.1} h of event time, ending now; tansu on {:?}); a sample every {} s; the engine starts from {}",
        args.machines,
        args.speed,
        args.minutes,
        args.tansu,
        args.sample_secs,
        if args.history_hours > 0 {
            format!("{} h of the fleet's history", args.history_hours)
        } else {
            "nothing".to_owned()
        }
    );
    let pids = [
        mosquitto.child.id(),
        tansu.child.id(),
        bridge.child.id(),
        engine.child.id(),
    ];
    let publisher_pid = publisher.child()?.id();
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    // The engine's gauges at each sample.
    let mut states: Vec<std::collections::BTreeMap<String, u64>> = Vec::new();
    let mut next = Duration::from_secs_f64(args.sample_secs);
    let publisher_done = loop {
        if let Some(status) = publisher.child()?.try_wait()? {
            break status;
        }
        // A process of the path that has exited ends the soak there, with what it said: the
        // samples after it would measure nothing, and its files go with the soak's directory.
        for daemon in [&mut mosquitto, &mut tansu, &mut bridge, &mut engine] {
            if let Some(status) = daemon.child.try_wait()? {
                let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
                bail!(
                    "{} exited ({status}) {:.0} s into the soak, with {} free on the soak's disk; its log ends:\n{}",
                    daemon.name,
                    started.elapsed().as_secs_f64(),
                    free_disk(d).map_or("?".to_owned(), |b| format!("{:.1} GiB", gib(b))),
                    vendflow_tests::tail(&log)
                );
            }
        }
        if started.elapsed() >= next {
            next += Duration::from_secs_f64(args.sample_secs);
            let status: serde_json::Value = std::fs::read_to_string(&status_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let mut rss = [0; 4];
            for (r, pid) in rss.iter_mut().zip(pids) {
                *r = rss_mib(pid);
            }
            let mut cpu = [0.0; 5];
            for (c, pid) in cpu.iter_mut().zip(pids.into_iter().chain([publisher_pid])) {
                *c = cpu_secs(pid);
            }
            let s = Sample {
                at_s: started.elapsed().as_secs_f64(),
                received: bridge_metric(&curl, &http, "received_total").unwrap_or(0),
                forwarded: bridge_metric(&curl, &http, "forwarded_total").unwrap_or(0),
                inflight: bridge_metric(&curl, &http, "inflight").unwrap_or(0),
                nonces: bridge_metric(&curl, &http, "nonces").unwrap_or(0),
                nonce_bytes: bridge_metric(&curl, &http, "nonce_bytes").unwrap_or(0),
                consumed: status["messages"].as_u64().unwrap_or(0),
                events: status["events"].as_u64().unwrap_or(0),
                lag_ms: status["lagMs"].as_i64().unwrap_or(-1),
                rss,
                mosquitto: mosquitto_sys.now(),
                disk_free: free_disk(d).unwrap_or(0),
                cpu,
            };
            println!(
                "{:>6.0} s  received {:>10}  forwarded {:>10}  in flight {:>6}  consumed {:>10}  backlog {:>8}  frontier {:>7} ms behind  RSS MiB: mosquitto {:>5} tansu {:>5} bridge {:>5} engine {:>5}  mosquitto heap {:>5} MiB, holds {:>8} messages  bridge nonces {:>8}  disk free {:>5.1} GiB",
                s.at_s,
                s.received,
                s.forwarded,
                s.inflight,
                s.consumed,
                s.received.saturating_sub(s.consumed),
                s.lag_ms,
                s.rss[0],
                s.rss[1],
                s.rss[2],
                s.rss[3],
                s.mosquitto.heap_bytes >> 20,
                s.mosquitto.stored_messages,
                s.nonces,
                gib(s.disk_free)
            );
            samples.push(s);
            states.push(engine_state(&curl, &engine_http));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = publisher
        .0
        .take()
        .context("the publisher is gone")?
        .wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    if !publisher_done.success() {
        bail!("the publisher failed: {said}");
    }
    println!("publisher: {}", said.trim());
    if samples.len() < 5 {
        bail!("too few samples ({}) for a verdict", samples.len());
    }
    // Rates and growth after the warm-up (`--warm-up-minutes`, or the first fifth of the run).
    let first = match args.warm_up_minutes {
        Some(m) => samples
            .iter()
            .position(|s| s.at_s >= m * 60.0)
            .unwrap_or(samples.len() - 1),
        None => samples.len() / 5,
    };
    let warm = samples[first];
    let last = samples[samples.len() - 1];
    let secs = (last.at_s - warm.at_s).max(1.0);
    println!(
        "after the warm-up ({:.0} s to {:.0} s): received {:.0} envelopes/s, consumed {:.0} messages/s ({:.0} events/s)",
        warm.at_s,
        last.at_s,
        (last.received - warm.received) as f64 / secs,
        last.consumed.saturating_sub(warm.consumed) as f64 / secs,
        last.events.saturating_sub(warm.events) as f64 / secs
    );
    let backlog = |s: &Sample| s.received.saturating_sub(s.consumed) as f64;
    let tail = &samples[first..];
    let max_backlog = tail.iter().map(backlog).fold(0.0, f64::max);
    println!(
        "backlog (received by the bridge, not yet consumed by the engine): {}, at most {max_backlog:.0}",
        growth(backlog(&warm), backlog(&last))
    );
    println!(
        "frontier behind the wall clock, ms: {}",
        growth(warm.lag_ms as f64, last.lag_ms as f64)
    );
    for (i, name) in NAMES.iter().enumerate() {
        let max = tail.iter().map(|s| s.rss[i]).max().unwrap_or(0);
        println!(
            "RSS {name}, MiB: {}, at most {max}",
            growth(warm.rss[i] as f64, last.rss[i] as f64)
        );
    }
    let mib = |b: u64| (b >> 20) as f64;
    println!(
        "bridge's nonce window: {} nonces, {} MiB of table slots; at most {} nonces",
        growth(warm.nonces as f64, last.nonces as f64),
        growth(mib(warm.nonce_bytes), mib(last.nonce_bytes)),
        tail.iter().map(|s| s.nonces).max().unwrap_or(0),
    );
    println!(
        "disk free beside the soak's files, GiB: {:.1} → {:.1}, at least {:.1}",
        gib(warm.disk_free),
        gib(last.disk_free),
        tail.iter()
            .map(|s| gib(s.disk_free))
            .fold(f64::MAX, f64::min)
    );
    // Mosquitto's RSS keeps the high-water mark of its heap (the allocator does not hand
    // freed pages back): its own figures say whether the growth is live, and what it is.
    println!(
        "Mosquitto's heap ($SYS), MiB: {}, at most {:.0}; messages it holds: {}, at most {} ({:.0} MiB at most)",
        growth(
            mib(warm.mosquitto.heap_bytes),
            mib(last.mosquitto.heap_bytes)
        ),
        tail.iter()
            .map(|s| mib(s.mosquitto.heap_bytes))
            .fold(0.0, f64::max),
        growth(
            warm.mosquitto.stored_messages as f64,
            last.mosquitto.stored_messages as f64
        ),
        tail.iter()
            .map(|s| s.mosquitto.stored_messages)
            .max()
            .unwrap_or(0),
        tail.iter()
            .map(|s| mib(s.mosquitto.stored_bytes))
            .fold(0.0, f64::max),
    );
    // Where the CPU went: the path's processes and the simulated fleet share these cores.
    let shares: Vec<String> = NAMES
        .iter()
        .chain(&["publisher"])
        .zip(warm.cpu.iter().zip(last.cpu))
        .map(|(name, (w, l))| format!("{name} {:.0} %", (l - w) / secs * 100.0))
        .collect();
    let total: f64 = warm.cpu.iter().zip(last.cpu).map(|(w, l)| l - w).sum();
    println!(
        "CPU after the warm-up, % of one core: {}; together {:.0} % of {} cores",
        shares.join(", "),
        total / secs * 100.0,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // What grew inside the engine: its views' rows and its operators' tables.
    let (warm_state, last_state) = (&states[first], &states[states.len() - 1]);
    let mut grown: Vec<(&String, u64, u64, u64)> = last_state
        .iter()
        .map(|(name, &l)| {
            let w = warm_state.get(name).copied().unwrap_or(0);
            let max = states[first..]
                .iter()
                .filter_map(|s| s.get(name).copied())
                .max()
                .unwrap_or(l);
            (name, w, l, max)
        })
        .filter(|(_, w, l, _)| l > w)
        .collect();
    grown.sort_by_key(|(name, w, l, _)| (!name.starts_with("bytes"), std::cmp::Reverse(l - w)));
    println!(
        "engine state that grew after the warm-up (from /metrics; bytes are the tables' slots):"
    );
    for (name, w, l, max) in grown.iter().take(25) {
        println!(
            "  {name:<48} {}, at most {max}",
            growth(*w as f64, *l as f64)
        );
    }
    if let Some(path) = &args.state_csv {
        let names: std::collections::BTreeSet<&String> =
            states.iter().flat_map(|s| s.keys()).collect();
        let mut csv = String::from("at_s,engine_rss_mib");
        for name in &names {
            csv.push(',');
            csv.push_str(&name.replace(',', ";"));
        }
        csv.push('\n');
        for (sample, state) in samples.iter().zip(&states) {
            csv.push_str(&format!("{:.0},{}", sample.at_s, sample.rss[3]));
            for name in &names {
                csv.push_str(&format!(",{}", state.get(*name).copied().unwrap_or(0)));
            }
            csv.push('\n');
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
        println!("engine state at every sample: {}", path.display());
    }
    // Re-deliveries the engine recognised (an envelope sent again after its receipt was
    // late carries events already counted): what the path carried beyond the fleet's events.
    let duplicates = |view: &str| {
        engine_count(
            &curl,
            &engine_http,
            &format!("select coalesce(sum(duplicates), 0) as n from {view}"),
        )
    };
    println!(
        "engine: {} events consumed; dropped as re-deliveries: {} events of other kinds, {} sale lines",
        last.events,
        duplicates("event_duplicates")?,
        duplicates("sale_duplicates")?
    );
    // Each checkpoint the engine wrote, from its log: what it cost the path.
    let log = std::fs::read_to_string(d.join("engine.log")).unwrap_or_default();
    for line in log.lines().filter(|l| l.contains("checkpoint written")) {
        let field = |name: &str| -> Option<f64> {
            let at = line.find(&format!("{name}="))? + name.len() + 1;
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        if let (Some(bytes), Some(held), Some(write)) =
            (field("bytes"), field("held_ms"), field("write_ms"))
        {
            println!(
                "engine checkpoint: {:.0} MiB, consumers held {:.1} s, written in {:.1} s",
                bytes / f64::from(1 << 20),
                held / 1e3,
                write / 1e3
            );
        }
    }
    drop(engine);
    drop(bridge);
    drop(tansu);
    drop(mosquitto);
    Ok(())
}
