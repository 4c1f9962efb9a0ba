//! What analysts wait for: SQL latency on the live views at fleet scale, and DataFusion against
//! DuckDB over one archived day.
//!
//! 1. **Live views** (`--machines`, default 50,000): `vendflow demo` (release build) streams a
//!    simulated fleet in real time (≈ 1,700 events/s at 50,000 machines) into the embedded
//!    dataflows. After `--warmup-secs` every machine has reported; then each query below runs
//!    `--runs` times over HTTP (`POST /sql`, a new connection per query, as a script would) and
//!    over the Postgres wire protocol (one `psql` session, `\timing`), while the fleet keeps
//!    streaming. Latency is the client's round trip; p50 and p99 per query and transport.
//! 2. **One archived day** (`--day-events`, default 10 M events over 24 hours of event time,
//!    50,000 machines, the benchmark workload's mix): written through the real archive writer
//!    (hour partitions, zstd Parquet), then the same queries over `events` for that date run in
//!    vendflow's DataFusion (in process, 2 partitions) and in DuckDB (in process, 2 threads) on
//!    the same files, median of `--archive-runs`. Both answers are compared.
//!
//! `cargo build --release --bins && cargo bench -p vendflow-benches --bench queries [-- --machines
//!  50000 --warmup-secs 60 --runs 100 --day-events 10000000 --archive-runs 5 --skip-live
//!  --skip-archive]`. Needs `psql` and a Python with duckdb (tests/run-all.sh installs both).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vendflow_benches::{quantile, release_bin};
use vendflow_dataflows::{Config, Engine};
use vendflow_protocol::decode::decode_line;
use vendflow_protocol::{Event, Timestamp};
use vendflow_queries::sql::{Limits, Sql};
use vendflow_sinks::archive::{Archive, ArchiveConfig};
use vendflow_tests::{Daemon, free_port, python_with_duckdb, wait_for_port};

