//! Restart from a checkpoint as the log grows, and a cluster against one process, on real
//! brokers: Mosquitto → `vendflow bridge` → tansu → `vendflow run`, release binaries on loopback.
//!
//! 1. The log doubles in steps (1, 2, 4… × a fleet publishing `--hours`, as fast as the broker
//!    takes it). After each step an engine with `--state` (checkpoints every 5 s) has caught up and
//!    written a checkpoint; it is `kill -9`ed and started again, and the time from the restart
//!    until it has consumed the whole log again is measured. Beside it, an engine without state
//!    reads the whole log from offset 0: the time a restart took before checkpoints. The first
//!    should stay flat as the log grows, the second grows with it.
//! 2. Throughput on the final log: one process with 2 workers against a cluster of 2 processes
//!    with 1 worker each (`--processes 2`), each reading the whole log from offset 0 (events/s
//!    from start to caught up).
//! 3. What a checkpoint of the final log's state costs, one process with 2 workers against each
//!    process of the cluster (with `--state`, once caught up): its size, how long the consumers
//!    were held while the state was taken, and the file's write, from the engines' own
//!    `checkpoint written` log lines.
//!
//! `cargo bench -p vendflow-benches --bench restart [-- --machines 2000 --hours 1 --steps 3]`.
//! Needs `mosquitto` and `tansu` (tests/run-all.sh installs them) and
//! `cargo build --release --bins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vendflow_benches::release_bin;
use vendflow_tests::{
    Daemon, bridge_metric, free_port, require_mosquitto, require_program, require_tansu,
    start_mosquitto, start_tansu,
};

