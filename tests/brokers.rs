//! The production path on real brokers: simulated machines → Mosquitto → `vendflow bridge` →
//! tansu (Kafka protocol) → `vendflow run`. Faults, each followed by an exactly-once check of
//! revenue against a naive oracle over everything the machines sent:
//! 1. `kill -9` of the bridge in the middle of the stream, then a restart on the same session;
//! 2. the bridge down while machines keep publishing, Mosquitto restarted meanwhile (its
//!    persistence keeps the bridge's queued messages), then the bridge back;
//! 3. `kill -9` of the engine while it archives a stream, then a restart that rebuilds every
//!    view from the Kafka log and completes the Parquet archive: no row twice, none missing
//!    (DuckDB over `vendflow export` equals vendflow's SQL), no temporary file visible; `psql`
//!    queries live views, a join and the archive, and is refused a DROP.
//!
//! Plus: the bridge started before Kafka waits for it; a forged envelope (one machine publishing
//! as another) is refused; inventory equals a batch replay of everything sent; and every message
//! a bridge took was acknowledged to Mosquitto (nothing left in its inflight window). Needs
//! `mosquitto`, `mosquitto_pub` and `tansu` (tests/run-all.sh installs them); under `CI=true` a
//! missing one fails the test.
//!
//! Post-mortem: `VENDFLOW_KEEP=1` keeps the logs and views; `VENDFLOW_HOLD=600` keeps the brokers
//! up for 600 s after a mismatch, so the log can be read with
//! `cargo run -p vendflow-ingest --example dump_topic -- <kafka> machine-telemetry 3`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use vendflow_tests::{
    Daemon, Table, TansuStorage, fixed, free_port, require_mosquitto, require_program,
    require_tansu, start_mosquitto, start_mosquitto_tls, start_tansu, start_tansu_with, tail,
    vendflow, vendflow_bin,
};

type Revenue = BTreeMap<(String, String), (i64, i64, i64)>;

/// Revenue per (machine, day) over distinct sale lines (machine, transaction, slot), first
/// delivery wins: the definition, computed the obvious way.
fn oracle(files: &[&Path]) -> anyhow::Result<Revenue> {
    // Each sale line's contents by identity: a re-delivery must repeat them, or which copy
    // counts would depend on the order the engine reads them in (live and replay differ).
    let mut seen: HashMap<(String, String, i64), (i64, i64)> = HashMap::new();
    let mut revenue = Revenue::new();
    for file in files {
        for line in std::fs::read_to_string(file)?.lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["type"] != "sale" {
                continue;
            }
            let machine = v["machineId"].as_str().context("machineId")?.to_owned();
            let p = &v["payload"];
            let txn = p["transactionId"]
                .as_str()
                .context("transactionId")?
                .to_owned();
            let slot = p["slotNumber"].as_i64().context("slotNumber")?;
            let cents = fixed(&p["amount"].to_string(), 2)?;
            let units = p["quantity"].as_i64().unwrap_or(1);
            match seen.entry((machine.clone(), txn, slot)) {
                std::collections::hash_map::Entry::Occupied(first) => {
                    ensure!(
                        *first.get() == (cents, units),
                        "the machines sent two different sale lines as {:?} ({:?} then {:?}, in {})",
                        first.key(),
                        first.get(),
                        (cents, units),
                        file.display()
                    );
                    continue;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((cents, units));
                }
            }
            let ts = v["timestamp"].as_i64().context("timestamp")?;
            let day = chrono::DateTime::from_timestamp_millis(ts)
                .context("timestamp")?
                .format("%Y-%m-%d")
                .to_string();
            let e = revenue.entry((machine, day)).or_default();
            e.0 += cents;
            e.1 += units;
            e.2 += 1;
        }
    }
    Ok(revenue)
}

fn engine_revenue(out: &Path) -> anyhow::Result<Revenue> {
    let table = Table::read(&out.join("revenue_machine_daily.csv"))?;
    let mut revenue = Revenue::new();
    for r in table.records() {
        revenue.insert(
            (r["machine_id"].to_owned(), r["day"].to_owned()),
            (
                fixed(r["revenue"], 2)?,
                r["units"].parse()?,
                r["lines"].parse()?,
            ),
        );
    }
    Ok(revenue)
}