struct Args {
    machines: usize,
    warmup_secs: u64,
    runs: usize,
    day_events: usize,
    archive_runs: usize,
    live: bool,
    archive: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        machines: 50_000,
        warmup_secs: 60,
        runs: 100,
        day_events: 10_000_000,
        archive_runs: 5,
        live: true,
        archive: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--machines" => a.machines = value()?.parse()?,
            "--warmup-secs" => a.warmup_secs = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--day-events" => a.day_events = value()?.parse()?,
            "--archive-runs" => a.archive_runs = value()?.parse()?,
            "--skip-live" => a.live = false,
            "--skip-archive" => a.archive = false,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

/// One `POST /sql` with `token` on a new connection; returns the status line's code and the body.
fn post_sql(addr: &str, token: &str, sql: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST /sql HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{sql}",
        sql.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

fn report(label: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "  {label:<44} p50 {:>8.2} ms   p99 {:>8.2} ms   ({} runs)",
        quantile(&ms, 0.5),
        quantile(&ms, 0.99),
        ms.len()
    );
}

fn live(bin: &Path, a: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (http_port, pg_port) = (free_port()?, free_port()?);
    let http = format!("127.0.0.1:{http_port}");
    let pg = format!("127.0.0.1:{pg_port}");
    let archive = dir.path().join("archive");
    let machines = a.machines.to_string();
    let archive_arg = archive.display().to_string();
    let mut demo = Daemon::spawn(
        "demo",
        bin,
        &[
            "demo",
            "--machines",
            &machines,
            "--speed",
            "1",
            "--http",
            &http,
            "--pg",
            &pg,
            "--archive",
            &archive_arg,
            // The bench times queries back to back with one token: not a load to rate-limit.
            "--api-rate",
            "1000000",
        ],
        &dir.path().join("demo.log"),
    )?;
    wait_for_port(http_port, Duration::from_secs(120))?;
    wait_for_port(pg_port, Duration::from_secs(30))?;
    // The admin token the demo printed: HTTP bearer and psql password.
    let token = demo.wait_for_line("admin token (tenant *): ", Duration::from_secs(10))?;
    println!(
        "live views: {} machines streaming in real time; warming up {} s",
        a.machines, a.warmup_secs
    );
    std::thread::sleep(Duration::from_secs(a.warmup_secs));
    let (_, body) = post_sql(
        &http,
        &token,
        "SELECT count(*) AS n, min(machine_id) AS m FROM liveness WHERE last_heartbeat IS NOT NULL",
    )?;
    let rows: serde_json::Value = serde_json::from_str(&body).context("count answer")?;
    let first = &rows["rows"][0];
    let machine = first["m"]
        .as_str()
        .context("no machine has reported")?
        .to_owned();
    println!("  machines reporting: {}", first["n"]);
    let (_, body) = post_sql(&http, &token, "SELECT count(*) AS n FROM inventory")?;
    println!("  inventory rows: {}", body.trim());

    let queries = [
        (
            "point: one machine's inventory",
            format!("SELECT * FROM inventory WHERE machine_id = '{machine}'"),
        ),
        (
            "point: one machine's anomaly windows",
            format!("SELECT * FROM anomaly_windows WHERE machine_id = '{machine}'"),
        ),
        (
            "fleet: machines by liveness status",
            "SELECT status, count(*) FROM liveness GROUP BY status".to_owned(),
        ),
        (
            "top 10 machines by revenue today",
            "SELECT machine_id, revenue FROM revenue_machine_daily ORDER BY revenue DESC LIMIT 10"
                .to_owned(),
        ),
        (
            "join: low-stock slots of unhealthy machines",
            "SELECT i.machine_id, count(*) AS low, max(h.alerts) AS alerts FROM inventory i \
             JOIN health h ON h.machine_id = i.machine_id WHERE i.low_stock AND h.alerts > 0 \
             GROUP BY i.machine_id ORDER BY low DESC LIMIT 20"
                .to_owned(),
        ),
    ];
    println!("HTTP POST /sql (new connection per query):");
    for (label, sql) in &queries {
        let mut ms = Vec::with_capacity(a.runs);
        for _ in 0..a.runs {
            let t = Instant::now();
            let (code, body) = post_sql(&http, &token, sql)?;
            if code != 200 {
                bail!("{label}: HTTP {code}: {body}");
            }
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        report(label, ms);
    }
    println!("psql (one session, \\timing):");
    for (label, sql) in &queries {
        let mut script = String::from("\\timing on\n\\o /dev/null\n");
        for _ in 0..a.runs {
            script.push_str(sql);
            script.push_str(";\n");
        }
        let mut child = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &pg_port.to_string(),
                "-U",
                "vendflow",
                "vendflow",
            ])
            .env("PGPASSWORD", &token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("psql (install postgresql-client)")?;
        child
            .stdin
            .take()
            .context("psql stdin")?
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{label}: psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        let ms: Vec<f64> = BufReader::new(&out.stdout[..])
            .lines()
            .chain(BufReader::new(&out.stderr[..]).lines())
            .map_while(Result::ok)
            .filter_map(|l| {
                l.strip_prefix("Time: ")
                    .and_then(|t| t.split_whitespace().next())
                    .and_then(|t| t.parse().ok())
            })
            .collect();
        if ms.len() != a.runs {
            bail!("{label}: psql printed {} timings of {}", ms.len(), a.runs);
        }
        report(label, ms);
    }
    demo.terminate()?;
    Ok(())
}

/// Midnight UTC, 2023-11-14: the archived day.
const DAY_START_MS: i64 = 1_699_920_000_000;
const DAY: &str = "2023-11-14";

/// A sale kept for re-delivery: machine, slot, cents, transaction id.
type Sale = (u64, u64, u64, u64);

/// The benchmark workload's mix (`benches/workload/gen_workload.py`: 80 % heartbeats, 20 % sales,
/// 1 % of sales re-delivered later) spread over one day of event time, as JSON Lines.
fn day_line(i: usize, n: usize, rng: &mut u64, recent: &mut Vec<Sale>) -> String {
    let mut next = || {
        // xorshift64*: deterministic, and fast enough not to matter.
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let ts = DAY_START_MS + (i as i64 * 86_400_000) / n as i64;
    if next() % 100 < 80 {
        let m = next() % 50_000;
        let temp = 10 + next() % 81;
        let door = if next() % 100 < 5 { "open" } else { "closed" };
        return format!(
            r#"{{"machineId":"m{m:05}","type":"heartbeat","timestamp":{ts},"payload":{{"temperature":{}.{},"doorStatus":"{door}"}}}}"#,
            temp / 10,
            temp % 10
        );
    }
    let (m, slot, cents, txn) = if !recent.is_empty() && next() % 100 == 0 {
        recent[(next() % recent.len() as u64) as usize]
    } else {
        let sale = (
            next() % 50_000,
            1 + next() % 30,
            (4 + next() % 13) * 25,
            next(),
        );
        if recent.len() >= 2000 {
            recent.remove(0);
        }
        recent.push(sale);
        sale
    };
    format!(
        r#"{{"machineId":"m{m:05}","type":"sale","timestamp":{ts},"payload":{{"slotNumber":{slot},"productId":"p{slot:02}","amount":{}.{:02},"paymentMethod":"card","transactionId":"{txn:016x}"}}}}"#,
        cents / 100,
        cents % 100
    )
}

fn write_day(root: &Path, n: usize) -> anyhow::Result<u64> {
    let archive = Archive::open(ArchiveConfig::new(root, &Config::default()))?;
    let tap = archive.tap();
    let (mut rng, mut recent) = (0x9E37_79B9_7F4A_7C15_u64, Vec::new());
    let mut chunk: Vec<Event> = Vec::with_capacity(1000);
    let started = Instant::now();
    for i in 0..n {
        let line = day_line(i, n, &mut rng, &mut recent);
        for event in decode_line(line.as_bytes()) {
            chunk.push(event.map_err(|e| anyhow::anyhow!("generated a bad line: {e}: {line}"))?);
        }
        if chunk.len() == 1000 || i + 1 == n {
            let at = chunk.last().map_or(DAY_START_MS, |e| e.timestamp.0);
            tap.record(
                "bench-day",
                i as i64,
                Timestamp(at),
                std::mem::take(&mut chunk),
                Vec::new(),
            )?;
        }
    }
    archive.close()?;
    let bytes = walk_bytes(&root.join("events"));
    println!(
        "one archived day: {n} events written in {:.1} s, {:.1} MiB of Parquet",
        started.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64
    );
    Ok(bytes)
}

fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk_bytes(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Queries over the archived day, in SQL both engines read alike.
fn archive_queries() -> Vec<(&'static str, String)> {
    vec![
        (
            "count events, distinct machines",
            format!(
                "SELECT count(*) AS n, count(DISTINCT machine_id) AS machines FROM events WHERE date = DATE '{DAY}'"
            ),
        ),
        (
            "revenue per machine (distinct txns), top 10",
            format!(
                "SELECT machine_id, sum(amount) AS revenue FROM (SELECT DISTINCT machine_id, transaction_id, slot_number, amount FROM events WHERE date = DATE '{DAY}' AND type = 'sale') s GROUP BY machine_id ORDER BY revenue DESC, machine_id LIMIT 10"
            ),
        ),
        (
            "max temperature per hour",
            format!(
                "SELECT hour, max(temperature) AS max_t, count(*) AS n FROM events WHERE date = DATE '{DAY}' AND type = 'heartbeat' GROUP BY hour ORDER BY hour"
            ),
        ),
    ]
}

fn archive(a: &Args) -> anyhow::Result<()> {
    let python = python_with_duckdb()?
        .context("no Python with duckdb (tests/run-all.sh installs one under ~/.cache/vendflow)")?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("archive");
    write_day(&root, a.day_events)?;

    let engine = Engine::start(Config::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sql = Sql::open(engine.store(), Some(&root), Limits::default())?;
    let queries = archive_queries();
    let mut ours = Vec::new();
    for (label, q) in &queries {
        let mut ms = Vec::new();
        let mut answer = String::new();
        for _ in 0..a.archive_runs {
            let t = Instant::now();
            let result = runtime.block_on(sql.query(q))?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            answer = arrow_csv_lines(&result.batches)?;
        }
        ms.sort_by(f64::total_cmp);
        ours.push((label, quantile(&ms, 0.5), answer));
    }
    drop(sql);
    engine.shutdown()?;

    let script = dir.path().join("duck.py");
    std::fs::write(&script, DUCK_SCRIPT)?;
    let queries_json =
        serde_json::to_string(&queries.iter().map(|(_, q)| q.as_str()).collect::<Vec<_>>())?;
    let out = Command::new(&python)
        .arg(&script)
        .arg(&root)
        .arg(a.archive_runs.to_string())
        .arg(&queries_json)
        .output()?;
    if !out.status.success() {
        bail!("duckdb: {}", String::from_utf8_lossy(&out.stderr));
    }
    let duck: Vec<(f64, Vec<String>)> = serde_json::from_slice(&out.stdout)?;
    println!(
        "DataFusion (vendflow SQL) vs DuckDB on the same files, median of {} runs:",
        a.archive_runs
    );
    for ((label, ms, answer), (duck_ms, duck_rows)) in ours.iter().zip(&duck) {
        let same = normalise(answer) == normalise(&duck_rows.join("\n"));
        println!(
            "  {label:<44} vendflow {ms:>8.1} ms   duckdb {duck_ms:>8.1} ms   ratio {:>5.2}   answers {}",
            ms / duck_ms,
            if same { "equal" } else { "DIFFER" }
        );
        if !same {
            println!(
                "    vendflow:\n{answer}\n    duckdb:\n{}",
                duck_rows.join("\n")
            );
        }
    }
    Ok(())
}

/// Rows as comma-separated text, numbers without trailing zeros, so both engines compare.
fn normalise(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.split(',')
                .map(|f| {
                    let f = f.trim();
                    if f.contains('.') && f.parse::<f64>().is_ok() {
                        f.trim_end_matches('0').trim_end_matches('.').to_owned()
                    } else {
                        f.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|l| !l.is_empty())
        .collect()
}

fn arrow_csv_lines(batches: &[arrow_array::RecordBatch]) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow_csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut buf);
        for b in batches {
            w.write(b)?;
        }
    }
    Ok(String::from_utf8(buf)?)
}

const DUCK_SCRIPT: &str = r#"
import json, statistics, sys, time
import duckdb
root, runs, queries = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{root}/events/*/*/*.parquet', hive_partitioning = true, hive_types = {{'date': DATE, 'hour': INTEGER}})")
out = []
for q in queries:
    times, rows = [], []
    for _ in range(runs):
        t = time.perf_counter()
        rows = con.execute(q).fetchall()
        times.append((time.perf_counter() - t) * 1000)
    out.append([statistics.median(times), [",".join("" if v is None else str(v) for v in r) for r in rows]])
print(json.dumps(out))
"#;

fn main() -> anyhow::Result<()> {
    let args = args()?;
    if args.live {
        live(&release_bin()?, &args)?;
    }
    if args.archive {
        archive(&args)?;
    }
    Ok(())
}
