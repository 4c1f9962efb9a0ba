//! The production path under load, on real brokers: Mosquitto → `vendflow bridge` → tansu →
//! `vendflow run`, all release binaries on loopback.
//!
//! 1. Bridge throughput: a fleet publishes as fast as Mosquitto takes it; the bridge's own
//!    counters (`GET /metrics`) give envelopes/s from its first to its last forward.
//! 2. Freshness at the fleet's rate: 50,000 machines in real time (≈ 1,700 heartbeats/s plus
//!    sales). The engine samples consumed messages and measures, for each, the wall-clock time
//!    from the bridge stamping it to every view reflecting it (`vendflow run --status`: p50/p99
//!    over the last minute); the run should last over a minute so that only live traffic counts.
//!
//! `cargo bench -p vendflow-benches --bench brokers [-- --burst-machines 2000 --burst-hours 1
//!  --machines 50000 --seconds 120]`. Needs `mosquitto` and `tansu` (tests/run-all.sh installs
//! them) and `cargo build --release --bins`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vendflow_benches::release_bin;
use vendflow_tests::{
    Daemon, bridge_metric, require_mosquitto, require_program, require_tansu, start_bridge,
    start_mosquitto, start_tansu,
};

struct Args {
    burst_machines: usize,
    burst_hours: f64,
    machines: usize,
    seconds: f64,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        burst_machines: 2000,
        burst_hours: 1.0,
        machines: 50_000,
        seconds: 120.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--burst-machines" => a.burst_machines = value()?.parse()?,
            "--burst-hours" => a.burst_hours = value()?.parse()?,
            "--machines" => a.machines = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// Peak resident set of a running process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn published(out: &std::process::Output) -> anyhow::Result<u64> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "publish failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.split_once("published ")
        .and_then(|(_, r)| r.split_whitespace().next())
        .context("publish did not report a count")?
        .parse()
        .context("envelope count")
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
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
    let bridge = start_bridge(
        &bin,
        d,
        &mqtt,
        &kafka,
        args.machines.max(args.burst_machines),
        4,
        &http,
    )?;

    // 1. Throughput.
    let publisher = Command::new(&bin)
        .args(["publish", "--mqtt", &mqtt, "--seed", "3", "--machines"])
        .arg(args.burst_machines.to_string())
        .arg("--hours")
        .arg(args.burst_hours.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut first: Option<Instant> = None;
    let mut last = (Instant::now(), 0u64);
    let burst_started = Instant::now();
    let mut publisher = Some(publisher);
    let mut burst = None;
    loop {
        let forwarded = bridge_metric(&curl, &http, "forwarded_total")?;
        if forwarded > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if forwarded != last.1 {
            last = (Instant::now(), forwarded);
        }
        if let Some(p) = publisher.as_mut()
            && p.try_wait()?.is_some()
            && let Some(p) = publisher.take()
        {
            let out = p.wait_with_output()?;
            burst = Some((published(&out)?, burst_started.elapsed()));
        }
        if let Some((n, _)) = burst
            && forwarded >= n
        {
            break;
        }
        if burst_started.elapsed() > Duration::from_secs(900) {
            bail!("the bridge forwarded only {forwarded} envelopes in 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (burst_n, publish_time) = burst.context("publisher result")?;
    let forward_time = last.0 - first.unwrap_or(last.0);
    println!(
        "bridge throughput: {burst_n} envelopes of {} machines; publisher {:.0} envelopes/s, bridge {:.0} envelopes/s into Kafka ({:.1} s first to last forward)",
        args.burst_machines,
        burst_n as f64 / publish_time.as_secs_f64(),
        burst_n as f64 / forward_time.as_secs_f64().max(1e-3),
        forward_time.as_secs_f64()
    );

    // 2. Freshness at the fleet's rate, with the engine caught up first.
    // Only the status file: CSVs of 1.5 M inventory rows every 0.5 s would be what is measured.
    let status_path = d.join("status.json");
    let status_text = status_path.display().to_string();
    let engine = Daemon::spawn(
        "engine",
        &bin,
        &[
            "run",
            "--insecure-open-api",
            "--kafka",
            &kafka,
            "--status",
            &status_text,
            "--every",
            "0.5",
            "--partitions",
            "4",
            "--tick-ms",
            "100",
        ],
        &d.join("engine.log"),
    )?;
    let status_of = || -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(&status_path).ok()?).ok()
    };
    let caught_up = Instant::now();
    loop {
        let messages = status_of()
            .and_then(|s| s["messages"].as_u64())
            .unwrap_or(0);
        if messages >= burst_n {
            break;
        }
        if caught_up.elapsed() > Duration::from_secs(600) {
            bail!("the engine consumed only {messages} of {burst_n} messages");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "engine caught up with {burst_n} envelopes in {:.1} s",
        caught_up.elapsed().as_secs_f64()
    );
    let hours = args.seconds / 3600.0;
    let live = Command::new(&bin)
        .args([
            "publish",
            "--mqtt",
            &mqtt,
            "--seed",
            "3",
            "--speed",
            "1",
            "--machines",
        ])
        .arg(args.machines.to_string())
        .arg("--hours")
        .arg(format!("{hours:.6}"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let live_started = Instant::now();
    let mut lags = Vec::new();
    let mut max_inflight = 0;
    let mut live = Some(live);
    let mut live_n = 0;
    while let Some(p) = live.as_mut() {
        if p.try_wait()?.is_some() {
            if let Some(p) = live.take() {
                live_n = published(&p.wait_with_output()?)?;
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        max_inflight = max_inflight.max(bridge_metric(&curl, &http, "inflight")?);
        if let Some(lag) = status_of().and_then(|s| s["lagMs"].as_i64()) {
            lags.push(lag);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let status = status_of().context("no status from the engine")?;
    lags.sort_unstable();
    println!(
        "freshness at {} machines in real time: {live_n} envelopes in {:.0} s ({:.0}/s); bridge stamp → every view, last minute: p50 {} ms, p99 {} ms, of which consumer received → every view (the engine): p50 {} ms, p99 {} ms ({} sampled messages); frontier behind the wall clock: p50 {} ms, p99 {} ms; bridge inflight max {max_inflight}",
        args.machines,
        live_started.elapsed().as_secs_f64(),
        live_n as f64 / live_started.elapsed().as_secs_f64(),
        status["freshnessP50Ms"],
        status["freshnessP99Ms"],
        status["engineFreshnessP50Ms"],
        status["engineFreshnessP99Ms"],
        status["freshnessSamples"],
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
    );
    println!(
        "peak RSS: bridge {} MiB, engine {} MiB",
        peak_rss_mib(bridge.child.id()),
        peak_rss_mib(engine.child.id())
    );
    Ok(())
}