/// Waits until the engine's revenue equals `expected`; on timeout, fails with the difference.
fn wait_for_revenue(
    out: &Path,
    expected: &Revenue,
    engine: &Daemon,
    kafka: &str,
    what: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = Revenue::new();
    while started.elapsed() < Duration::from_secs(120) {
        if let Ok(got) = engine_revenue(out) {
            if &got == expected {
                eprintln!(
                    "{what}: revenue matches the oracle after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            last = got;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| last.get(*k) != Some(*v))
        .take(5)
        .collect();
    let extra: Vec<_> = last
        .iter()
        .filter(|(k, v)| expected.get(*k) != Some(*v))
        .take(5)
        .collect();
    // What the bridges refused or complained about, to tell a refusal from a loss.
    let bridges: String = (1..=3)
        .filter_map(|i| std::fs::read_to_string(out.parent()?.join(format!("bridge-{i}.log"))).ok())
        .flat_map(|log| {
            log.lines()
                .filter(|l| l.contains("refused") || l.contains("WARN") || l.contains("ERROR"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(secs) = std::env::var("VENDFLOW_HOLD")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("{what}: mismatch; holding the brokers for {secs} s (kafka {kafka})");
        std::thread::sleep(Duration::from_secs(secs));
    }
    bail!(
        "{what}: revenue never matched the oracle ({} vs {} machine-days)\nexpected but not so: {missing:?}\nengine has instead: {extra:?}\nengine log tail:\n{}\nbridge warnings:\n{}",
        expected.len(),
        last.len(),
        tail(&engine.output()),
        tail(&bridges)
    )
}

fn wait_for_log(daemon: &Daemon, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    daemon.wait_for_line(needle, timeout).map(|_| ())
}

/// `vendflow publish` of 20 controllers (the machines' own code; each forgets an event on the
/// broker's PUBACK), recording what they sent; `outage` scripts one machine's (`N:H`).
fn publish(
    mqtt: &str,
    hours: &str,
    speed: Option<&str>,
    outage: Option<&str>,
    record: &Path,
) -> anyhow::Result<std::process::Child> {
    let mut args = vec![
        "publish".to_owned(),
        "--mqtt".into(),
        mqtt.into(),
        "--machines".into(),
        "20".into(),
        "--hours".into(),
        hours.into(),
        "--seed".into(),
        "11".into(),
        "--record".into(),
        record.display().to_string(),
    ];
    if let Some(s) = speed {
        args.extend(["--speed".into(), s.into()]);
    }
    if let Some(o) = outage {
        args.extend(["--outage".into(), o.into()]);
    }
    Ok(Command::new(vendflow_bin()?)
        .args(&args)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()?)
}

/// `vendflow publish` of 20 controllers (the machines' own code) with `--receipts`: each event
/// kept in a machine's outbox until the bridge's delivery receipt for it.
fn controllers_with_receipts(
    mqtt: &str,
    hours: &str,
    speed: &str,
    record: &Path,
) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(vendflow_bin()?)
        .args([
            "publish",
            "--mqtt",
            mqtt,
            "--machines",
            "20",
            "--hours",
            hours,
        ])
        .args(["--seed", "11", "--speed", speed, "--receipts"])
        // A resend after a broker's kill comes seconds later, hours of the machines' time at
        // this speed: they keep longer than the product's 24 h (this test is about nothing
        // being lost, not about the keep); a tenth of the tries jam (refunds), and a fifth of
        // the machines lose power in the middle of a write.
        .args(["--keep-hours", "72", "--jam-share", "0.1"])
        .args(["--power-cut-share", "0.2", "--record"])
        .arg(record)
        .env("RUST_BACKTRACE", "0")
        // Its resends, in the test's output.
        .env("RUST_LOG", "vendflow_firmware=info")
        .stdout(std::process::Stdio::piped())
        .spawn()?)
}

/// The public keys of `machines` simulated machines of seed 11 (the fleet [`publish`] runs), as
/// the bridge reads them, written to `d/credentials.jsonl`: its path.
fn fleet_credentials(d: &Path, mqtt: &str, machines: &str) -> anyhow::Result<String> {
    let creds = d.join("credentials.jsonl").display().to_string();
    vendflow(&[
        "publish",
        "--mqtt",
        mqtt,
        "--machines",
        machines,
        "--seed",
        "11",
        "--credentials-out",
        &creds,
        "--dry-run",
    ])?;
    Ok(creds)
}

/// The test's directory: removed when the returned guard drops, or, with VENDFLOW_KEEP=1,
/// kept (the brokers' and processes' logs and the views, for a post-mortem).
fn test_dir() -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    let dir = tempfile::tempdir()?;
    if std::env::var_os("VENDFLOW_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("keeping {}", kept.display());
        return Ok((None, kept));
    }
    let path = dir.path().to_owned();
    Ok((Some(dir), path))
}

/// Waits for a publisher; returns how many envelopes the broker acknowledged.
fn finish(publisher: std::process::Child) -> anyhow::Result<u64> {
    let out = publisher.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprint!("{text}");
    if !out.status.success() {
        bail!("the publisher failed");
    }
    text.split_once("published ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .context("the publisher did not say how many envelopes it published")?
        .parse()
        .context("envelope count")
}

/// `vendflow run` on `kafka`, writing its views into `out` twice a second.
/// Where an engine serves: its Parquet archive, HTTP and Postgres-protocol addresses.
struct Serving {
    archive: PathBuf,
    http: String,
    pg_port: u16,
}

fn start_engine(
    bin: &Path,
    kafka: &str,
    out: &Path,
    serving: &Serving,
    log: &Path,
) -> anyhow::Result<Daemon> {
    // Where `POST /api/machines` stores the public keys of machines registered over the API.
    let credentials = out.with_file_name("engine-credentials.jsonl");
    let credentials = credentials.display().to_string();
    let out = out.display().to_string();
    let archive = serving.archive.display().to_string();
    let pg = format!("127.0.0.1:{}", serving.pg_port);
    Daemon::spawn(
        "engine",
        bin,
        &[
            "run",
            "--insecure-open-api",
            "--credentials",
            &credentials,
            "--kafka",
            kafka,
            "--out",
            &out,
            "--every",
            "0.5",
            "--partitions",
            "3",
            "--archive",
            &archive,
            "--archive-flush-secs",
            "0.3",
            "--archive-snapshot-secs",
            "1",
            "--archive-compact-files",
            "6",
            "--http",
            &serving.http,
            "--pg",
            &pg,
        ],
        log,
    )
}

/// The bridge's counter or gauge `vendflow_bridge_<name>` from its `GET /metrics`.
fn bridge_metric(curl: &Curl, http: &str, name: &str) -> anyhow::Result<u64> {
    let out = curl
        .command()
        .args(["-s", "--max-time", "5", &format!("https://{http}/metrics")])
        .output()?;
    let metrics = String::from_utf8_lossy(&out.stdout);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("vendflow_bridge_{name} ")))
        .with_context(|| format!("no {name} in the bridge's /metrics:\n{metrics}"))?
        .trim()
        .parse()
        .with_context(|| name.to_owned())
}

/// Polls `condition` every 100 ms until it holds; fails with `what` after `limit`.
fn wait_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        // A condition that cannot be read yet (a daemon still starting) is not met yet.
        if condition().unwrap_or(false) {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{what}: not so after {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Messages the engine has consumed so far, from its status file.
fn engine_messages(out: &Path) -> anyhow::Result<u64> {
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("status.json"))?)?;
    status["messages"]
        .as_u64()
        .context("status.json has no message count")
}

/// Waits until the archive has committed every telemetry message the engine consumed.
fn wait_archived(out: &Path, engine: &Daemon) -> anyhow::Result<()> {
    wait_archived_by(&out.join("status.json"), engine)
}

/// [`wait_archived`] for an engine writing its status into `status` (`--status FILE`).
fn wait_archived_by(status: &Path, engine: &Daemon) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(text) = std::fs::read_to_string(status) {
            let status: serde_json::Value = serde_json::from_str(&text)?;
            let positions = status["positions"].as_str().unwrap_or_default();
            let telemetry: Vec<(String, i64)> = positions
                .split_whitespace()
                .filter_map(|p| {
                    let (stream, next) = p.split_once('=')?;
                    stream
                        .starts_with("machine-telemetry/")
                        .then(|| Some((stream.replace('/', "."), next.parse().ok()?)))?
                })
                .collect();
            let archived = &status["archived"];
            if !telemetry.is_empty()
                && telemetry
                    .iter()
                    .all(|(s, next)| archived[s].as_i64() == Some(*next))
            {
                return Ok(());
            }
            last = text;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!(
        "the archive never caught up with the engine: {last}\n{}",
        tail(&engine.output())
    )
}

/// `POST /sql` answered as CSV.
fn sql_csv(curl: &Path, http: &str, sql: &str, to: &Path) -> anyhow::Result<()> {
    let out = Command::new(curl)
        .args(["-s", "-f", "-H", "Accept: text/csv", "--data-binary", sql])
        .arg(format!("http://{http}/sql"))
        .output()?;
    if !out.status.success() {
        bail!(
            "POST /sql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(to, &out.stdout)?;
    Ok(())
}

/// `psql -c SQL` against the engine (`run --insecure-open-api`: no password).
fn psql(program: &Path, port: u16, sql: &str) -> anyhow::Result<(bool, String, String)> {
    vendflow_tests::psql(program, port, None, sql)
}

/// The REST API's registry writes on `run` go through `fleet-commands` into the engine (one
/// producer for the process, written from an HTTP handler): a machine registered over the API
/// gets its slots in `inventory`.
fn api_registers_through_kafka(
    psql_bin: &Path,
    curl: &Path,
    serving: &Serving,
) -> anyhow::Result<()> {
    let port = serving.pg_port;
    let post = |path: &str, body: &str| {
        vendflow_tests::curl_post(
            curl,
            &["--max-time", "20", "-H", "Content-Type: application/json"],
            body,
            &format!("http://{}{path}", serving.http),
        )
    };
    let (code, body) = post(
        "/api/locations",
        r#"{"locationId":"loc-api","clientId":"client_api","address":"1 Main St","lat":40.7,"lng":-74.0,"type":"office","region":"north"}"#,
    )?;
    assert_eq!(code, "201", "POST /api/locations on run: {body}");
    let (code, body) = post(
        "/api/machines",
        r#"{"serialNumber":"SN-API-1","model":"VX-30","locationId":"loc-api","slots":[{"slotNumber":1,"productId":"cola","maxCapacity":10,"price":2.50},{"slotNumber":2,"productId":"chips","maxCapacity":8,"price":1.75}]}"#,
    )?;
    assert_eq!(code, "201", "POST /api/machines on run: {body}");
    let created: serde_json::Value = serde_json::from_str(&body)?;
    let machine = created["machineId"]
        .as_str()
        .context("the new machine has no id")?
        .to_owned();
    wait_inventory_rows(psql_bin, port, &machine, "2")
        .context("the machine registered over the API never reached the engine's inventory")?;

    // Taken out of service: the delete is a tombstone on `fleet-commands`, which the engine's
    // consumer turns into the machine's retraction; then its location can go too.
    let delete = |path: &str| {
        vendflow_tests::curl_post(
            curl,
            &["--max-time", "20", "-X", "DELETE"],
            "",
            &format!("http://{}{path}", serving.http),
        )
    };
    let (code, body) = delete("/api/locations/loc-api")?;
    assert_eq!(code, "409", "a location with a machine stays: {body}");
    let (code, body) = delete(&format!("/api/machines/{machine}"))?;
    assert_eq!(code, "204", "DELETE /api/machines on run: {body}");
    wait_inventory_rows(psql_bin, port, &machine, "0")
        .context("the machine deleted over the API stayed in the engine's inventory")?;
    let (code, body) = delete("/api/locations/loc-api")?;
    assert_eq!(code, "204", "DELETE /api/locations on run: {body}");
    Ok(())
}

/// Waits (30 s at most) until `inventory` has `rows` rows of `machine` over psql.
fn wait_inventory_rows(
    psql_bin: &Path,
    port: u16,
    machine: &str,
    rows: &str,
) -> anyhow::Result<()> {
    let sql = format!("SELECT count(*) FROM inventory WHERE machine_id = '{machine}'");
    wait_until(
        &format!("{rows} inventory rows of {machine}"),
        Duration::from_secs(30),
        || {
            let (ok, out, err) = psql(psql_bin, port, &sql)?;
            ensure!(ok, "{err}");
            Ok(out == rows)
        },
    )
}

/// The analysts' side against a running engine: psql (a live view, a join of two views, the
/// Parquet archive, a refused DROP), then DuckDB over `vendflow export` equal to vendflow's SQL.
fn analyst_checks(
    psql_bin: &Path,
    curl: &Path,
    python: &Path,
    serving: &Serving,
    d: &Path,
) -> anyhow::Result<()> {
    let port = serving.pg_port;
    let (ok, out, err) = psql(psql_bin, port, "SELECT count(*) FROM inventory")?;
    assert!(ok, "psql SELECT on a live view failed: {err}");
    assert!(
        out.parse::<i64>()? > 0,
        "inventory is empty over psql: {out}"
    );
    let (ok, out, err) = psql(
        psql_bin,
        port,
        "SELECT count(*) FROM revenue_machine_daily r JOIN liveness l ON l.machine_id = r.machine_id",
    )?;
    assert!(ok, "psql join of two views failed: {err}");
    assert!(out.parse::<i64>()? > 0, "the join is empty: {out}");
    let (ok, out, err) = psql(
        psql_bin,
        port,
        "SELECT count(*) FROM events WHERE type = 'sale' AND date >= DATE '2000-01-01'",
    )?;
    assert!(ok, "psql over the Parquet archive failed: {err}");
    assert!(out.parse::<i64>()? > 0, "no sales in the archive: {out}");
    let (ok, _, err) = psql(
        psql_bin,
        port,
        "SELECT count(*) FROM revenue_by_location_day",
    )?;
    assert!(ok, "the ready view failed: {err}");
    let (ok, _, err) = psql(psql_bin, port, "DROP TABLE inventory")?;
    assert!(
        !ok && err.contains("read-only"),
        "DROP was not refused: {err}"
    );
    let (ok, _, err) = psql(psql_bin, port, "COPY inventory TO '/tmp/inventory.csv'")?;
    assert!(
        !ok && err.contains("read-only"),
        "COPY was not refused: {err}"
    );

    // The operators' view of the same engine: every part healthy, Kafka lag per partition.
    let get = |path: &str| -> anyhow::Result<String> {
        let out = Command::new(curl)
            .args([
                "-s",
                "--max-time",
                "10",
                &format!("http://{}{path}", serving.http),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let started = Instant::now();
    let health: serde_json::Value = loop {
        let h: serde_json::Value = serde_json::from_str(&get("/health")?)?;
        if h["components"]["kafka"]["lag"].is_number()
            || started.elapsed() > Duration::from_secs(20)
        {
            break h;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["components"]["kafka"]["status"], "ok", "{health}");
    assert_eq!(health["components"]["archive"]["status"], "ok", "{health}");
    let telemetry_partitions = health["components"]["kafka"]["partitions"]
        .as_array()
        .map_or(0, |ps| {
            ps.iter()
                .filter(|p| p["topic"] == "machine-telemetry")
                .count()
        });
    assert_eq!(telemetry_partitions, 3, "{health}");
    let metrics = get("/metrics")?;
    for metric in [
        "vendflow_source_messages_total{source=\"kafka\"}",
        "vendflow_source_lag_messages{source=\"kafka\",topic=\"machine-telemetry\",partition=\"2\"}",
        "vendflow_archive_files_written_total",
    ] {
        assert!(metrics.contains(metric), "{metric} missing:\n{metrics}");
    }

    // The data team's copy, checked by DuckDB against vendflow's own answers.
    let export = d.join("export");
    let archive = serving.archive.display().to_string();
    vendflow(&[
        "export",
        "--archive",
        &archive,
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--out",
        &export.display().to_string(),
    ])?;
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("manifest.json"))?)?;
    assert!(
        manifest["rows"]["events"].as_u64().unwrap_or(0) > 0,
        "the manifest counts no events: {manifest}"
    );
    let (revenue, windows) = (d.join("sql-revenue.csv"), d.join("sql-windows.csv"));
    sql_csv(
        curl,
        &serving.http,
        "SELECT machine_id, CAST(day AS VARCHAR) AS day, revenue FROM revenue_by_machine_day",
        &revenue,
    )?;
    sql_csv(
        curl,
        &serving.http,
        "SELECT machine_id, CAST(window_start AS BIGINT) AS window_ms, max_temperature FROM anomaly_windows",
        &windows,
    )?;
    let script = vendflow_tests::root().join("tests/archive_check.py");
    let out = vendflow_tests::run_python(python, &[&script, &export, &revenue, &windows])?;
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// Nothing half-written is visible in the archive, and nothing a killed writer left half-written
/// survives its successor's recovery. The running engine writes its snapshots under hidden
/// `.tmp` names before renaming them, so a hidden temporary modified since `restarted` is a write
/// in progress, not a leftover.
fn assert_no_temporaries(archive: &Path, restarted: std::time::SystemTime) -> anyhow::Result<()> {
    let mut stack = vec![archive.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "tmp") {
                continue;
            }
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            assert!(
                hidden,
                "a temporary file is visible in the archive: {}",
                path.display()
            );
            // Gone since the listing: it was renamed or removed, as it should be.
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            assert!(
                modified >= restarted,
                "a temporary file the killed engine left is still in the archive: {}",
                path.display()
            );
        }
    }
    Ok(())
}

/// `curl` trusting the test's own certificate authority (the bridge serves HTTPS).
struct Curl {
    program: PathBuf,
    cacert: PathBuf,
}

impl Curl {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("--cacert").arg(&self.cacert);
        c
    }
}

/// POSTs `body` to the bridge's telemetry endpoint; returns (status, response body).
fn post(
    curl: &Curl,
    http: &str,
    machine: &str,
    token: &str,
    body: &Path,
) -> anyhow::Result<(u16, String)> {
    let out = curl
        .command()
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("X-Machine-Id: {machine}"),
            "-H",
            &format!("X-Machine-Token: {token}"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("https://{http}/api/telemetry"),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

fn http_checks(curl: &Curl, http: &str, dir: &Path, record: &Path) -> anyhow::Result<()> {
    use vendflow_protocol::auth::{MachineKey, sign_envelope};
    use vendflow_protocol::{Cents, Envelope, Event, EventKind, MachineId, Sale, Timestamp};
    let secret = vendflow_firmware::mqtt::simulated_secret(11, "mach_00003");
    let now = Timestamp::now().0;
    let machine_id = MachineId::parse("mach_00003").map_err(anyhow::Error::msg)?;
    let sale = Event {
        machine_id: machine_id.clone(),
        timestamp: Timestamp(now - 60_000),
        seq: None,
        kind: EventKind::Sale(Sale {
            slot_number: 1,
            product_id: "cola".into(),
            amount: Cents(325),
            quantity: 1,
            payment_method: "card".into(),
            transaction_id: "txn_over_http_1".into(),
            offline: false,
        }),
    };
    std::fs::write(record, sale.to_json_line() + "\n")?;
    let envelope = Envelope {
        machine_id,
        events: vec![sale],
    };
    let key = MachineKey::from_secret(&secret);
    let good = dir.join("http-good.json");
    std::fs::write(&good, sign_envelope(&envelope, &key, now, "http-1"))?;
    let (status, body) = post(curl, http, "mach_00003", &secret, &good)?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ack\":true"), "{body}");

    let (status, body) = post(curl, http, "mach_00003", "not-the-secret", &good)?;
    assert_eq!(status, 401, "wrong token: {body}");
    assert!(
        body.contains("\"success\":false") && body.contains("requestId"),
        "{body}"
    );

    let other = vendflow_firmware::mqtt::simulated_secret(11, "mach_00004");
    let (status, body) = post(curl, http, "mach_00004", &other, &good)?;
    assert_eq!(
        status, 403,
        "machine 4 sending machine 3's envelope: {body}"
    );
    assert!(body.contains("MACHINE_MISMATCH"), "{body}");

    let malformed = dir.join("http-malformed.json");
    std::fs::write(&malformed, "{\"machineId\": \"mach_00003\", \"events\": [")?;
    let (status, body) = post(curl, http, "mach_00003", &secret, &malformed)?;
    assert_eq!(status, 400, "malformed JSON: {body}");
    assert!(body.contains("not JSON"), "{body}");

    let huge = dir.join("http-huge.json");
    std::fs::write(&huge, vec![b' '; 300 * 1024])?;
    let (status, body) = post(curl, http, "mach_00003", &secret, &huge)?;
    assert_eq!(status, 413, "oversized body: {body}");
    assert!(body.contains("PAYLOAD_TOO_LARGE"), "{body}");
    Ok(())
}

/// Sale re-deliveries dropped for `machine` so far (the engine's `sale_duplicates` view).
fn duplicates_of(out: &Path, machine: &str) -> anyhow::Result<i64> {
    let table = Table::read(&out.join("sale_duplicates.csv"))?;
    let mut n = 0;
    for r in table.records() {
        if r["machine_id"] == machine {
            n += r["duplicates"].parse::<i64>()?;
        }
    }
    Ok(n)
}

/// Sales made 3, 10 and 30 days ago (a machine offline that long), first delivered now over
/// HTTPS, then delivered again over MQTT: through the bridge and Kafka, each must count once, in
/// the day it was made (past the engine's 48 h dedup memory, so the on-disk ledger decides).
/// Records what was sent to `record` (both deliveries) for the revenue oracle.
#[allow(clippy::too_many_arguments)]
fn late_sales_checks(
    curl: &Curl,
    http: &str,
    mosquitto_pub: &Path,
    mqtt_port: u16,
    dir: &Path,
    record: &Path,
    out: &Path,
    engine: &Daemon,
) -> anyhow::Result<()> {
    use vendflow_protocol::auth::{MachineKey, sign_envelope};
    use vendflow_protocol::{Cents, Envelope, Event, EventKind, MachineId, Sale, Timestamp};
    const MACHINE: &str = "mach_00005";
    const DAY: i64 = 86_400_000;
    let before = duplicates_of(out, MACHINE)?;
    let secret = vendflow_firmware::mqtt::simulated_secret(11, MACHINE);
    let key = MachineKey::from_secret(&secret);
    let machine_id = MachineId::parse(MACHINE).map_err(anyhow::Error::msg)?;
    let now = Timestamp::now().0;
    let mut sent = String::new();
    for (i, days) in [3_i64, 10, 30].into_iter().enumerate() {
        let sale = Event {
            machine_id: machine_id.clone(),
            timestamp: Timestamp(now - days * DAY - 3_600_000),
            seq: None,
            kind: EventKind::Sale(Sale {
                slot_number: 148 - i as u32,
                product_id: "late".into(),
                amount: Cents(1_000 + 100 * i as i64),
                quantity: 2,
                payment_method: "card".into(),
                transaction_id: format!("late-{days}d").into(),
                offline: false,
            }),
        };
        let envelope = Envelope {
            machine_id: machine_id.clone(),
            events: vec![sale.clone()],
        };
        let first = dir.join(format!("late-{days}d.json"));
        std::fs::write(
            &first,
            sign_envelope(&envelope, &key, now, &format!("late-{days}-1")),
        )?;
        let (status, body) = post(curl, http, MACHINE, &secret, &first)?;
        assert_eq!(status, 200, "{days} days late over HTTPS: {body}");
        let again = sign_envelope(&envelope, &key, now, &format!("late-{days}-2"));
        mqtt_pub(
            mosquitto_pub,
            mqtt_port,
            &format!("machines/{MACHINE}/telemetry"),
            &again,
        )?;
        sent.push_str(&(sale.to_json_line() + "\n"));
        sent.push_str(&(sale.to_json_line() + "\n"));
    }
    std::fs::write(record, sent)?;
    wait_until(
        "the re-deliveries of the late sales are dropped as duplicates",
        Duration::from_secs(60),
        || Ok(duplicates_of(out, MACHINE)? >= before + 3),
    )
    .with_context(|| tail(&engine.output()))?;
    assert_eq!(duplicates_of(out, MACHINE)?, before + 3);
    Ok(())
}

/// A machine publishes its DEX audit over MQTT (a `dex` event): through the bridge and Kafka it
/// lands in the engine's `dex_audits` view, one row per column.
fn dex_over_mqtt(
    mosquitto_pub: &Path,
    mqtt_port: u16,
    out: &Path,
    engine: &Daemon,
) -> anyhow::Result<()> {
    use vendflow_protocol::auth::{MachineKey, sign_envelope};
    use vendflow_protocol::{Envelope, Event, EventKind, MachineId, Timestamp};
    const MACHINE: &str = "mach_00006";
    let audit = vendflow_protocol::dex::parse(
        "DXS*RST1*VA*V0/6*1\r\nST*001*0001\r\nID1*SN-6*VX\r\nPA1*1*250\r\nPA2*40*10000\r\nPA1*2*175\r\nPA2*12*2100\r\nSE*7*0001\r\nDXE*1*1\r\n",
    )
    .map_err(anyhow::Error::msg)?;
    let key = MachineKey::from_secret(&vendflow_firmware::mqtt::simulated_secret(11, MACHINE));
    let machine_id = MachineId::parse(MACHINE).map_err(anyhow::Error::msg)?;
    let now = Timestamp::now();
    let envelope = Envelope {
        machine_id: machine_id.clone(),
        events: vec![Event {
            machine_id,
            timestamp: now,
            seq: None,
            kind: EventKind::Dex(Box::new(audit)),
        }],
    };
    mqtt_pub(
        mosquitto_pub,
        mqtt_port,
        &format!("machines/{MACHINE}/telemetry"),
        &sign_envelope(&envelope, &key, now.0, "dex-1"),
    )?;
    wait_until(
        "the audit published over MQTT is in dex_audits",
        Duration::from_secs(60),
        || {
            let Ok(table) = Table::read(&out.join("dex_audits.csv")) else {
                return Ok(false);
            };
            Ok(table
                .records()
                .iter()
                .filter(|r| r["machine_id"] == MACHINE)
                .count()
                == 2)
        },
    )
    .with_context(|| tail(&engine.output()))
}

fn sorted_rows(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let mut rows = Table::read(path)?.rows;
    rows.sort();
    Ok(rows)
}

/// Publishes `payload` (or the file `@path`) on `topic` with QoS 1 through `mosquitto_pub`.
fn mqtt_pub(program: &Path, port: u16, topic: &str, payload: &str) -> anyhow::Result<()> {
    let port = port.to_string();
    let mut command = Command::new(program);
    command.args(["-h", "127.0.0.1", "-p", &port, "-q", "1", "-t", topic]);
    match payload.strip_prefix('@') {
        Some(file) => command.args(["-f", file]),
        None => command.args(["-m", payload]),
    };
    if !command.status()?.success() {
        bail!("mosquitto_pub on {topic} failed");
    }
    Ok(())
}

/// Publishes one of each kind of bad input and waits until the engine's `errors` view holds
/// every one, with where it came in and why.
fn bad_input(
    mosquitto_pub: &Path,
    port: u16,
    dir: &Path,
    out: &Path,
    engine: &Daemon,
) -> anyhow::Result<()> {
    use vendflow_protocol::auth::{MachineKey, sign_raw};
    let now = vendflow_protocol::Timestamp::now().0;
    let key = |machine: &str| {
        MachineKey::from_secret(&vendflow_firmware::mqtt::simulated_secret(11, machine))
    };
    let topic = |machine: &str| format!("machines/{machine}/telemetry");
    let heartbeat = format!(r#"[{{"type":"heartbeat","timestamp":{now},"payload":{{}}}}]"#);
    let wrong_types = format!(
        r#"[{{"type":"sale","timestamp":{now},"payload":{{"slotNumber":"one","amount":"lots","transactionId":7}}}}]"#
    );
    let big = dir.join("oversized.json");
    std::fs::write(&big, vec![b' '; 300 * 1024])?;
    let fresh = sign_raw(
        "mach_00005",
        &heartbeat,
        &key("mach_00005"),
        now,
        "bad-input-5",
    );
    let other = format!(
        r#"[{{"type":"heartbeat","timestamp":{},"payload":{{}}}}]"#,
        now - 1
    );
    let replayed = sign_raw("mach_00005", &other, &key("mach_00005"), now, "bad-input-5");
    let cases: Vec<(String, String, &str)> = vec![
        // A machine publishing as another.
        (
            topic("mach_00001"),
            r#"{"machineId":"mach_00002","sentAt":1,"nonce":"x","events":[],"signature":"00"}"#
                .into(),
            "machine_mismatch",
        ),
        (
            topic("mach_00001"),
            r#"{"machineId": "mach_00001", "events": ["#.into(),
            "malformed",
        ),
        (
            topic("mach_99999"),
            sign_raw("mach_99999", &heartbeat, &key("mach_99999"), now, "n-1"),
            "unknown_machine",
        ),
        (
            topic("mach_00003"),
            sign_raw("mach_00003", &heartbeat, &key("mach_00004"), now, "n-2"),
            "bad_signature",
        ),
        // Captured two hours ago and played back.
        (
            topic("mach_00004"),
            sign_raw(
                "mach_00004",
                &heartbeat,
                &key("mach_00004"),
                now - 2 * 3_600_000,
                "n-3",
            ),
            "stale",
        ),
        (
            topic("mach_00006"),
            format!("@{}", big.display()),
            "too_large",
        ),
        // Signed correctly, so the bridge forwards it; the engine refuses the sale's fields.
        (
            topic("mach_00002"),
            sign_raw("mach_00002", &wrong_types, &key("mach_00002"), now, "n-4"),
            "schema",
        ),
        // Forwarded once, then the same bytes again (a machine sending again what it has no
        // delivery receipt for): acknowledged, not forwarded again, not an error.
        (topic("mach_00005"), fresh.clone(), ""),
        (topic("mach_00005"), fresh, ""),
        // Its nonce again on other content: a replay, refused.
        (topic("mach_00005"), replayed, "replay"),
    ];
    for (topic, payload, _) in &cases {
        mqtt_pub(mosquitto_pub, port, topic, payload)?;
        // One at a time, so the replay comes after its original was forwarded.
        std::thread::sleep(Duration::from_millis(300));
    }
    let expected: Vec<(String, &str)> = cases
        .iter()
        .filter(|(_, _, kind)| !kind.is_empty())
        .map(|(topic, _, kind)| {
            let source = if *kind == "schema" {
                "kafka:machine-telemetry/".to_owned()
            } else {
                format!("mqtt:{topic}")
            };
            (source, *kind)
        })
        .collect();
    let started = Instant::now();
    let mut missing = expected.clone();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(table) = Table::read(&out.join("errors.csv")) {
            let records = table.records();
            missing = expected
                .iter()
                .filter(|(source, kind)| {
                    !records.iter().any(|r| {
                        r["source"].starts_with(source.as_str())
                            && r["kind"] == *kind
                            && !r["message"].is_empty()
                    })
                })
                .cloned()
                .collect();
            if missing.is_empty() {
                // The retransmission came before the replay: by now it would be there.
                let retransmitted = records
                    .iter()
                    .filter(|r| {
                        r["source"].starts_with(&format!("mqtt:{}", topic("mach_00005")))
                            && r["kind"] != "replay"
                    })
                    .count();
                ensure!(retransmitted == 0, "a retransmission is in the errors view");
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "bad input not in the engine's errors view: {missing:?}\nengine log:\n{}",
        tail(&engine.output())
    )
}

/// The `commands` view's (status, reason) of `command_id`, if it is there.
fn command_status(out: &Path, command_id: &str) -> Option<(String, String)> {
    let table = Table::read(&out.join("commands.csv")).ok()?;
    table
        .records()
        .iter()
        .find(|r| r["command_id"] == command_id)
        .map(|r| (r["status"].to_owned(), r["reason"].to_owned()))
}

fn wait_for_command(
    out: &Path,
    command_id: &str,
    status: &str,
    engine: &Daemon,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if command_status(out, command_id).is_some_and(|(s, _)| s == status) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!(
        "command {command_id} never became {status:?} (it is {:?})\nengine log:\n{}",
        command_status(out, command_id),
        tail(&engine.output())
    )
}

/// A signed envelope of one event of `machine` (a simulated machine of seed 11), in a file.
fn http_envelope(
    dir: &Path,
    machine: &str,
    kind: vendflow_protocol::EventKind,
    nonce: &str,
) -> anyhow::Result<PathBuf> {
    use vendflow_protocol::auth::{MachineKey, sign_envelope};
    use vendflow_protocol::{Envelope, Event, MachineId};
    let key = MachineKey::from_secret(&vendflow_firmware::mqtt::simulated_secret(11, machine));
    let machine = MachineId::parse(machine).map_err(anyhow::Error::msg)?;
    let now = vendflow_protocol::Timestamp::now();
    let body = sign_envelope(
        &Envelope {
            machine_id: machine.clone(),
            events: vec![Event {
                machine_id: machine,
                timestamp: now,
                seq: None,
                kind,
            }],
        },
        &key,
        now.0,
        nonce,
    );
    let path = dir.join(format!("{nonce}.json"));
    std::fs::write(&path, body)?;
    Ok(path)
}

/// Sends heartbeats over HTTPS as `machine` until the answer offers `command_id`; returns it.
fn wait_offered(
    curl: &Curl,
    http: &str,
    dir: &Path,
    machine: &str,
    command_id: &str,
) -> anyhow::Result<String> {
    let secret = vendflow_firmware::mqtt::simulated_secret(11, machine);
    let started = Instant::now();
    loop {
        let nonce = format!("poll-{machine}-{}", vendflow_protocol::Timestamp::now().0);
        let heartbeat = http_envelope(
            dir,
            machine,
            vendflow_protocol::EventKind::Heartbeat(Default::default()),
            &nonce,
        )?;
        let (status, body) = post(curl, http, machine, &secret, &heartbeat)?;
        assert_eq!(status, 200, "{body}");
        if body.contains(command_id) {
            return Ok(body);
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{machine} on HTTP was never offered {command_id}: {body}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Commands back to machines: over MQTT to the simulated machines, which answer on
/// `machines/{id}/acks`, and to a machine polling over HTTP, which gets its pending commands in
/// the answer to its telemetry and acknowledges in its next envelope. Returns the publisher's
/// record of what it sent meanwhile.
#[allow(clippy::too_many_arguments)]
fn command_checks(
    curl: &Curl,
    http: &str,
    mqtt: &str,
    kafka: &str,
    dir: &Path,
    out: &Path,
    engine: &Daemon,
) -> anyhow::Result<PathBuf> {
    use vendflow_protocol::{AckStatus, CommandAck, EventKind};

    // A machine on HTTP: the command waits for it, and comes with the answer to its telemetry.
    vendflow(&[
        "command",
        "--kafka",
        kafka,
        "--machine",
        "mach_00003",
        "--type",
        "REBOOT",
        "--id",
        "cmd-http-1",
    ])?;
    let secret = vendflow_firmware::mqtt::simulated_secret(11, "mach_00003");
    let body = wait_offered(curl, http, dir, "mach_00003", "cmd-http-1")?;
    assert!(body.contains("\"type\":\"REBOOT\""), "{body}");
    wait_for_command(out, "cmd-http-1", "pending", engine)?;
    let ack = http_envelope(
        dir,
        "mach_00003",
        EventKind::CommandAck(CommandAck {
            command_id: "cmd-http-1".into(),
            status: AckStatus::Applied,
            reason: None,
        }),
        "ack-1",
    )?;
    let (status, body) = post(curl, http, "mach_00003", &secret, &ack)?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"commands\":[]"),
        "an answered command is no longer offered: {body}"
    );
    wait_for_command(out, "cmd-http-1", "applied", engine)?;

    // Machines on MQTT: controllers, each applying its commands and answering, while they
    // publish and a while after.
    let record = dir.join("sent-commands.jsonl");
    let log = dir.join("publish-commands.log");
    let publisher = Command::new(vendflow_bin()?)
        .args([
            "publish",
            "--mqtt",
            mqtt,
            "--machines",
            "20",
            "--hours",
            "1",
            "--speed",
            "3600",
            "--seed",
            "11",
            "--linger",
            "10",
            "--record",
        ])
        .arg(&record)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    // A new session of the simulated machines: commands count from their subscription.
    let started = Instant::now();
    while !std::fs::read_to_string(&log)?.contains("subscribed") {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the simulated machines never subscribed to their commands");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let update_price = |machine: &str, slot: &str, price: &str, id: &str| {
        vendflow(&[
            "command",
            "--kafka",
            kafka,
            "--machine",
            machine,
            "--type",
            "UPDATE_PRICE",
            "--slot",
            slot,
            "--price",
            price,
            "--id",
            id,
        ])
    };
    update_price("mach_00001", "1", "2.75", "cmd-mqtt-1")?;
    update_price("mach_00002", "99", "1.00", "cmd-mqtt-2")?;
    wait_for_command(out, "cmd-mqtt-1", "applied", engine)?;
    wait_for_command(out, "cmd-mqtt-2", "rejected", engine)?;
    let (_, reason) = command_status(out, "cmd-mqtt-2").unwrap_or_default();
    assert!(
        reason.contains("no slot 99"),
        "rejected without its reason: {reason:?}"
    );
    // A command that is not one is refused by the CLI with the reason, before it is sent.
    let bad = Command::new(vendflow_bin()?)
        .args([
            "command",
            "--kafka",
            kafka,
            "--machine",
            "mach_00001",
            "--type",
            "UPDATE_PRICE",
            "--slot",
            "1",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("UPDATE_PRICE needs newPrice"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    finish(publisher)?;
    Ok(record)
}

/// Sale lines of `machine` delivered at least an hour after events that happened later: the
/// sales it buffered while offline (`record` is in delivery order).
fn flushed_late(record: &Path, machine: &str) -> anyhow::Result<usize> {
    let mut newest = i64::MIN;
    let mut late = 0;
    for line in std::fs::read_to_string(record)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let ts = v["timestamp"].as_i64().context("timestamp")?;
        if v["type"] == "sale" && v["machineId"] == machine && ts < newest - 3_600_000 {
            late += 1;
        }
        newest = newest.max(ts);
    }
    Ok(late)
}

/// Waits until the engine knows `machines` registered machines (from `fleet-commands`) and
/// puts revenue at their locations.
fn wait_for_registry(out: &Path, machines: usize, engine: &Daemon) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut registered = 0;
    while started.elapsed() < Duration::from_secs(60) {
        registered = Table::read(&out.join("liveness.csv"))
            .map(|t| {
                t.records()
                    .iter()
                    .filter(|r| r["registered"] == "true")
                    .count()
            })
            .unwrap_or(0);
        let located = Table::read(&out.join("revenue_location_daily.csv"))
            .map(|t| !t.rows.is_empty())
            .unwrap_or(false);
        if registered == machines && located {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!(
        "the registry from fleet-commands never showed: {registered} of {machines} machines registered\n{}",
        tail(&engine.output())
    )
}

#[test]
fn machines_to_views_through_real_brokers_exactly_once_across_kills_and_restarts()
-> anyhow::Result<()> {
    let Some(mosquitto_bin) = require_mosquitto()? else {
        return Ok(());
    };
    let Some(mosquitto_pub) = require_program("mosquitto_pub", &[])? else {
        return Ok(());
    };
    let Some(curl) = require_program("curl", &[])? else {
        return Ok(());
    };
    let Some(openssl) = require_program("openssl", &[])? else {
        return Ok(());
    };
    let Some(tansu_bin) = require_tansu()? else {
        return Ok(());
    };
    let Some(psql_bin) = require_program("psql", &[])? else {
        return Ok(());
    };
    let Some(python) = vendflow_tests::python_with_duckdb()? else {
        return Ok(());
    };
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    let (mqtt_port, kafka_port) = (free_port()?, free_port()?);
    let mqtt = format!("127.0.0.1:{mqtt_port}");
    let kafka = format!("127.0.0.1:{kafka_port}");
    let mut mosquitto = start_mosquitto(&mosquitto_bin, d, mqtt_port)?;

    let creds = d.join("credentials.jsonl");
    let creds_text = creds.display().to_string();
    let registry_text = d.join("registry.jsonl").display().to_string();
    vendflow(&[
        "publish",
        "--mqtt",
        &mqtt,
        "--machines",
        "20",
        "--seed",
        "11",
        "--credentials-out",
        &creds_text,
        "--registry-out",
        &registry_text,
        "--dry-run",
    ])?;
    let bin = vendflow_bin()?;
    let http_port = free_port()?;
    let http = format!("127.0.0.1:{http_port}");
    // Telemetry over HTTPS, with a certificate of the test's own.
    let (cert, key) = vendflow_tests::self_signed(&openssl, d)?;
    let curl = Curl {
        program: curl,
        cacert: cert.clone(),
    };
    let (cert_text, key_text) = (cert.display().to_string(), key.display().to_string());
    let bridge_args = [
        "bridge",
        "--mqtt",
        &mqtt,
        "--kafka",
        &kafka,
        "--credentials",
        &creds_text,
        "--partitions",
        "3",
        "--http",
        &http,
        "--tls-cert",
        &cert_text,
        "--tls-key",
        &key_text,
    ];
    // The bridge starts before Kafka is up: it must wait and retry, not give up.
    let mut bridge = Daemon::spawn("bridge", &bin, &bridge_args, &d.join("bridge-1.log"))?;
    wait_for_log(&bridge, "unavailable", Duration::from_secs(30))?;
    let _tansu = start_tansu(&tansu_bin, d, kafka_port)?;
    // The broker keeps telemetry for the bridge's session only once it has subscribed.
    wait_for_log(&bridge, "subscribed", Duration::from_secs(30))?;
    let out1 = d.join("views-1");
    let serving = Serving {
        archive: d.join("archive"),
        http: format!("127.0.0.1:{}", free_port()?),
        pg_port: free_port()?,
    };
    let mut engine = start_engine(&bin, &kafka, &out1, &serving, &d.join("engine-1.log"))?;
    // The fleet's registry (locations, machines, leases) through fleet-commands.
    vendflow(&["registry", "load", &registry_text, "--kafka", &kafka])?;

    // 1. kill -9 the bridge mid-stream (12 simulated hours over about 6 s), restart it.
    let sent1 = d.join("sent-1.jsonl");
    let publisher = publish(&mqtt, "12", Some("7200"), Some("7:5"), &sent1)?;
    // Mid-stream: once the bridge has forwarded some of it to Kafka.
    wait_until(
        "the bridge forwards the stream",
        Duration::from_secs(30),
        || Ok(bridge_metric(&curl, &http, "forwarded_total")? >= 20),
    )?;
    bridge.kill();
    // Half a second with no bridge: machines keep publishing into Mosquitto's session.
    std::thread::sleep(Duration::from_millis(500));
    bridge = Daemon::spawn("bridge", &bin, &bridge_args, &d.join("bridge-2.log"))?;
    finish(publisher)?;
    wait_for_revenue(&out1, &oracle(&[&sent1])?, &engine, &kafka, "bridge killed")?;
    // Among it, machine 7's sales from five hours offline, flushed when its network came back:
    // they count in the days they were made (the oracle above is by event-time day).
    wait_for_registry(&out1, 20, &engine)?;
    let flushed = flushed_late(&sent1, "mach_00007")?;
    assert!(
        flushed > 0,
        "the offline machine flushed no buffered sales through the brokers"
    );

    // Telemetry over HTTP lands in the same log; every refusal has its status and reason.
    let sent_http = d.join("sent-http.jsonl");
    http_checks(&curl, &http, d, &sent_http)?;
    wait_for_revenue(
        &out1,
        &oracle(&[&sent1, &sent_http])?,
        &engine,
        &kafka,
        "http telemetry",
    )?;
    // Sales 3, 10 and 30 days late, each delivered twice: once in their own days.
    let sent_late = d.join("sent-late.jsonl");
    late_sales_checks(
        &curl,
        &http,
        &mosquitto_pub,
        mqtt_port,
        d,
        &sent_late,
        &out1,
        &engine,
    )?;
    wait_for_revenue(
        &out1,
        &oracle(&[&sent1, &sent_http, &sent_late])?,
        &engine,
        &kafka,
        "sales days late",
    )?;
    dex_over_mqtt(&mosquitto_pub, mqtt_port, &out1, &engine)?;

    // Bad input through the real broker: each refused with its reason and counted as an error
    // record of the engine; nothing else moves (the revenue checks below include none of it).
    bad_input(&mosquitto_pub, mqtt_port, d, &out1, &engine)?;
    // Refused, and (once the refusals are in Kafka) acknowledged to Mosquitto.
    wait_until(
        "the refusals are in Kafka and acknowledged",
        Duration::from_secs(30),
        || {
            Ok(bridge_metric(&curl, &http, "inflight")? == 0
                && bridge_metric(&curl, &http, "acks_waiting")? == 0)
        },
    )?;

    // Commands back to machines, and their acknowledgements as a view.
    let sent_commands = command_checks(&curl, &http, &mqtt, &kafka, d, &out1, &engine)?;

    // A command for a machine on HTTP, delivered by this bridge: the next one must offer it too.
    vendflow(&[
        "command",
        "--kafka",
        &kafka,
        "--machine",
        "mach_00004",
        "--type",
        "REBOOT",
        "--id",
        "cmd-http-2",
    ])?;
    wait_offered(&curl, &http, d, "mach_00004", "cmd-http-2")?;
    // Its delivery to MQTT acknowledged (and so its offset committed) before the bridge dies.
    wait_until(
        "the bridge's commands are acknowledged by MQTT",
        Duration::from_secs(30),
        || Ok(bridge_metric(&curl, &http, "commands_unacknowledged")? == 0),
    )?;

    // 2. Bridge down, machines keep publishing, Mosquitto restarts, bridge back.
    bridge.kill();
    let sent2 = d.join("sent-2.jsonl");
    let published2 = finish(publish(&mqtt, "2", None, None, &sent2)?)?;
    mosquitto.terminate()?;
    mosquitto = start_mosquitto(&mosquitto_bin, d, mqtt_port)?;
    bridge = Daemon::spawn("bridge", &bin, &bridge_args, &d.join("bridge-3.log"))?;
    let expected = oracle(&[&sent1, &sent_http, &sent_late, &sent_commands, &sent2])?;
    wait_offered(&curl, &http, d, "mach_00004", "cmd-http-2")
        .context("a restarted bridge no longer offers a pending command over HTTP")?;
    wait_for_revenue(&out1, &expected, &engine, &kafka, "mosquitto restarted")?;

    // 3. kill -9 the engine while a stream flows and it writes Parquet; a new one rebuilds every
    // view from the log and completes the archive, writing no row twice and skipping none.
    let sent3 = d.join("sent-3.jsonl");
    let before = engine_messages(&out1)?;
    let publisher = publish(&mqtt, "3", Some("3600"), None, &sent3)?;
    // Mid-stream: once the engine has consumed some of it.
    wait_until(
        "the engine consumes the stream",
        Duration::from_secs(30),
        || Ok(engine_messages(&out1)? >= before + 20),
    )?;
    engine.kill();
    let published3 = finish(publisher)?;
    let out2 = d.join("views-2");
    let restarted = std::time::SystemTime::now();
    engine = start_engine(&bin, &kafka, &out2, &serving, &d.join("engine-2.log"))?;
    let expected = oracle(&[
        &sent1,
        &sent_http,
        &sent_late,
        &sent_commands,
        &sent2,
        &sent3,
    ])?;
    wait_for_revenue(&out2, &expected, &engine, &kafka, "engine rebuilt")?;
    wait_for_registry(&out2, 20, &engine)?;
    wait_archived(&out2, &engine)?;
    assert_no_temporaries(&serving.archive, restarted)?;
    analyst_checks(&psql_bin, &curl.program, &python, &serving, d)?;

    // Inventory equals a batch replay of everything the machines sent.
    let all = d.join("sent-all.jsonl");
    std::fs::write(
        &all,
        std::fs::read_to_string(&sent1)?
            + &std::fs::read_to_string(&sent_http)?
            + &std::fs::read_to_string(&sent_late)?
            + &std::fs::read_to_string(&sent_commands)?
            + &std::fs::read_to_string(&sent2)?
            + &std::fs::read_to_string(&sent3)?,
    )?;
    let replayed = d.join("replayed");
    vendflow(&[
        "replay",
        "--registry",
        &registry_text,
        &all.display().to_string(),
        "--out",
        &replayed.display().to_string(),
    ])?;
    assert_eq!(
        sorted_rows(&out2.join("inventory.csv"))?,
        sorted_rows(&replayed.join("inventory.csv"))?,
        "live inventory differs from the replay"
    );
    // (After the comparison: the replay knows only the recorded registry.)
    api_registers_through_kafka(&psql_bin, &curl.program, &serving)?;

    // The forged envelope was refused by the bridge that saw it, with the reason.
    let logs: String = (1..=3)
        .map(|i| std::fs::read_to_string(d.join(format!("bridge-{i}.log"))).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("machine_mismatch"),
        "the forged envelope was not refused as machine_mismatch:\n{}",
        tail(&logs)
    );
    // Every message the bridges took was acknowledged to Mosquitto: the last bridge received
    // what was published while no bridge ran (and the stream of step 3), not one message more. (A dropped PUBACK
    // leaves its message in the broker's inflight window until the next reconnect, and enough
    // of them stall the subscription.)
    // Read from the bridge's own counters (`GET /metrics`, Prometheus text).
    let metric = |name: &str| bridge_metric(&curl, &http, name);
    assert_eq!(
        metric("received_total")?,
        published2 + published3,
        "the restarted bridge received more (or less) than was published while it was down and after"
    );
    assert_eq!(metric("forwarded_total")?, published2 + published3);
    // Every envelope it forwarded from MQTT was signed and is within the skew window: its
    // nonce is held, and the gauge says so. The window also holds the heartbeats posted over
    // HTTPS to this bridge while a machine polled for its command (the verifier is shared; one
    // every 300 ms until it is offered, 2,640 nonces for 2,639 envelopes in one run), far fewer
    // than a gauge counting each nonce twice would add.
    let mqtt_envelopes = published2 + published3;
    let nonces = metric("nonces")?;
    assert!(
        (mqtt_envelopes..mqtt_envelopes + mqtt_envelopes / 2).contains(&nonces),
        "the nonce window's gauge: {nonces} nonces for {mqtt_envelopes} envelopes from MQTT"
    );
    assert!(metric("nonce_bytes")? > 0);
    assert_eq!(metric("inflight")?, 0, "nothing waits for Kafka");
    assert_eq!(
        metric("acks_waiting")?,
        0,
        "no acknowledgement waits for MQTT"
    );
    bridge.terminate()?;
    drop(mosquitto);
    Ok(())
}

/// `vendflow run` on `kafka` with only its views (no archive, no SQL), into `out`.
fn start_plain_engine(bin: &Path, kafka: &str, out: &Path, log: &Path) -> anyhow::Result<Daemon> {
    let out = out.display().to_string();
    Daemon::spawn(
        "engine",
        bin,
        &[
            "run",
            "--insecure-open-api",
            "--kafka",
            kafka,
            "--out",
            &out,
            "--every",
            "0.5",
            "--partitions",
            "3",
            "--http",
            &format!("127.0.0.1:{}", free_port()?),
        ],
        log,
    )
}

/// Dropped re-deliveries per kind, over all machines (the engine's `event_duplicates` and
/// `sale_duplicates` views).
fn duplicates_by_kind(out: &Path) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut by_kind = BTreeMap::new();
    for r in Table::read(&out.join("event_duplicates.csv"))?.records() {
        *by_kind.entry(r["kind"].to_owned()).or_default() += r["duplicates"].parse::<i64>()?;
    }
    for r in Table::read(&out.join("sale_duplicates.csv"))?.records() {
        *by_kind.entry("sale".to_owned()).or_default() += r["duplicates"].parse::<i64>()?;
    }
    Ok(by_kind)
}

/// Both brokers `kill -9`ed while the fleet publishes, each restarted with its data: tansu on
/// its SQLite storage, Mosquitto from its persistence file. The fleet is 20 real controllers
/// (the machines' own code: carts, payments, jams and refunds, network and power cuts) whose
/// outboxes keep each event until the platform's delivery receipt (`publish --receipts`:
/// Mosquitto's PUBACK comes before it has written the message down, so a `kill -9` loses what it
/// had acknowledged and not yet handed on; the first version of this test lost ~4,000 of 58,000
/// envelopes that way). Every event reaches the views once: revenue equals the naive oracle
/// over everything the machines recorded, refunds equal theirs, inventory (sales and restocks)
/// equals a batch replay of it, no machine has a sequence gap, and a new engine that reads the
/// restarted tansu from offset 0 gets the same revenue (the log kept what it had acknowledged
/// before the kill).
#[test]
fn brokers_killed_with_kill_9_while_the_fleet_publishes_lose_nothing_and_count_nothing_twice()
-> anyhow::Result<()> {
    let Some([mosquitto_bin, curl, openssl, tansu_bin]) = tls_path_tools()? else {
        return Ok(());
    };
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    let vendflow_tests::Loopback {
        mqtt_port,
        kafka_port,
        mqtt,
        kafka,
        http,
        ..
    } = vendflow_tests::Loopback::new()?;
    let mut mosquitto = start_mosquitto(&mosquitto_bin, d, mqtt_port)?;
    let mut tansu = start_tansu_with(&tansu_bin, d, kafka_port, TansuStorage::Sqlite)?;
    let creds_text = fleet_credentials(d, &mqtt, "20")?;
    let bin = vendflow_bin()?;
    let (bridge, curl) =
        start_tls_bridge(&bin, d, &openssl, curl, [&mqtt, &kafka, &http], &creds_text)?;
    let out1 = d.join("views-1");
    let engine = start_plain_engine(&bin, &kafka, &out1, &d.join("engine-1.log"))?;

    // 12 simulated hours of 20 controllers over about 24 s, with heartbeats, sales, restocks,
    // refunds and errors.
    let sent = d.join("sent.jsonl");
    let publisher = controllers_with_receipts(&mqtt, "12", "1800", &sent)?;
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let forwarded = |n: u64| bridge_metric(&curl, &http, "forwarded_total").map(|f| f >= n);
    wait_until(
        "the bridge forwards the stream",
        Duration::from_secs(30),
        || forwarded(50),
    )?;

    // kill -9 tansu mid-stream; the bridge holds what Kafka has not acknowledged (and so has
    // not acknowledged it to Mosquitto) and produces it again to the restarted broker.
    tansu.kill();
    let at_kill = bridge_metric(&curl, &http, "forwarded_total")?;
    eprintln!("tansu killed with kill -9 after {at_kill} envelopes forwarded");
    std::thread::sleep(Duration::from_secs(1));
    tansu = start_tansu_with(&tansu_bin, d, kafka_port, TansuStorage::Sqlite)?;
    wait_until(
        "the bridge forwards again after tansu's restart",
        Duration::from_secs(60),
        || forwarded(at_kill + 50),
    )?;

    // kill -9 Mosquitto mid-stream, once it has saved every session (an autosave that began
    // a second or more after the machines connected); the machines publish again what it had
    // not acknowledged, the bridge's session comes back from its persistence file.
    mosquitto = kill_mosquitto_once_saved(
        mosquitto,
        (&mosquitto_bin, mqtt_port),
        d,
        started_wall,
        (&curl, &http),
    )?;
    let published = finish(publisher)?;
    assert!(
        started.elapsed() > Duration::from_secs(5),
        "the stream ended before both brokers were killed"
    );
    eprintln!(
        "the fleet published {published} envelopes, each kept until the bridge's delivery receipt"
    );

    let expected = oracle(&[&sent])?;
    wait_for_revenue(&out1, &expected, &engine, &kafka, "both brokers killed")?;
    wait_until(
        "everything the bridge took is in Kafka and acknowledged",
        Duration::from_secs(60),
        || {
            Ok(bridge_metric(&curl, &http, "inflight")? == 0
                && bridge_metric(&curl, &http, "acks_waiting")? == 0)
        },
    )?;
    // Inventory counts every sale and every restock once: it equals a batch replay of what
    // the machines recorded (each event once).
    let replayed = d.join("replayed");
    vendflow(&[
        "replay",
        &sent.display().to_string(),
        "--out",
        &replayed.display().to_string(),
    ])?;
    let want = sorted_rows(&replayed.join("inventory.csv"))?;
    wait_until(
        "live inventory equals the replay",
        Duration::from_secs(30),
        || Ok(sorted_rows(&out1.join("inventory.csv"))? == want),
    )
    .with_context(|| {
        format!(
            "live inventory differs from the replay: {} rows against {}",
            sorted_rows(&out1.join("inventory.csv")).map_or(0, |r| r.len()),
            want.len()
        )
    })?;
    let refunds = refund_oracle(&sent)?;
    ensure!(!refunds.is_empty(), "the controllers refunded nothing");
    wait_for_refunds(&out1, &refunds)?;
    no_sequence_gaps(&out1)?;
    eprintln!(
        "re-deliveries dropped by the engine, by kind: {:?}; {} machine-days of refunds; no sequence gap",
        duplicates_by_kind(&out1)?,
        refunds.len()
    );

    // The restarted tansu kept its log: a new engine reading it from offset 0 agrees.
    drop(engine);
    let out2 = d.join("views-2");
    let engine = start_plain_engine(&bin, &kafka, &out2, &d.join("engine-2.log"))?;
    wait_for_revenue(&out2, &expected, &engine, &kafka, "tansu's log read again")?;
    drop(bridge);
    drop(tansu);
    drop(mosquitto);
    Ok(())
}

/// `kill -9` Mosquitto once it has saved its sessions (an autosave a second or more after
/// `since`, when the machines had connected) and start it again on its data; says how many
/// envelopes the bridge had forwarded by then.
fn kill_mosquitto_once_saved(
    mut mosquitto: Daemon,
    (program, port): (&Path, u16),
    d: &Path,
    since: std::time::SystemTime,
    (curl, http): (&Curl, &str),
) -> anyhow::Result<Daemon> {
    let connected = since + Duration::from_secs(1);
    wait_until(
        "Mosquitto saves its sessions",
        Duration::from_secs(30),
        || Ok(d.join("mosquitto.db").metadata()?.modified()? > connected),
    )?;
    mosquitto.kill();
    let at_kill = bridge_metric(curl, http, "forwarded_total")?;
    eprintln!("mosquitto killed with kill -9 after {at_kill} envelopes forwarded");
    std::thread::sleep(Duration::from_millis(500));
    start_mosquitto(program, d, port)
}

/// `vendflow bridge` with 3 partitions and its HTTP endpoint on TLS (a certificate made with
/// `openssl`), logging to `bridge-1.log`, once subscribed; and curl trusting that certificate.
/// Mosquitto, curl, openssl and tansu: what a test through the TLS bridge needs (`None` where a
/// missing one may be skipped; under `CI=true` a missing one fails the test).
fn tls_path_tools() -> anyhow::Result<Option<[PathBuf; 4]>> {
    let found = (
        require_mosquitto()?,
        require_program("curl", &[])?,
        require_program("openssl", &[])?,
        require_tansu()?,
    );
    let (Some(mosquitto), Some(curl), Some(openssl), Some(tansu)) = found else {
        return Ok(None);
    };
    Ok(Some([mosquitto, curl, openssl, tansu]))
}

fn start_tls_bridge(
    bin: &Path,
    d: &Path,
    openssl: &Path,
    curl: PathBuf,
    [mqtt, kafka, http]: [&str; 3],
    credentials: &str,
) -> anyhow::Result<(Daemon, Curl)> {
    let (cert, key) = vendflow_tests::self_signed(openssl, d)?;
    let (cert_text, key_text) = (cert.display().to_string(), key.display().to_string());
    let bridge = vendflow_tests::spawn_bridge(
        bin,
        &d.join("bridge-1.log"),
        [mqtt, kafka, credentials],
        3,
        &[
            "--http",
            http,
            "--tls-cert",
            &cert_text,
            "--tls-key",
            &key_text,
        ],
    )?;
    Ok((
        bridge,
        Curl {
            program: curl,
            cacert: cert,
        },
    ))
}

/// `GET /api/receipts/{machine}/{transaction}` on the engine's plain HTTP: a cart of several
/// lines and a cart with a refund, each as the machine recorded it (every line and refund once,
/// the totals to the cent); an unknown code is 404, a malformed one 400.
fn receipt_checks(curl: &Path, http: &str, sent: &Path) -> anyhow::Result<()> {
    // Per (machine, transaction): distinct sale lines (slot → cents) and refunds.
    type Cart = (BTreeMap<i64, i64>, BTreeMap<(String, String), i64>);
    let mut carts: BTreeMap<(String, String), Cart> = BTreeMap::new();
    for line in std::fs::read_to_string(sent)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let p = &v["payload"];
        let key = || -> Option<(String, String)> {
            Some((
                v["machineId"].as_str()?.to_owned(),
                p["transactionId"].as_str()?.to_owned(),
            ))
        };
        match (v["type"].as_str(), key()) {
            (Some("sale"), Some(k)) => {
                let slot = p["slotNumber"].as_i64().context("slotNumber")?;
                let cents = fixed(&p["amount"].to_string(), 2)?;
                carts.entry(k).or_default().0.insert(slot, cents);
            }
            (Some("refund"), Some(k)) => {
                let cents = fixed(&p["amount"].to_string(), 2)?;
                let id = (p["slotNumber"].to_string(), p["reason"].to_string());
                carts.entry(k).or_default().1.insert(id, cents);
            }
            _ => {}
        }
    }
    let multi = carts
        .iter()
        .find(|(_, (lines, refunds))| lines.len() >= 2 && refunds.is_empty())
        .context("no cart of two lines")?;
    let refunded = carts
        .iter()
        .find(|(_, (_, refunds))| !refunds.is_empty())
        .context("no cart with a refund")?;
    let get = |path: &str| -> anyhow::Result<(u16, serde_json::Value)> {
        let out = Command::new(curl)
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg(format!("http://{http}{path}"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').context("no status")?;
        Ok((
            code.trim().parse()?,
            serde_json::from_str(body).unwrap_or_default(),
        ))
    };
    for ((machine, txn), (lines, refunds)) in [multi, refunded] {
        let path = format!("/api/receipts/{machine}/{txn}");
        let mut last = (0, serde_json::Value::Null);
        let started = Instant::now();
        // The archive is written every second: the receipt appears within a few.
        while started.elapsed() < Duration::from_secs(30) {
            last = get(&path)?;
            if last.0 == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let (code, receipt) = &last;
        ensure!(*code == 200, "{path}: {code} {receipt}");
        let money = |v: &serde_json::Value| fixed(v.as_str().unwrap_or("x"), 2);
        let got_lines = receipt["lines"].as_array().map_or(0, Vec::len);
        let got_refunds = receipt["refunds"].as_array().map_or(0, Vec::len);
        ensure!(
            (got_lines, got_refunds) == (lines.len(), refunds.len())
                && money(&receipt["total"])? == lines.values().sum::<i64>()
                && money(&receipt["refunded"])? == refunds.values().sum::<i64>(),
            "{path}: the receipt {receipt} is not the cart the machine recorded: lines {lines:?}, refunds {refunds:?}"
        );
        eprintln!("receipt {path}: {receipt}");
    }
    let (code, body) = get(&format!("/api/receipts/{}/txn_no_such_cart", multi.0.0))?;
    ensure!(code == 404, "an unknown receipt: {code} {body}");
    let (code, body) = get(&format!("/api/receipts/{}/x'%20OR%20'1'='1", multi.0.0))?;
    ensure!(code == 400, "a malformed receipt code: {code} {body}");
    Ok(())
}

/// Waits until the engine's `refunds` view equals `expected` (per machine and day: refunds,
/// amount in cents).
fn wait_for_refunds(
    out: &Path,
    expected: &BTreeMap<(String, String), (i64, i64)>,
) -> anyhow::Result<()> {
    wait_until(
        "every refund is in the refunds view",
        Duration::from_secs(30),
        || {
            let table = Table::read(&out.join("refunds.csv"))?;
            let mut got = BTreeMap::new();
            for r in table.records() {
                got.insert(
                    (r["machine_id"].to_owned(), r["day"].to_owned()),
                    (r["refunds"].parse::<i64>()?, fixed(r["amount"], 2)?),
                );
            }
            Ok(&got == expected)
        },
    )
}

/// Fails with the first gaps if the engine's `sequence_gaps` view is not empty (an event a
/// machine numbered never arrived).
fn no_sequence_gaps(out: &Path) -> anyhow::Result<()> {
    let gaps = Table::read(&out.join("sequence_gaps.csv"))?;
    ensure!(
        gaps.rows.is_empty(),
        "events were lost: {:?}",
        gaps.rows.iter().take(10).collect::<Vec<_>>()
    );
    Ok(())
}

/// Refunds per (machine, day) over distinct refunds (machine, transaction, slot, reason): how
/// many and how much, the obvious way.
fn refund_oracle(file: &Path) -> anyhow::Result<BTreeMap<(String, String), (i64, i64)>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for line in std::fs::read_to_string(file)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["type"] != "refund" {
            continue;
        }
        let machine = v["machineId"].as_str().context("machineId")?.to_owned();
        let p = &v["payload"];
        let key = (
            machine.clone(),
            p["transactionId"].to_string(),
            p["slotNumber"].to_string(),
            p["reason"].to_string(),
        );
        if !seen.insert(key) {
            continue;
        }
        let ts = v["timestamp"].as_i64().context("timestamp")?;
        let day = chrono::DateTime::from_timestamp_millis(ts)
            .context("timestamp")?
            .format("%Y-%m-%d")
            .to_string();
        let e = out.entry((machine, day)).or_default();
        e.0 += 1;
        e.1 += fixed(&p["amount"].to_string(), 2)?;
    }
    Ok(out)
}

/// 1,000 machines each running the real controller (`vendflow publish`: the
/// vend cycle and its outbox, customers, declines, jams refunded, power cuts, and a tenth of
/// the machines off the network for up to 24 h), 26 simulated hours through Mosquitto, the
/// bridge and tansu into the engine; Mosquitto is killed with `kill -9` mid-stream, then five
/// commands of every kind go to five machines (one firmware image with the wrong hash). Every
/// command is answered by its machine's controller as it should be, receipts are served as the
/// machines recorded them, every sale
/// the machines made is counted once in revenue, every refund is in `refunds`, and
/// `sequence_gaps` is empty: no event of any machine was lost.
/// `publish` runs the real controller on every machine by default, each letting go of an event
/// once the broker acknowledged it (its PUBACK): against a bare Mosquitto (no bridge, so no
/// delivery receipts) the run ends with every outbox empty, and a subscriber has every event the
/// machines recorded as sent (machine and number), the fleet's faults among them.
#[test]
fn controllers_publish_to_a_bare_broker_and_let_go_of_what_it_acknowledged() -> anyhow::Result<()> {
    let Some(mosquitto_bin) = require_mosquitto()? else {
        return Ok(());
    };
    let Some(mosquitto_sub) = require_program("mosquitto_sub", &[])? else {
        return Ok(());
    };
    let Some(mosquitto_pub) = require_program("mosquitto_pub", &[])? else {
        return Ok(());
    };
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    let port = free_port()?;
    let _mosquitto = start_mosquitto(&mosquitto_bin, d, port)?;
    let got = d.join("got.txt");
    /// Stops the subscriber however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _subscriber = Killed(
        Command::new(&mosquitto_sub)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "machines/+/telemetry"])
            .stdout(std::fs::File::create(&got)?)
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    // The subscription is in place once a message published after it arrives.
    let probe = Instant::now();
    while std::fs::metadata(&got)?.len() == 0 {
        ensure!(
            probe.elapsed() < Duration::from_secs(20),
            "mosquitto_sub never subscribed"
        );
        let _ = Command::new(&mosquitto_pub)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "machines/probe/telemetry", "-m", "{}"])
            .status();
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = d.join("sent.jsonl");
    let out = Command::new(vendflow_bin()?)
        .args(["publish", "--mqtt", &format!("127.0.0.1:{port}")])
        .args([
            "--machines",
            "40",
            "--hours",
            "4",
            "--seed",
            "5",
            "--record",
        ])
        .arg(&sent)
        .output()?;
    ensure!(
        out.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = |v: &serde_json::Value, machine: &serde_json::Value| -> Option<(String, u64)> {
        Some((machine.as_str()?.to_owned(), v.get("seq")?.as_u64()?))
    };
    let mut recorded = std::collections::BTreeSet::new();
    for line in std::fs::read_to_string(&sent)?.lines() {
        let e: serde_json::Value = serde_json::from_str(line)?;
        recorded.insert(key(&e, &e["machineId"]).context("a recorded event without its number")?);
    }
    ensure!(recorded.len() > 1_000, "{} events recorded", recorded.len());
    let received = |text: &str| -> std::collections::BTreeSet<(String, u64)> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|envelope| {
                let machine = envelope["machineId"].clone();
                envelope["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(move |e| key(&e, &machine))
            })
            .collect()
    };
    // What the broker acknowledged has reached the subscriber, or is on its way.
    let waiting = Instant::now();
    let missing = loop {
        let have = received(&std::fs::read_to_string(&got)?);
        let missing = recorded.difference(&have).count();
        if missing == 0 || waiting.elapsed() > Duration::from_secs(30) {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    ensure!(
        missing == 0,
        "{missing} of {} sent events never reached the subscriber",
        recorded.len()
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    ensure!(
        summary.contains("units sold"),
        "the controllers' summary: {summary}"
    );
    Ok(())
}

#[test]
fn a_thousand_controllers_with_outages_and_a_broker_restart_lose_no_event() -> anyhow::Result<()> {
    let Some([mosquitto_bin, curl, openssl, tansu_bin]) = tls_path_tools()? else {
        return Ok(());
    };
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    let vendflow_tests::Loopback {
        mqtt_port,
        kafka_port,
        mqtt,
        kafka,
        http,
        ..
    } = vendflow_tests::Loopback::new()?;
    let mut mosquitto = start_mosquitto(&mosquitto_bin, d, mqtt_port)?;
    let _tansu = start_tansu(&tansu_bin, d, kafka_port)?;
    let creds = d.join("credentials.jsonl");
    let creds_text = creds.display().to_string();
    let fleet = [
        "--machines",
        "1000",
        "--hours",
        "26",
        "--seed",
        "23",
        // Each event is forgotten only once the bridge has it in Kafka (not on the PUBACK).
        "--receipts",
        "--heartbeat-secs",
        "1800",
        "--batch-secs",
        "3600",
        "--outage-share",
        "0.1",
        "--max-outage-hours",
        "24",
        // Machines keep 24 h of undelivered events; at this run's speed (~250x real time) a
        // resend a minute late after the broker's kill is hours of the machines' time, so they
        // keep longer here: this test is about nothing being lost, not about the keep.
        "--keep-hours",
        "72",
        "--power-cut-share",
        "0.05",
        // A tenth of the tries jam, so that about 1 % of units are refunded.
        "--jam-share",
        "0.1",
    ];
    let mut dry = vec!["publish", "--mqtt", &mqtt, "--credentials-out", &creds_text];
    dry.extend(fleet);
    dry.push("--dry-run");
    vendflow(&dry)?;
    let bin = vendflow_bin()?;
    let (bridge, curl) =
        start_tls_bridge(&bin, d, &openssl, curl, [&mqtt, &kafka, &http], &creds_text)?;
    let out = d.join("views");
    let archive = d.join("archive");
    let engine_http = format!("127.0.0.1:{}", free_port()?);
    let engine = Daemon::spawn(
        "engine",
        &bin,
        &[
            "run",
            "--insecure-open-api",
            "--kafka",
            &kafka,
            "--out",
            &out.display().to_string(),
            "--every",
            "0.5",
            "--partitions",
            "3",
            "--http",
            &engine_http,
            "--archive",
            &archive.display().to_string(),
            "--archive-flush-secs",
            "1",
        ],
        &d.join("engine.log"),
    )?;

    // 26 simulated hours over about 40 s.
    let sent = d.join("sent.jsonl");
    let publisher = Command::new(&bin)
        .args(["publish", "--mqtt", &mqtt])
        .args(fleet)
        .args(["--speed", "2340", "--linger", "15", "--record"])
        .arg(&sent)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LOG", "vendflow_firmware=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let started_wall = std::time::SystemTime::now();
    let forwarded = |n: u64| bridge_metric(&curl, &http, "forwarded_total").map(|f| f >= n);
    wait_until(
        "the bridge forwards the controllers' envelopes",
        Duration::from_secs(60),
        || forwarded(500),
    )?;
    // kill -9 Mosquitto once it has saved the sessions; the machines send again what has no
    // receipt, the bridge's session comes back from Mosquitto's persistence file.
    mosquitto = kill_mosquitto_once_saved(
        mosquitto,
        (&mosquitto_bin, mqtt_port),
        d,
        started_wall,
        (&curl, &http),
    )?;
    // The platform's commands reach the controllers through Kafka, the bridge and Mosquitto:
    // each is applied (or refused) by the machine's own controller and answered from its outbox.
    let url = "https://updates.example/vendflow-3.1.0.bin";
    let right = {
        let out = Command::new("sh")
            .args(["-c", &format!("printf %s '{url}' | sha256sum")])
            .output()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .context("sha256sum")?
            .to_owned()
    };
    let wrong = "ab".repeat(32);
    let commands: [(&str, &str, Vec<&str>, &str); 5] = [
        (
            "cmd_price",
            "mach_00001",
            vec!["--type", "UPDATE_PRICE", "--slot", "1", "--price", "3.10"],
            "applied",
        ),
        (
            "cmd_plan",
            "mach_00002",
            vec![
                "--type",
                "SET_PLANOGRAM",
                "--planogram",
                "1:cola:2.50,2:water:1.50,3:chips:1.75",
            ],
            "applied",
        ),
        (
            "cmd_order",
            "mach_00003",
            vec![
                "--type",
                "DISPENSE",
                "--order",
                "ord_e2e",
                "--slot",
                "1",
                "--quantity",
                "1",
            ],
            "applied",
        ),
        (
            "cmd_update",
            "mach_00004",
            vec![
                "--type",
                "UPDATE_FIRMWARE",
                "--version",
                "3.1.0",
                "--url",
                url,
                "--sha256",
                &right,
            ],
            "applied",
        ),
        (
            "cmd_bad_image",
            "mach_00005",
            vec![
                "--type",
                "UPDATE_FIRMWARE",
                "--version",
                "3.1.1",
                "--url",
                url,
                "--sha256",
                &wrong,
            ],
            "rejected",
        ),
    ];
    for (id, machine, args, _) in &commands {
        let mut all = vec![
            "command",
            "--kafka",
            &kafka,
            "--machine",
            machine,
            "--id",
            id,
        ];
        all.extend(args.iter().copied());
        vendflow(&all)?;
    }
    let output = publisher.wait_with_output()?;
    let said = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "publish failed: {}\n{}",
        output.status,
        tail(&said)
    );
    let tally = said
        .lines()
        .find(|l| l.starts_with("publish: ") && l.contains("customers"))
        .context("publish printed no tally")?;
    eprintln!(
        "{tally}\n{}",
        String::from_utf8_lossy(&output.stdout).trim()
    );

    let expected = oracle(&[&sent])?;
    ensure!(
        expected.len() > 1_000,
        "too few machine-days with sales: {}",
        expected.len()
    );
    wait_for_revenue(&out, &expected, &engine, &kafka, "1,000 controllers")?;
    let refunds = refund_oracle(&sent)?;
    ensure!(refunds.len() >= 100, "too few refunds: {refunds:?}");
    wait_for_refunds(&out, &refunds)?;
    for (id, machine, _, status) in &commands {
        wait_for_command(&out, id, status, &engine)
            .with_context(|| format!("{machine}'s command {id}"))?;
    }
    eprintln!(
        "commands answered by the controllers: {:?}",
        commands
            .iter()
            .map(|(id, ..)| (id, command_status(&out, id)))
            .collect::<Vec<_>>()
    );
    receipt_checks(&curl.program, &engine_http, &sent)?;
    no_sequence_gaps(&out)?;
    eprintln!(
        "{} machine-days of revenue and {} of refunds as the machines recorded them; no sequence gap",
        expected.len(),
        refunds.len()
    );
    drop(engine);
    drop(bridge);
    drop(mosquitto);
    Ok(())
}

/// `vendflow device run`: one machine booted from its provisioning bundle, its outbox in a
/// file, signing with the bundle's secret, through Mosquitto, the bridge and Kafka. It is killed
/// with `kill -9` in the middle of its day and started again from the same outbox: every sale
/// it recorded (before the kill and after) is in revenue once, no event number is missing, and
/// a command sent while it runs is applied by its controller and answered. The second run
/// speaks MQTT over TLS (`--tls-ca`, Mosquitto's TLS listener) to the same broker, proving who
/// it is with its own client certificate (`--tls-cert`, `--tls-key`: the listener refuses a
/// client without one, checked with `mosquitto_pub`), and its session, queued commands and
/// receipts carry over from the plain connection.
#[test]
fn a_machine_run_from_its_bundle_and_killed_resumes_from_its_outbox_and_loses_nothing()
-> anyhow::Result<()> {
    let Some([mosquitto_bin, curl, openssl, tansu_bin]) = tls_path_tools()? else {
        return Ok(());
    };
    let Some(mosquitto_pub) = require_program("mosquitto_pub", &[])? else {
        return Ok(());
    };
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    let vendflow_tests::Loopback {
        mqtt_port,
        kafka_port,
        mqtt,
        kafka,
        http,
        ..
    } = vendflow_tests::Loopback::new()?;
    // The broker's TLS listener has a certificate of its own, signed by a CA the machine
    // trusts (the bridge's HTTPS has another).
    let mqtt_tls_dir = d.join("mqtt-tls");
    std::fs::create_dir_all(&mqtt_tls_dir)?;
    let (mqtt_ca, mqtt_cert, mqtt_key) = vendflow_tests::ca_signed(&openssl, &mqtt_tls_dir)?;
    // The machine's own certificate, signed by the same CA, which the listener asks clients for.
    let (machine_cert, machine_key) =
        vendflow_tests::client_signed(&openssl, &mqtt_tls_dir, "mach_00000")?;
    let mqtt_tls_port = free_port()?;
    let _mosquitto = start_mosquitto_tls(
        &mosquitto_bin,
        d,
        mqtt_port,
        Some((mqtt_tls_port, &mqtt_cert, &mqtt_key)),
        Some(&mqtt_ca),
    )?;
    let _tansu = start_tansu(&tansu_bin, d, kafka_port)?;
    let text = |p: &Path| p.display().to_string();
    let (registry, creds, bundle) = (
        d.join("registry.jsonl"),
        d.join("credentials.jsonl"),
        d.join("mach_00000.json"),
    );
    vendflow(&[
        "publish",
        "--machines",
        "1",
        "--registry-out",
        &text(&registry),
        "--dry-run",
    ])?;
    vendflow(&[
        "device",
        "provision",
        "mach_00000",
        "--credentials",
        &text(&creds),
        "--mqtt",
        &mqtt,
        "--registry",
        &text(&registry),
        "--out",
        &text(&bundle),
    ])?;
    let bin = vendflow_bin()?;
    let (_bridge, curl) = start_tls_bridge(
        &bin,
        d,
        &openssl,
        curl,
        [&mqtt, &kafka, &http],
        &text(&creds),
    )?;
    let out = d.join("views");
    let engine = Daemon::spawn(
        "engine",
        &bin,
        &[
            "run",
            "--insecure-open-api",
            "--kafka",
            &kafka,
            "--out",
            &text(&out),
            "--every",
            "0.5",
            "--partitions",
            "3",
        ],
        &d.join("engine.log"),
    )?;
    let (outbox, sent) = (d.join("outbox.log"), d.join("sent.jsonl"));
    let device = |hours: &str, tls: &[&str]| {
        Command::new(&bin)
            .args(["device", "run", &text(&bundle), "--outbox", &text(&outbox)])
            .args(tls)
            .args([
                "--hours",
                hours,
                "--speed",
                "3000",
                "--location-type",
                // Sells every day and around the clock: the span ends at the wall clock, and an
                // office sells next to nothing at night or on a weekend (a run at 02:48 on a
                // Saturday sold on one day only).
                "airport",
            ])
            .arg("--record")
            .arg(&sent)
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    // 26 simulated hours at 3,000x; killed once it has sold and the bridge has forwarded some.
    let mut first = device("26", &[])?;
    let recorded = || -> anyhow::Result<usize> {
        Ok(std::fs::read_to_string(&sent)?
            .lines()
            .filter(|l| l.contains(r#""type":"sale""#))
            .count())
    };
    wait_until(
        "the machine sells and the bridge forwards",
        Duration::from_secs(60),
        || Ok(recorded()? >= 5 && bridge_metric(&curl, &http, "forwarded_total")? >= 3),
    )?;
    first.kill()?;
    let killed = first.wait_with_output()?;
    ensure!(!killed.status.success(), "the machine was killed");
    let before = recorded()?;
    ensure!(
        std::fs::metadata(&outbox)?.len() > 0,
        "the outbox file holds the machine's log"
    );
    // Started again on the same outbox, for the last 22 hours of the day (after where it was),
    // this time over TLS.
    let tls_broker = format!("127.0.0.1:{mqtt_tls_port}");
    // The TLS listener takes no client without a certificate its CA signed (and one with it:
    // the refusal is the missing certificate's). The probe publishes nothing the platform reads.
    let port_text = mqtt_tls_port.to_string();
    let ca_text = text(&mqtt_ca);
    let probe = |certificate: &[&str]| {
        Command::new(&mosquitto_pub)
            .args(["-h", "127.0.0.1", "-p", &port_text, "--cafile", &ca_text])
            .args(certificate)
            .args(["-t", "probes/tls", "-m", "{}", "-q", "1"])
            .output()
    };
    let anonymous = probe(&[])?;
    ensure!(
        !anonymous.status.success(),
        "a client without a certificate was let in: {}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    let (cert_text, key_text) = (text(&machine_cert), text(&machine_key));
    let identified = probe(&["--cert", &cert_text, "--key", &key_text])?;
    ensure!(
        identified.status.success(),
        "a client with its certificate was refused: {}",
        String::from_utf8_lossy(&identified.stderr)
    );
    let second = device(
        "22",
        &[
            "--mqtt",
            &tls_broker,
            "--tls-ca",
            &text(&mqtt_ca),
            "--tls-cert",
            &text(&machine_cert),
            "--tls-key",
            &text(&machine_key),
        ],
    )?;
    wait_until(
        "the machine is back and publishing",
        Duration::from_secs(60),
        || Ok(recorded()? > before),
    )?;
    vendflow(&[
        "command",
        "--kafka",
        &kafka,
        "--machine",
        "mach_00000",
        "--id",
        "cmd_device_price",
        "--type",
        "UPDATE_PRICE",
        "--slot",
        "1",
        "--price",
        "3.10",
    ])?;
    let output = second.wait_with_output()?;
    let said = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "device run failed: {}\n{said}\n{}",
        output.status,
        tail(&String::from_utf8_lossy(&output.stderr))
    );
    ensure!(
        said.contains("machine mach_00000:") && said.contains(" 0 waiting in "),
        "the machine delivered everything its outbox held:\n{said}"
    );
    eprintln!("{}", said.trim());
    let expected = oracle(&[&sent])?;
    let sales: i64 = expected.values().map(|(_, _, lines)| lines).sum();
    // The span crosses midnight, but how much of the second day it holds depends on the hour
    // the test runs: the days are not counted.
    ensure!(sales > 20, "too few sales: {expected:?}");
    wait_for_revenue(
        &out,
        &expected,
        &engine,
        &kafka,
        "a machine killed and restarted",
    )?;
    wait_for_command(&out, "cmd_device_price", "applied", &engine)?;
    let gaps = Table::read(&out.join("sequence_gaps.csv"))?;
    ensure!(
        gaps.rows.is_empty(),
        "events were lost: {:?}",
        gaps.rows.iter().take(10).collect::<Vec<_>>()
    );
    // The restarted machine numbered on from its file: no number stands for two events.
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    for line in std::fs::read_to_string(&sent)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let seq = v["seq"].as_u64().context("an event without seq")?;
        let first = by_seq.entry(seq).or_insert_with(|| line.to_owned());
        ensure!(
            first == line,
            "event #{seq} is two events:\n{first}\n{line}"
        );
    }
    eprintln!(
        "{sales} sale lines ({before} recorded before the kill) in revenue once; {} events numbered once; no sequence gap",
        by_seq.len()
    );
    Ok(())
}

/// A small seeded generator for the moments the engine is killed (`VENDFLOW_SEED` repeats a
/// run; the seed is printed).
struct Moments(u64);

impl Moments {
    fn from_env() -> Moments {
        let seed = std::env::var("VENDFLOW_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(7, |d| d.as_nanos() as u64)
            });
        eprintln!("kill moments from VENDFLOW_SEED={seed}");
        Moments(seed | 1)
    }

    /// A duration in [from, to) ms.
    fn between(&mut self, from: u64, to: u64) -> Duration {
        // xorshift64
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(from + self.0 % (to - from).max(1))
    }
}

/// An engine's status file (`--out DIR`: `DIR/status.json`).
fn status_of(out: &Path) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        out.join("status.json"),
    )?)?)
}

/// The source positions of every "checkpoint written" line of a log, oldest first.
fn checkpoints_logged(log: &str) -> Vec<BTreeMap<String, i64>> {
    log.lines()
        .filter(|l| l.contains("checkpoint written"))
        .filter_map(|l| l.split_once(" positions=").map(|(_, p)| positions_of(p)))
        .collect()
}

/// `topic/partition=next …` as a map.
fn positions_of(line: &str) -> BTreeMap<String, i64> {
    line.split_whitespace()
        .filter_map(|p| {
            let (stream, next) = p.split_once('=')?;
            Some((stream.to_owned(), next.parse().ok()?))
        })
        .collect()
}

/// Mosquitto, tansu on SQLite (its maintenance, every second, deletes what a topic's
/// `retention.ms` drops) and [`start_retaining_bridge`] with a retention of `retention_secs`
/// on `machine-telemetry`, on free loopback ports: the ports, and the three daemons (stopped
/// when dropped).
fn start_retaining_brokers(
    [mosquitto_bin, tansu_bin]: [&Path; 2],
    d: &Path,
    machines: &str,
    retention_secs: u32,
) -> anyhow::Result<(vendflow_tests::Loopback, [Daemon; 3])> {
    let ports = vendflow_tests::Loopback::new()?;
    let mosquitto = start_mosquitto(mosquitto_bin, d, ports.mqtt_port)?;
    let tansu = start_tansu_with(
        tansu_bin,
        d,
        ports.kafka_port,
        TansuStorage::SqliteMaintained,
    )?;
    let bridge = start_retaining_bridge(
        &vendflow_bin()?,
        d,
        [&ports.mqtt, &ports.kafka, &ports.http],
        machines,
        retention_secs,
    )?;
    Ok((ports, [mosquitto, tansu, bridge]))
}

/// The bridge from `mqtt` to `kafka` (serving `http`) for `machines` machines of seed 11, with
/// a retention of `retention_secs` on `machine-telemetry`.
fn start_retaining_bridge(
    bin: &Path,
    d: &Path,
    [mqtt, kafka, http]: [&str; 3],
    machines: &str,
    retention_secs: u32,
) -> anyhow::Result<Daemon> {
    let creds = fleet_credentials(d, mqtt, machines)?;
    vendflow_tests::spawn_bridge(
        bin,
        &d.join("bridge-1.log"),
        [mqtt, kafka, &creds],
        3,
        &[
            "--http",
            http,
            "--telemetry-retention-secs",
            &retention_secs.to_string(),
        ],
    )
}

/// `vendflow run` on `kafka`, archiving, writing its views and status into `out` twice a
/// second; with `state`, checkpointing into it every 2 s.
fn start_archiving_engine(
    bin: &Path,
    kafka: &str,
    out: &Path,
    archive: &Path,
    state: Option<&Path>,
    log: &Path,
) -> anyhow::Result<Daemon> {
    let (out, archive) = (out.display().to_string(), archive.display().to_string());
    let mut args = vec![
        "run",
        "--insecure-open-api",
        "--kafka",
        kafka,
        "--out",
        &out,
        "--every",
        "0.5",
        "--partitions",
        "3",
        "--archive",
        &archive,
        "--archive-flush-secs",
        "1",
    ];
    let state = state.map(|s| s.display().to_string());
    if let Some(state) = &state {
        args.extend(["--state", state, "--checkpoint-secs", "2"]);
    }
    Daemon::spawn("engine", bin, &args, log)
}

/// Waits until the engines writing into `a` and `b` have written every view at the same
/// frontier (views such as liveness move with the clock) and they are equal; the number of
/// views. Fails with the views that still differ after a minute.
fn assert_same_views(a: &Path, b: &Path) -> anyhow::Result<usize> {
    let views: Vec<String> = std::fs::read_dir(a)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    ensure!(views.len() > 20, "only {} views were written", views.len());
    let mut differ = Vec::new();
    let started = Instant::now();
    loop {
        let frontier = |out: &Path| status_of(out).map(|s| s["frontier"].as_i64());
        let before = (frontier(a)?, frontier(b)?);
        differ.clear();
        for file in &views {
            if sorted_rows(&a.join(file))? != sorted_rows(&b.join(file))? {
                differ.push(file.clone());
            }
        }
        let after = (frontier(a)?, frontier(b)?);
        let same_moment = before == after && before.0 == before.1;
        if same_moment && differ.is_empty() {
            return Ok(views.len());
        }
        if started.elapsed() > Duration::from_secs(60) {
            let mut shown = String::new();
            for file in &differ {
                let (left, right) = (sorted_rows(&a.join(file))?, sorted_rows(&b.join(file))?);
                let only = |x: &[Vec<String>], y: &[Vec<String>]| -> Vec<String> {
                    x.iter()
                        .filter(|r| !y.contains(r))
                        .take(6)
                        .map(|r| r.join(","))
                        .collect()
                };
                shown.push_str(&format!(
                    "\n{file}: {} rows against {}; only in the first: {:#?}; only in the second: {:#?}",
                    left.len(),
                    right.len(),
                    only(&left, &right),
                    only(&right, &left)
                ));
            }
            bail!(
                "the views differ: {differ:?} (in {} and {}){shown}",
                a.display(),
                b.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The newest checkpoint file in `state`.
fn newest_checkpoint(state: &Path) -> anyhow::Result<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "vfc"))
        .collect();
    files.sort();
    files.pop().context("no checkpoint written")
}

/// The engine `kill -9`ed at three random moments while the fleet publishes a two-day stream
/// through Mosquitto, the bridge and tansu, and restarted each time from its newest checkpoint
/// (`--state`, every 2 s); before the third restart the newest checkpoint is damaged, and the
/// one before it is used. `machine-telemetry` has a retention (25 s) shorter than the
/// stream, so no restart can read the log from offset 0: a new engine without state that reads
/// it after the stream gets only its tail. The restarted engine ends with the views and the
/// Parquet archive of an engine that was never stopped, its revenue equals the oracle's over
/// what the machines sent, and each restart resumed from the newest valid checkpoint the engine
/// logged before the kill (its positions, never older ones).
#[test]
fn an_engine_killed_three_times_restarts_from_its_checkpoints_and_ends_with_the_views_of_one_never_stopped()
-> anyhow::Result<()> {
    let Some(mosquitto_bin) = require_mosquitto()? else {
        return Ok(());
    };
    let Some(curl) = require_program("curl", &[])? else {
        return Ok(());
    };
    let Some(tansu_bin) = require_tansu()? else {
        return Ok(());
    };
    let Some(python) = vendflow_tests::python_with_duckdb()? else {
        return Ok(());
    };
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    let machines = "4";
    let (
        vendflow_tests::Loopback {
            mqtt, kafka, http, ..
        },
        _brokers,
    ) = start_retaining_brokers([&mosquitto_bin, &tansu_bin], d, machines, 25)?;
    let bin = vendflow_bin()?;

    let (out_a, out_b) = (d.join("views-a"), d.join("views-b"));
    let (archive_a, archive_b, state) = (d.join("archive-a"), d.join("archive-b"), d.join("state"));
    let engine_a = start_archiving_engine(
        &bin,
        &kafka,
        &out_a,
        &archive_a,
        None,
        &d.join("engine-a.log"),
    )?;
    let b_log = d.join("engine-b.log");
    let mut engine_b =
        start_archiving_engine(&bin, &kafka, &out_b, &archive_b, Some(&state), &b_log)?;

    // 36 simulated hours (two calendar days or three) of 4 controllers over about 40 s (they
    // keep what is not receipted for 72 simulated hours: a resend seconds late is hours of
    // their time at this speed).
    let sent = d.join("sent.jsonl");
    let publisher = Command::new(&bin)
        .args([
            "publish",
            "--mqtt",
            &mqtt,
            "--machines",
            machines,
            "--hours",
            "36",
        ])
        .args(["--seed", "11", "--speed", "3240", "--receipts"])
        .args(["--keep-hours", "72", "--record"])
        .arg(&sent)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut moments = Moments::from_env();
    for kill in 1..=3 {
        // B has written two checkpoints since it (re)started (a loaded machine may take a
        // while), then runs on for a random moment before the kill.
        let at_start = checkpoints_logged(&engine_b.output()).len();
        wait_until("B writes two checkpoints", Duration::from_secs(90), || {
            Ok(checkpoints_logged(&engine_b.output()).len() >= at_start + 2)
        })
        .with_context(|| format!("before kill {kill}: {}", tail(&engine_b.output())))?;
        std::thread::sleep(moments.between(1_000, 4_000));
        engine_b.kill();
        // The checkpoints B said it wrote, newest last: it must resume from the newest, or,
        // when that one is damaged, from the one before (or from one it wrote and was killed
        // before it could say so: later, never earlier).
        let logged = checkpoints_logged(&engine_b.output());
        let newest_valid = if kill == 3 { 2 } else { 1 };
        let floor = logged
            .len()
            .checked_sub(newest_valid)
            .and_then(|i| logged.get(i))
            .cloned()
            .context("B logged no checkpoint")?;
        eprintln!(
            "engine B killed with kill -9 ({kill} of 3); its newest valid checkpoint it logged was at {floor:?}"
        );
        if kill == 3 {
            let newest = newest_checkpoint(&state)?;
            let len = std::fs::metadata(&newest)?.len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&newest)?
                .set_len(len / 2)?;
            eprintln!("cut {} to half its length", newest.display());
        }
        std::fs::remove_file(out_b.join("status.json")).ok();
        engine_b = start_archiving_engine(&bin, &kafka, &out_b, &archive_b, Some(&state), &b_log)?;
        wait_until(
            "B restarts and writes its status",
            Duration::from_secs(60),
            || Ok(status_of(&out_b)?["checkpoints"]["resumedFrom"].is_string()),
        )
        .with_context(|| tail(&engine_b.output()))?;
        let status = status_of(&out_b)?;
        let resumed = positions_of(
            status["checkpoints"]["resumedFrom"]
                .as_str()
                .unwrap_or_default(),
        );
        eprintln!("engine B restarted from the checkpoint at offsets {resumed:?}");
        ensure!(
            !floor.is_empty() && floor.keys().eq(resumed.keys()),
            "restart {kill}: resumed at {resumed:?}, its newest valid checkpoint holds {floor:?}"
        );
        for (stream, offset) in &floor {
            let from = resumed.get(stream).copied().unwrap_or(0);
            ensure!(
                from >= *offset,
                "restart {kill}: {stream} resumed at {from}, before the newest valid checkpoint ({offset}): an older checkpoint was used"
            );
        }
        let skipped = status["checkpoints"]["damagedSkippedAtStart"].as_u64();
        ensure!(
            skipped == Some(u64::from(kill == 3)),
            "restart {kill}: {skipped:?} damaged checkpoints skipped"
        );
    }
    let published = finish(publisher)?;
    eprintln!("the fleet published {published} envelopes");
    wait_until(
        "the bridge has everything in Kafka",
        Duration::from_secs(60),
        || Ok(vendflow_tests::bridge_metric(&curl, &http, "inflight")? == 0),
    )?;
    let in_kafka = Instant::now();

    // Both engines read to the end of the log.
    let expected = oracle(&[&sent])?;
    wait_for_revenue(
        &out_a,
        &expected,
        &engine_a,
        &kafka,
        "the engine never stopped",
    )?;
    wait_for_revenue(
        &out_b,
        &expected,
        &engine_b,
        &kafka,
        "the engine killed three times",
    )?;
    let views = assert_same_views(&out_a, &out_b)?;
    eprintln!("all {views} views of the restarted engine equal those of the engine never stopped");
    let lost = status_of(&out_b)?["checkpoints"].clone();
    eprintln!("engine B's checkpoints: {lost}");

    // The archives hold the same events, each once.
    wait_archived(&out_a, &engine_a)?;
    wait_archived(&out_b, &engine_b)?;
    let compare = vendflow_tests::root().join("tests/archive_compare.py");
    let output = vendflow_tests::run_python(&python, &[&compare, &archive_a, &archive_b])?;
    eprint!("{}", String::from_utf8_lossy(&output.stdout));

    // An orderly stop (SIGTERM) takes a last checkpoint: the next start reads nothing again.
    let telemetry = |line: &str| {
        positions_of(line)
            .into_iter()
            .filter(|(stream, _)| stream.starts_with("machine-telemetry/"))
            .collect::<BTreeMap<_, _>>()
    };
    let at_stop = telemetry(status_of(&out_b)?["positions"].as_str().unwrap_or_default());
    engine_b.terminate()?;
    ensure!(
        engine_b.output().contains("checkpoint taken at the stop"),
        "no checkpoint at the stop: {}",
        tail(&engine_b.output())
    );
    std::fs::remove_file(out_b.join("status.json")).ok();
    engine_b = start_archiving_engine(&bin, &kafka, &out_b, &archive_b, Some(&state), &b_log)?;
    wait_until(
        "B starts again after its stop",
        Duration::from_secs(60),
        || Ok(status_of(&out_b)?["checkpoints"]["resumedFrom"].is_string()),
    )?;
    let resumed = telemetry(
        status_of(&out_b)?["checkpoints"]["resumedFrom"]
            .as_str()
            .unwrap_or_default(),
    );
    ensure!(
        resumed == at_stop,
        "after an orderly stop the engine resumed at {resumed:?}, not where it stopped ({at_stop:?})"
    );
    eprintln!("after an orderly stop the engine resumed where it stopped: {resumed:?}");

    // The log no longer starts at offset 0: an engine without state reading it now gets only
    // what the retention kept.
    drop(engine_a);
    drop(engine_b);
    // Every message of the stream is past the retention (25 s) by now: how many of them the
    // checks above took time for must not decide what is left.
    std::thread::sleep(Duration::from_secs(26).saturating_sub(in_kafka.elapsed()));
    let out_c = d.join("views-c");
    let engine_c = start_plain_engine(&bin, &kafka, &out_c, &d.join("engine-c.log"))?;
    let everything = status_of(&out_a)?["messages"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(8));
    let tail_only = engine_messages(&out_c).with_context(|| tail(&engine_c.output()))?;
    ensure!(
        tail_only < everything / 2,
        "an engine reading the log from its beginning got {tail_only} of {everything} messages: the retention did not delete the head of the log"
    );
    eprintln!(
        "an engine without state reads {tail_only} of the {everything} messages: the retention deleted the rest"
    );
    Ok(())
}

/// `vendflow run` as two processes of a timely cluster on loopback (one worker each, each with
/// its own `--state`, checkpoints every 2 s) gives the same views as one process with two
/// workers, on the same topics, although both processes are `kill -9`ed at two random moments
/// and restarted (process 1 is killed; process 0 must stop by itself with the reason). The
/// partitions are spread over both processes, process 0 gathers and serves every view, and each
/// restart starts both processes from the newest checkpoint frontier they
/// both have: before the second restart process 1's newest checkpoint is deleted, so they agree
/// on an older one and process 0 sets its newer one aside. `machine-telemetry` keeps 60 s
/// (what the retention does to a restart is the single process's test; here it only has to
/// keep what the checkpoints have not taken while a loaded machine forms the cluster again, which
/// can take tens of seconds). A restart that read the log from offset 0 besides its checkpoint
/// would count the stream twice, and the views would differ from the single process's.
/// Each process archives the partitions it reads (`--archive`): together the two archives hold
/// the records of the single process's archive, none twice.
#[test]
fn two_processes_on_loopback_give_the_views_of_one_across_kills_and_restarts_from_their_checkpoints()
-> anyhow::Result<()> {
    let Some(mosquitto_bin) = require_mosquitto()? else {
        return Ok(());
    };
    let Some(curl) = require_program("curl", &[])? else {
        return Ok(());
    };
    let Some(tansu_bin) = require_tansu()? else {
        return Ok(());
    };
    let Some(python) = vendflow_tests::python_with_duckdb()? else {
        return Ok(());
    };
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    let machines = "4";
    let (
        vendflow_tests::Loopback {
            mqtt, kafka, http, ..
        },
        _brokers,
    ) = start_retaining_brokers([&mosquitto_bin, &tansu_bin], d, machines, 60)?;
    let bin = vendflow_bin()?;
    let one = d.join("views-one");
    let archive_one = d.join("archive-one");
    let alone = start_archiving_engine(
        &bin,
        &kafka,
        &one,
        &archive_one,
        None,
        &d.join("engine-one.log"),
    )?;
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", free_port()?, free_port()?);
    let two = d.join("views-two");
    let two_text = two.display().to_string();
    let state = |i: usize| d.join(format!("state-{i}"));
    let archive = |i: usize| d.join(format!("archive-two-{i}"));
    // Process 1 serves nothing; it writes its status (consumed and archived offsets) to a file.
    let status_1 = d.join("status-1.json");
    let status_1_text = status_1.display().to_string();
    // Each start logs to its own file.
    let process = |i: usize, start: usize| -> anyhow::Result<Daemon> {
        let (index, state) = (i.to_string(), state(i).display().to_string());
        let archive = archive(i).display().to_string();
        let mut args = vec![
            "--workers",
            "1",
            "run",
            "--insecure-open-api",
            "--kafka",
            &kafka,
            "--every",
            "0.5",
            "--partitions",
            "3",
            "--processes",
            "2",
            "--process",
            &index,
            "--peers",
            &peers,
            "--state",
            &state,
            "--checkpoint-secs",
            "2",
            "--archive",
            &archive,
            "--archive-flush-secs",
            "1",
        ];
        if i == 0 {
            args.extend(["--out", &two_text]);
        } else {
            args.extend(["--status", &status_1_text]);
        }
        Daemon::spawn(
            "cluster",
            &bin,
            &args,
            &d.join(format!("engine-two-{i}-{start}.log")),
        )
    };
    let mut cluster = [process(0, 0)?, process(1, 0)?];

    // 36 simulated hours of 4 controllers over about 40 s.
    let sent = d.join("sent.jsonl");
    let publisher = Command::new(&bin)
        .args(["publish", "--mqtt", &mqtt, "--machines", machines])
        .args([
            "--hours",
            "36",
            "--seed",
            "11",
            "--speed",
            "3240",
            "--receipts",
            "--keep-hours",
            "72",
            "--record",
        ])
        .arg(&sent)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut moments = Moments::from_env();
    for kill in 1..=2 {
        // Both processes have checkpointed since this start (a loaded machine may take a
        // while to form the cluster), then run on for a random moment before the kill.
        for (i, p) in cluster.iter().enumerate() {
            p.wait_for_line("checkpoint written", Duration::from_secs(90))
                .with_context(|| format!("process {i} before kill {kill}"))?;
        }
        std::thread::sleep(moments.between(2_000, 6_000));
        // One process dies; the other cannot go on without it, and says so and stops.
        cluster[1].kill();
        let lost = Instant::now();
        let exited = loop {
            if let Some(status) = cluster[0].child.try_wait()? {
                break status;
            }
            ensure!(
                lost.elapsed() < Duration::from_secs(20),
                "process 0 went on without process 1: {}",
                tail(&cluster[0].output())
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(
            !exited.success() && cluster[0].output().contains("the cluster lost a process"),
            "process 0 did not stop with the reason: {exited}; {}",
            tail(&cluster[0].output())
        );
        let newest = [newest_checkpoint(&state(0))?, newest_checkpoint(&state(1))?];
        eprintln!(
            "process 1 killed with kill -9 ({kill} of 2), process 0 stopped by itself ({exited}); newest checkpoints {newest:?}"
        );
        if kill == 2 {
            std::fs::remove_file(&newest[1])?;
            eprintln!(
                "deleted process 1's newest checkpoint {}",
                newest[1].display()
            );
        }
        std::fs::remove_file(two.join("status.json")).ok();
        cluster = [process(0, kill)?, process(1, kill)?];
        wait_until(
            "process 0 restarts and writes its status",
            Duration::from_secs(60),
            || Ok(status_of(&two)?["checkpoints"]["resumedFrom"].is_string()),
        )
        .with_context(|| tail(&cluster[0].output()) + &tail(&cluster[1].output()))?;
        let from = status_of(&two)?["checkpoints"]["restoredFromFrontierMs"].as_i64();
        let from = from.context("process 0 did not say where it restarted from")?;
        // Both processes started from their own files at the frontier they agreed on.
        let name = format!("{from:020}");
        for (i, p) in cluster.iter().enumerate() {
            let line = p.wait_for_line("starting from a checkpoint", Duration::from_secs(30))?;
            ensure!(
                line.contains(&name),
                "restart {kill}: process {i} did not start at frontier {from}: {line}"
            );
        }
        if kill == 2 {
            let set_aside = std::fs::read_dir(state(0).join("superseded"))
                .map(|d| d.count())
                .unwrap_or(0);
            ensure!(
                set_aside >= 1,
                "process 0 kept a checkpoint process 1 does not have"
            );
        }
        eprintln!("restart {kill}: both processes resumed from the checkpoint at {from}");
    }
    let published = finish(publisher)?;
    eprintln!("the fleet published {published} envelopes");
    wait_until(
        "the bridge has everything in Kafka",
        Duration::from_secs(60),
        || Ok(vendflow_tests::bridge_metric(&curl, &http, "inflight")? == 0),
    )?;
    let expected = oracle(&[&sent])?;
    wait_for_revenue(&one, &expected, &alone, &kafka, "one process")?;
    // The engine says when a restart came back later than the log keeps: the views then miss
    // data, and the test's timing (not the engine) is what failed.
    for start in 0..=2 {
        for i in 0..2 {
            let log = std::fs::read_to_string(d.join(format!("engine-two-{i}-{start}.log")))?;
            ensure!(
                !log.contains("retention deleted messages the checkpoint had not taken"),
                "process {i} restarted (start {start}) after the retention had deleted what its checkpoint had not taken: this machine took longer to restart than the test allows; {}",
                tail(&log)
            );
        }
    }
    wait_for_revenue(&two, &expected, &cluster[0], &kafka, "two processes")
        .with_context(|| tail(&cluster[1].output()))?;
    let views = assert_same_views(&one, &two)?;
    eprintln!("all {views} views of two processes killed twice equal those of one never stopped");
    // The second process read its share of the partitions, and both took checkpoints.
    ensure!(
        cluster[1].output().contains("over 2 worker(s) (1 here)"),
        "the second process did not take its share: {}",
        tail(&cluster[1].output())
    );
    for (i, p) in cluster.iter().enumerate() {
        ensure!(
            p.output().contains("checkpoint written"),
            "process {i} wrote no checkpoint after its last start: {}",
            tail(&p.output())
        );
    }

    // The two processes' archives together hold the single process's records, none twice.
    wait_archived(&one, &alone)?;
    wait_archived(&two, &cluster[0])?;
    wait_archived_by(&status_1, &cluster[1])?;
    let compare = vendflow_tests::root().join("tests/archive_compare.py");
    let both = format!("{},{}", archive(0).display(), archive(1).display());
    let output = vendflow_tests::run_python(&python, &[&compare, &archive_one, Path::new(&both)])?;
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
    Ok(())
}

/// A day of the 20 machines' history (`vendflow simulate`), moved in time to end ten minutes
/// before the live stream begins, written to `path` ([`vendflow_tests::history_ending_at`]).
/// The history's last event time.
fn history_before(d: &Path, live_start_ms: i64, path: &Path) -> anyhow::Result<i64> {
    let sim = d.join("simulated");
    vendflow(&[
        "simulate",
        "--out",
        &sim.display().to_string(),
        "--machines",
        "20",
        "--hours",
        "24",
        "--seed",
        "7",
    ])?;
    let end = live_start_ms - 10 * 60_000;
    vendflow_tests::history_ending_at(&sim.join("events.jsonl"), end, path)?;
    Ok(end)
}

/// Hours of a live stream ending at `now_ms` that leave the history before it (24 hours, ending
/// 10 minutes before the stream) 4 to 22 hours into its last UTC day: two, or up to eight near
/// midnight. With two at 02:05 the history ended on the day before the stream's only day, the
/// two shared no machine-day, and the test's own premise failed (CI at that hour).
fn live_hours(now_ms: i64) -> i64 {
    const HOUR: i64 = 3_600_000;
    (2..)
        .find(|h| {
            let history_end = now_ms - h * HOUR - 10 * 60_000;
            (4 * HOUR..=22 * HOUR).contains(&history_end.rem_euclid(24 * HOUR))
        })
        .unwrap_or(2)
}

#[test]
fn a_live_stream_leaves_its_history_well_inside_a_day() {
    const HOUR: i64 = 3_600_000;
    let midnight = 1_796_688_000_000; // 2026-12-08T00:00:00Z
    // At 02:05 two hours would end the history at 23:55 the day before.
    assert_eq!(live_hours(midnight + 2 * HOUR + 5 * 60_000), 4);
    assert_eq!(live_hours(midnight + 12 * HOUR), 2);
    for minute in 0..24 * 60 {
        let now = midnight + minute * 60_000;
        let hours = live_hours(now);
        let end = (now - hours * HOUR - 10 * 60_000).rem_euclid(24 * HOUR);
        assert!((2..=8).contains(&hours), "{hours} hours at minute {minute}");
        assert!((4 * HOUR..=22 * HOUR).contains(&end), "minute {minute}");
    }
}

/// A live engine started from a history file's state: `vendflow replay HISTORY --state S`
/// writes the engine's state at the file's end as a checkpoint (with no log positions), and
/// `vendflow run --state S` starts from it and reads the Kafka log from its beginning while 20
/// controllers publish two hours through Mosquitto, the bridge and tansu. Revenue equals the
/// naive oracle over the history and what the machines sent: the history's days are there,
/// and the live sales add to them, each once. A second history load into that directory is
/// refused (it would make the engine read its log again).
#[test]
fn a_live_engine_started_from_a_replayed_history_counts_the_history_and_the_log_once()
-> anyhow::Result<()> {
    let Some(mosquitto_bin) = require_mosquitto()? else {
        return Ok(());
    };
    let Some(tansu_bin) = require_tansu()? else {
        return Ok(());
    };
    let bin = vendflow_bin()?;
    let (_guard, dir) = test_dir()?;
    let d = dir.as_path();
    // The live stream: two hours of the machines' time ending now, at 600× (12 s), or more
    // near a UTC midnight (see `live_hours`).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let hours = live_hours(now_ms);
    let live_start = now_ms - hours * 3_600_000;
    let history = d.join("history.jsonl");
    let history_end = history_before(d, live_start, &history)?;
    let state = d.join("state");
    let state_text = state.display().to_string();
    let loaded = vendflow(&[
        "--workers",
        "2",
        "replay",
        &history.display().to_string(),
        "--state",
        &state_text,
    ])?;
    let said = String::from_utf8_lossy(&loaded.stdout);
    ensure!(
        said.contains("state at the file's end written to"),
        "the replay did not say where the state went: {said}"
    );
    let again = Command::new(&bin)
        .args([
            "replay",
            &history.display().to_string(),
            "--state",
            &state_text,
        ])
        .env("RUST_BACKTRACE", "0")
        .output()?;
    let refusal = String::from_utf8_lossy(&again.stderr);
    ensure!(
        !again.status.success() && refusal.contains("already holds checkpoints"),
        "a second history load into the engine's state directory was not refused: {refusal}"
    );

    let vendflow_tests::Loopback {
        mqtt_port,
        kafka_port,
        mqtt,
        kafka,
        ..
    } = vendflow_tests::Loopback::new()?;
    let _mosquitto = start_mosquitto(&mosquitto_bin, d, mqtt_port)?;
    let _tansu = start_tansu(&tansu_bin, d, kafka_port)?;
    let creds_text = fleet_credentials(d, &mqtt, "20")?;
    let _bridge = vendflow_tests::spawn_bridge(
        &bin,
        &d.join("bridge-1.log"),
        [&mqtt, &kafka, &creds_text],
        3,
        &[],
    )?;
    let out = d.join("out");
    std::fs::create_dir_all(&out)?;
    let engine = Daemon::spawn(
        "engine",
        &bin,
        &[
            "--workers",
            "2",
            "run",
            "--insecure-open-api",
            "--kafka",
            &kafka,
            "--out",
            &out.display().to_string(),
            "--every",
            "0.5",
            "--partitions",
            "3",
            "--state",
            &state_text,
            "--checkpoint-secs",
            "2",
            "--http",
            &format!("127.0.0.1:{}", free_port()?),
        ],
        &d.join("engine.log"),
    )?;
    let live = d.join("live.jsonl");
    finish(publish(
        &mqtt,
        &hours.to_string(),
        Some("600"),
        None,
        &live,
    )?)?;

    let expected = oracle(&[&history, &live])?;
    let from_history = oracle(&[&history])?;
    let from_live = oracle(&[&live])?;
    ensure!(
        from_history.keys().any(|k| !from_live.contains_key(k))
            && from_history.keys().any(|k| from_live.contains_key(k)),
        "the history should have machine-days of its own and days the live stream adds to"
    );
    wait_for_revenue(&out, &expected, &engine, &kafka, "history + live")?;
    let status = status_of(&out)?;
    ensure!(
        status["checkpoints"]["restoredFromFrontierMs"].as_i64() == Some(history_end + 1),
        "the engine did not start from the history's state (its end {}): {}",
        history_end + 1,
        status["checkpoints"]
    );
    Ok(())
}