struct Args {
    machines: usize,
    hours: f64,
    steps: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        machines: 2000,
        hours: 1.0,
        steps: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("a flag without its value");
        match flag.as_str() {
            "--machines" => args.machines = value()?.parse()?,
            "--hours" => args.hours = value()?.parse()?,
            "--steps" => args.steps = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// The telemetry positions an engine reports in its status file, summed.
fn consumed(status: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(status) else {
        return 0;
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return 0;
    };
    value["positions"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .filter(|p| p.starts_with("machine-telemetry/"))
        .filter_map(|p| p.split_once('=')?.1.parse::<u64>().ok())
        .sum()
}

/// Starts `vendflow run` with `extra` arguments, its status in `dir/<name>.json`.
fn engine(
    bin: &Path,
    kafka: &str,
    dir: &Path,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<(Daemon, PathBuf)> {
    let status = dir.join(format!("{name}.json"));
    let _ = std::fs::remove_file(&status);
    let status_text = status.display().to_string();
    let mut args = vec![
        "run",
        "--insecure-open-api",
        "--kafka",
        kafka,
        "--status",
        &status_text,
        "--every",
        "0.2",
        "--partitions",
        "4",
    ];
    args.extend(extra);
    let daemon = Daemon::spawn(name, bin, &args, &dir.join(format!("{name}.log")))?;
    Ok((daemon, status))
}

/// Waits until the engine writing `status` has consumed `total` telemetry messages; the time.
fn until_consumed(status: &Path, total: u64, started: Instant, d: &Daemon) -> anyhow::Result<f64> {
    loop {
        if consumed(status) >= total {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!(
                "{} consumed {} of {total} in 30 minutes:\n{}",
                d.name,
                consumed(status),
                vendflow_tests::tail(&d.output())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let bin = release_bin()?;
    let mosquitto_bin = require_mosquitto()?.context("mosquitto is not installed")?;
    let tansu_bin = require_tansu()?.context("tansu is not installed")?;
    let curl = require_program("curl", &[])?.context("curl is not installed")?;
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
    let _mosquitto = start_mosquitto(&mosquitto_bin, d, mqtt_port)?;
    let _tansu = start_tansu(&tansu_bin, d, kafka_port)?;
    // Unsigned envelopes accepted: each step's fleet has its own seed (new sales), and so its
    // own keys.
    let bridge = Daemon::spawn(
        "bridge",
        &bin,
        &[
            "bridge",
            "--mqtt",
            &mqtt,
            "--kafka",
            &kafka,
            "--insecure-no-auth",
            "--partitions",
            "4",
            "--http",
            &http,
        ],
        &d.join("bridge.log"),
    )?;
    bridge.wait_for_line("subscribed", Duration::from_secs(30))?;
    let state = d.join("state");
    let state_text = state.display().to_string();
    let checkpointing = ["--state", &state_text, "--checkpoint-secs", "5"];
    let (mut kept, mut kept_status) = engine(&bin, &kafka, d, "checkpointed", &checkpointing)?;
    let mut total = 0u64;
    let mut kept_checkpoint = None;
    println!(
        "| log (telemetry messages) | restart from checkpoint → caught up | rebuild from offset 0 → caught up | checkpoint size |"
    );
    println!("|---|---|---|---|");
    for step in 1..=args.steps {
        // The log doubles: `hours`, then as much again, then twice that… (a seed per step:
        // new sales).
        let hours = args.hours * f64::from(1u32 << step.saturating_sub(2).min(16));
        let out = Command::new(&bin)
            .args(["publish", "--mqtt", &mqtt, "--machines"])
            .arg(args.machines.to_string())
            .arg("--hours")
            .arg(hours.to_string())
            .args(["--seed", &step.to_string()])
            .output()?;
        if !out.status.success() {
            bail!(
                "the publisher failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let published: u64 = text
            .split_once("published ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .context("the publisher's count")?
            .parse()?;
        total += published;
        let started = Instant::now();
        while bridge_metric(&curl, &http, "forwarded_total")? < total {
            if started.elapsed() > Duration::from_secs(900) {
                bail!("the bridge did not forward {total} envelopes in 15 minutes");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        until_consumed(&kept_status, total, Instant::now(), &kept)?;
        // A checkpoint taken after the engine caught up, then kill -9 and a restart.
        let newest = checkpoint_after_catch_up(&kept)?;
        kept_checkpoint = Some(newest);
        let size = newest.bytes;
        kept.kill();
        let restarted = Instant::now();
        (kept, kept_status) = engine(&bin, &kafka, d, "checkpointed", &checkpointing)?;
        let restart = until_consumed(&kept_status, total, restarted, &kept)?;
        let rebuilt = Instant::now();
        let (mut fresh, fresh_status) = engine(&bin, &kafka, d, "from-zero", &[])?;
        let rebuild = until_consumed(&fresh_status, total, rebuilt, &fresh)?;
        fresh.kill();
        println!(
            "| {total} | {restart:.1} s | {rebuild:.1} s | {:.1} MB |",
            size as f64 / 1e6
        );
    }
    kept.kill();

    // Throughput: one process with 2 workers, then two processes with 1 worker each.
    let started = Instant::now();
    let (mut one, one_status) = engine(&bin, &kafka, d, "one-process", &[])?;
    let alone = until_consumed(&one_status, total, started, &one)?;
    one.kill();
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", free_port()?, free_port()?);
    // Each run of the cluster logs to files of its own (a daemon's log is appended to, and
    // the second's log is read for how far it got).
    let cluster = |run: &str, i: &str, extra: &[&str]| -> anyhow::Result<Daemon> {
        let log = d.join(format!("{run}-{i}.log"));
        let mut args = vec![
            "--workers",
            "1",
            "run",
            "--insecure-open-api",
            "--kafka",
            &kafka,
            "--every",
            "0.2",
            "--partitions",
            "4",
            "--processes",
            "2",
            "--process",
            i,
            "--peers",
            &peers,
        ];
        let status = d.join("cluster.json").display().to_string();
        if i == "0" {
            args.extend(["--status", &status]);
        }
        args.extend(extra);
        Daemon::spawn("cluster", &bin, &args, &log)
    };
    let _ = std::fs::remove_file(d.join("cluster.json"));
    let started = Instant::now();
    let (first, second) = (cluster("cluster", "0", &[])?, cluster("cluster", "1", &[])?);
    // Process 0's status lists only its own partitions: wait until it has those, then until the
    // second's log says it consumed its own (its summary line carries its positions).
    let spread = until_cluster_consumed(&d.join("cluster.json"), &second, total, started)?;
    drop((first, second));
    println!(
        "throughput over {total} telemetry messages from offset 0: 1 process × 2 workers {alone:.1} s ({:.0}/s); 2 processes × 1 worker {spread:.1} s ({:.0}/s)",
        total as f64 / alone,
        total as f64 / spread
    );

    // What a checkpoint of the whole log's state costs: the single process's (taken above),
    // then each process of a checkpointing cluster once it has caught up.
    let _ = std::fs::remove_file(d.join("cluster.json"));
    let started = Instant::now();
    let (first, second) = (
        cluster(
            "checkpointing",
            "0",
            &[
                "--state",
                &d.join("cluster-state-0").display().to_string(),
                "--checkpoint-secs",
                "5",
            ],
        )?,
        cluster(
            "checkpointing",
            "1",
            &[
                "--state",
                &d.join("cluster-state-1").display().to_string(),
                "--checkpoint-secs",
                "5",
            ],
        )?,
    );
    until_cluster_consumed(&d.join("cluster.json"), &second, total, started)?;
    let parts = [
        checkpoint_after_catch_up(&first)?,
        checkpoint_after_catch_up(&second)?,
    ];
    drop((first, second));
    println!(
        "checkpoint of the state after {total} telemetry messages (the engines' own log lines):"
    );
    println!("| engine | bytes | consumers held | written in |");
    println!("|---|---|---|---|");
    if let Some(c) = kept_checkpoint {
        println!("| 1 process × 2 workers | {} |", c.row());
    }
    for (i, c) in parts.iter().enumerate() {
        println!("| cluster, process {i} of 2 (1 worker) | {} |", c.row());
    }
    Ok(())
}

/// One `checkpoint written` line of an engine's log.
#[derive(Clone, Copy, Debug)]
struct Logged {
    bytes: u64,
    held_ms: u64,
    write_ms: u64,
}

impl Logged {
    fn row(&self) -> String {
        format!(
            "{:.1} MB | {} ms | {} ms",
            self.bytes as f64 / 1e6,
            self.held_ms,
            self.write_ms
        )
    }
}

/// Every `checkpoint written` line of `log`, oldest first.
fn checkpoints_logged(log: &str) -> Vec<Logged> {
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    log.lines()
        .filter(|l| l.contains("checkpoint written"))
        .filter_map(|l| {
            Some(Logged {
                bytes: field(l, "bytes")?,
                held_ms: field(l, "held_ms")?,
                write_ms: field(l, "write_ms")?,
            })
        })
        .collect()
}

/// The second checkpoint `engine` writes from now on (it has caught up: the state of the whole
/// log; the first may have been under way before it had).
fn checkpoint_after_catch_up(engine: &Daemon) -> anyhow::Result<Logged> {
    let before = checkpoints_logged(&engine.output()).len();
    let started = Instant::now();
    loop {
        if let Some(c) = checkpoints_logged(&engine.output()).get(before + 1) {
            return Ok(*c);
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!(
                "{} wrote no checkpoint in 5 minutes:\n{}",
                engine.name,
                vendflow_tests::tail(&engine.output())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until both processes of the cluster together consumed `total` telemetry messages: the
/// first's status file has its partitions, the second's newest summary line its own.
fn until_cluster_consumed(
    status: &Path,
    second: &Daemon,
    total: u64,
    started: Instant,
) -> anyhow::Result<f64> {
    loop {
        let theirs: u64 = second
            .output()
            .lines()
            .rev()
            .find(|l| l.contains("machine-telemetry/"))
            .map(|l| {
                l.split_whitespace()
                    .filter(|p| p.starts_with("machine-telemetry/"))
                    .filter_map(|p| p.split_once('=')?.1.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        if consumed(status) + theirs >= total {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the cluster did not consume {total} messages in 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
