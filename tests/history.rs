//! Every sale counts (issue 15): a six-month sales history of 20 machines, shaped like a real
//! export (carts, quantities of 2–3, coil codes 101–148, cash and card, re-deliveries up to 30
//! days late), shuffled, replayed into an archive and imported as a CSV export: the revenue per
//! machine per day over SQL equals DuckDB's batch sum over the same file, exactly, for every day.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use vendflow_tests::{Table, python_with_duckdb, run_python, vendflow, workload_scripts};

const QUERY: &str = "SELECT machine_id, CAST(day AS VARCHAR) AS day, \
     CAST(revenue * 100 AS BIGINT) AS revenue_cents, units, lines \
     FROM revenue_by_machine_day ORDER BY 1, 2";

type Days = BTreeMap<(String, String), (i64, i64, i64)>;

fn days(table: &Table) -> anyhow::Result<Days> {
    let mut out = BTreeMap::new();
    for r in table.records() {
        out.insert(
            (r["machine_id"].to_owned(), r["day"].to_owned()),
            (
                r["revenue_cents"].parse()?,
                r["units"].parse()?,
                r["lines"].parse()?,
            ),
        );
    }
    Ok(out)
}

/// `vendflow sql --archive ARCHIVE --format csv QUERY`: the answer as CSV text.
fn sql_csv(archive: &Path, query: &str) -> anyhow::Result<Vec<u8>> {
    let out = vendflow(&[
        "sql",
        "--archive",
        &archive.to_string_lossy(),
        "--format",
        "csv",
        query,
    ])?;
    Ok(out.stdout)
}

/// `revenue_by_machine_day` of the archive, via `vendflow sql`.
fn revenue_over_sql(archive: &Path, dir: &Path, name: &str) -> anyhow::Result<Days> {
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, sql_csv(archive, QUERY)?)?;
    days(&Table::read(&path)?)
}

fn scalar(archive: &Path, query: &str) -> anyhow::Result<i64> {
    let text = String::from_utf8(sql_csv(archive, query)?)?;
    let value = text.lines().nth(1).context("no row")?.trim();
    Ok(if value.is_empty() { 0 } else { value.parse()? })
}

fn same(what: &str, got: &Days, expected: &Days) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for (k, v) in expected {
        match got.get(k) {
            Some(g) if g == v => {}
            other => problems.push(format!("{k:?}: duckdb {v:?}, vendflow {other:?}")),
        }
    }
    for k in got.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("{k:?}: not in duckdb's answer"));
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{what}: {} of {} machine-days differ:\n{}",
        problems.len(),
        expected.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[test]
fn a_shuffled_six_month_history_equals_duckdb_per_machine_day() -> anyhow::Result<()> {
    let Some(python) = python_with_duckdb()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let scripts = workload_scripts();
    run_python(
        &python,
        &[
            &scripts.join("gen_history.py"),
            &data,
            Path::new("--machines"),
            Path::new("20"),
            Path::new("--days"),
            Path::new("182"),
        ],
    )?;
    let history = data.join("history.jsonl");
    let reference = dir.path().join("reference.csv");
    run_python(
        &python,
        &[&scripts.join("history_reference.py"), &history, &reference],
    )?;
    let expected = days(&Table::read(&reference)?)?;
    let span: std::collections::BTreeSet<&String> = expected.keys().map(|(_, d)| d).collect();
    anyhow::ensure!(
        span.len() >= 180 && expected.len() > 3000,
        "the history spans {} days, {} machine-days",
        span.len(),
        expected.len()
    );
    let lines: i64 = expected.values().map(|v| v.2).sum();
    let deliveries = std::fs::read_to_string(&history)?.lines().count() as i64;

    // The shuffled JSON Lines, replayed into an archive.
    let replayed = dir.path().join("replayed");
    let out = vendflow(&[
        "replay",
        &history.to_string_lossy(),
        "--archive",
        &replayed.to_string_lossy(),
    ])?;
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    same(
        "replay of the shuffled history",
        &revenue_over_sql(&replayed, dir.path(), "replayed")?,
        &expected,
    )?;
    // Every re-delivery (minutes to 30 days late) was recognised, none counted.
    assert_eq!(
        scalar(
            &replayed,
            "SELECT CAST(SUM(duplicates) AS BIGINT) FROM sale_duplicates"
        )?,
        deliveries - lines
    );
    // Late arrivals are counted as such (most of a shuffled file arrives after its horizon).
    assert!(
        scalar(
            &replayed,
            "SELECT events FROM too_late WHERE view = 'sales'"
        )? > lines / 2
    );

    // The same sales as an operator's CSV export (machine order, US dates, "$1,234.50").
    let imported = dir.path().join("imported");
    let out = vendflow(&[
        "import",
        "csv",
        &data.join("export.csv").to_string_lossy(),
        "--archive",
        &imported.to_string_lossy(),
        "--map",
        "machine=Machine,time=Trans Date,transaction=Transaction,slot=Coil,product=Product,quantity=Qty,amount=Line Total,payment=Type",
    ])?;
    let printed = String::from_utf8_lossy(&out.stdout);
    eprintln!("{printed}");
    assert!(
        printed.contains(&format!("{lines} sales, 0 refused")),
        "{printed}"
    );
    same(
        "import of the CSV export",
        &revenue_over_sql(&imported, dir.path(), "imported")?,
        &expected,
    )
}

/// A DEX audit of `VM-9` read at `at` (YYMMDD, HHMM) with (column, price, vends, value).
fn dex_file(
    path: &Path,
    date: &str,
    time: &str,
    columns: &[(u32, i64, i64, i64)],
) -> anyhow::Result<()> {
    let mut text =
        String::from("DXS*RST0000001*VA*V0/6*1\r\nST*001*0001\r\nID1*VM-9*VX-10\r\nID4*2*840\r\n");
    let mut segments = 3;
    for (code, price, vends, value) in columns {
        text.push_str(&format!("PA1*{code}*{price}\r\nPA2*{vends}*{value}\r\n"));
        segments += 2;
    }
    text.push_str(&format!(
        "EA3*1*{date}*{time}\r\nSE*{}*0001\r\nDXE*1*1\r\n",
        segments + 2
    ));
    std::fs::write(path, text)?;
    Ok(())
}

/// The `reconciliation` rows as (slot, status, telemetry units, audit units).
fn reconciliation(out: &Path) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let table = Table::read(&out.join("reconciliation.csv"))?;
    Ok(table
        .records()
        .iter()
        .map(|r| {
            (
                r["slot_number"].to_owned(),
                r["status"].to_owned(),
                r["telemetry_units"].to_owned(),
                r["audit_units"].to_owned(),
            )
        })
        .collect())
}

#[test]
fn two_dex_audits_reconcile_against_telemetry_and_a_lost_sale_is_flagged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // 2024-01-15 08:00 and 2024-01-16 08:00 UTC.
    let (a1, a2) = (dir.path().join("a1.dex"), dir.path().join("a2.dex"));
    dex_file(
        &a1,
        "240115",
        "0800",
        &[(148, 250, 40, 10_000), (101, 175, 10, 1_750)],
    )?;
    dex_file(
        &a2,
        "240116",
        "0800",
        &[(148, 250, 43, 10_750), (101, 175, 11, 1_925)],
    )?;
    let t0: i64 = 1_705_305_600_000;
    let sale = |ts: i64, slot: u32, qty: u32, cents: i64, txn: &str| {
        format!(
            "{{\"machineId\":\"VM-9\",\"type\":\"sale\",\"timestamp\":{ts},\"payload\":{{\"slotNumber\":{slot},\"productId\":\"p{slot}\",\"quantity\":{qty},\"amount\":{}.{:02},\"paymentMethod\":\"card\",\"transactionId\":\"{txn}\"}}}}\n",
            cents / 100,
            cents % 100
        )
    };
    let hour = 3_600_000;
    let lines = [
        sale(t0 - hour, 148, 1, 250, "before"),
        sale(t0 + hour, 148, 2, 500, "cart"),
        sale(t0 + hour, 101, 1, 175, "cart"),
        sale(t0 + 5 * hour, 148, 1, 250, "later"),
        sale(t0 + 25 * hour, 148, 1, 250, "after"),
    ];
    let all = dir.path().join("sales.jsonl");
    std::fs::write(&all, lines.concat())?;
    let out = dir.path().join("matched");
    let printed = vendflow(&[
        "import",
        "dex",
        &a2.to_string_lossy(),
        &a1.to_string_lossy(),
        "--telemetry",
        &all.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ])?;
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains("2 audits read, 0 files refused"),
        "{printed}"
    );
    assert_eq!(
        reconciliation(&out)?,
        [
            ("101".into(), "matched".into(), "1".into(), "1".into()),
            ("148".into(), "matched".into(), "3".into(), "3".into()),
        ]
    );
    let audits = Table::read(&out.join("dex_audits.csv"))?;
    assert_eq!(audits.rows.len(), 4, "two columns, two audits");

    // The same audits against telemetry that lost the 5 o'clock sale.
    let lost = dir.path().join("lost.jsonl");
    std::fs::write(
        &lost,
        lines
            .iter()
            .filter(|l| !l.contains("\"later\""))
            .cloned()
            .collect::<String>(),
    )?;
    let out = dir.path().join("lost");
    vendflow(&[
        "import",
        "dex",
        &a1.to_string_lossy(),
        &a2.to_string_lossy(),
        "--telemetry",
        &lost.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ])?;
    assert_eq!(
        reconciliation(&out)?,
        [
            ("101".into(), "matched".into(), "1".into(), "1".into()),
            (
                "148".into(),
                "missing_in_telemetry".into(),
                "2".into(),
                "3".into()
            ),
        ]
    );
    Ok(())
}

/// `vendflow import settlement FILE` of a processor's file with the columns
/// `Terminal,Auth Time,Reference,Amount,Result`, against `telemetry`, views into `out`.
fn import_settlement(
    file: &Path,
    telemetry: &Path,
    out: &Path,
    extra: &[&str],
) -> anyhow::Result<std::process::Output> {
    let (file, telemetry, out) = (
        file.to_string_lossy(),
        telemetry.to_string_lossy(),
        out.to_string_lossy(),
    );
    let mut args = vec![
        "import",
        "settlement",
        &file,
        "--map",
        "machine=Terminal,time=Auth Time,transaction=Reference,amount=Amount,status=Result",
        "--telemetry",
        &telemetry,
        "--out",
        &out,
    ];
    args.extend(extra);
    vendflow(&args)
}

/// A payment processor's settlement file against the machine's telemetry: a cart settled at its
/// total, an offline sale declined (marked for review), one paid short, one never settled, one
/// the telemetry never reported; a row with a status no processor writes is refused with its line.
#[test]
fn a_settlement_file_reconciles_card_sales_and_flags_a_declined_offline_sale() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    // 2024-01-15 09:00 UTC.
    let t0: i64 = 1_705_309_200_000;
    let minute = 60_000;
    let sale = |ts: i64, slot: u32, cents: i64, method: &str, txn: &str, offline: bool| {
        format!(
            "{{\"machineId\":\"VM-7\",\"type\":\"sale\",\"timestamp\":{ts},\"payload\":{{\"slotNumber\":{slot},\"productId\":\"p{slot}\",\"amount\":\"{}.{:02}\",\"paymentMethod\":\"{method}\",\"transactionId\":\"{txn}\"{}}}}}\n",
            cents / 100,
            cents % 100,
            if offline { ",\"offline\":true" } else { "" }
        )
    };
    let telemetry = dir.path().join("sales.jsonl");
    std::fs::write(
        &telemetry,
        [
            sale(t0, 101, 250, "card", "cart", false),
            sale(t0 + 1, 148, 300, "card", "cart", false),
            sale(t0 + minute, 102, 1_800, "card", "off", true),
            sale(t0 + 2 * minute, 103, 400, "contactless", "short", false),
            sale(t0 + 3 * minute, 103, 400, "card", "never", false),
            sale(t0 + 4 * minute, 104, 100, "cash", "coins", false),
        ]
        .concat(),
    )?;
    let file = dir.path().join("settlement.csv");
    std::fs::write(
        &file,
        "Terminal,Auth Time,Reference,Amount,Result\n\
         VM-7,2024-01-15 09:00,cart,$5.50,APPROVED\n\
         VM-7,2024-01-15 10:10,off,18.00,Declined\n\
         VM-7,2024-01-15 09:02,short,3.50,Approved\n\
         VM-7,2024-01-15 09:05,ghost,2.00,Settled\n\
         VM-7,2024-01-15 09:06,what,2.00,pending\n",
    )?;
    let (out, archive) = (dir.path().join("views"), dir.path().join("archive"));
    let printed = import_settlement(
        &file,
        &telemetry,
        &out,
        &["--archive", &archive.to_string_lossy()],
    )?;
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains("5 rows, 4 settlement lines, 1 refused") && printed.contains("line 6:"),
        "{printed}"
    );
    let daily = Table::read(&out.join("settlement_daily.csv"))?;
    let rows = daily.records();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let d = &rows[0];
    let got: Vec<&str> = [
        "day",
        "card_transactions",
        "card_value",
        "settled_transactions",
        "settled_value",
        "matched",
        "missing_in_settlement",
        "missing_in_telemetry",
        "amount_differs",
        "declined_offline",
        "difference",
        "status",
    ]
    .iter()
    .map(|c| &*d[*c])
    .collect();
    assert_eq!(
        got,
        [
            "2024-01-15",
            "4",
            "31.50",
            "3",
            "11.00",
            "1",
            "1",
            "1",
            "1",
            "1",
            "20.50",
            "differences"
        ]
    );
    // The exceptions, over SQL from the archive's final snapshot.
    let answer = String::from_utf8(sql_csv(
        &archive,
        "SELECT transaction_id, status, review FROM settlement_exceptions ORDER BY 1",
    )?)?;
    assert_eq!(
        answer.lines().collect::<Vec<_>>(),
        [
            "transaction_id,status,review",
            "ghost,missing_in_telemetry,false",
            "off,declined_offline,true",
            "short,amount_differs,false",
        ],
        "{answer}"
    );
    Ok(())
}

/// The real controller's own offline sales (a machine off the network approves a card alone, up
/// to its floor limit and its count of offline sales) reach reconciliation with their flag: of a
/// fleet's card transactions settled by the processor, those declined that the controller made
/// offline are `declined_offline` and marked for review, those declined that it authorised online
/// are `declined`, and everything else settled at the telemetry's total matches.
#[test]
fn the_controllers_offline_sales_the_processor_declined_are_marked_for_review() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let sim = dir.path().join("fleet");
    vendflow(&[
        "simulate",
        "--controllers",
        "--machines",
        "40",
        "--hours",
        "30",
        "--seed",
        "5",
        "--heartbeat-secs",
        "1800",
        "--out",
        &sim.to_string_lossy(),
    ])?;
    let telemetry = sim.join("events.jsonl");
    // Card transactions as the controllers sent them: (machine, transaction) -> (first line's
    // time, total cents, made offline).
    let mut card: BTreeMap<(String, String), (i64, i64, bool)> = BTreeMap::new();
    for line in std::fs::read_to_string(&telemetry)?.lines() {
        let event: serde_json::Value = serde_json::from_str(line)?;
        if event["type"] != "sale" {
            continue;
        }
        let p = &event["payload"];
        let method = p["paymentMethod"].as_str().unwrap_or("");
        if !["card", "contactless", "credit", "debit", "mobile"].contains(&method) {
            continue;
        }
        let key = (
            event["machineId"].as_str().context("machineId")?.to_owned(),
            p["transactionId"]
                .as_str()
                .context("transactionId")?
                .to_owned(),
        );
        let ts = event["timestamp"].as_i64().context("timestamp")?;
        let cents = vendflow_tests::fixed(&p["amount"].to_string(), 2)?;
        let offline = p["offline"].as_bool().unwrap_or(false);
        let t = card.entry(key).or_insert((ts, 0, false));
        t.0 = t.0.min(ts);
        t.1 += cents;
        t.2 |= offline;
    }
    let offline: Vec<_> = card
        .iter()
        .filter(|(_, t)| t.2)
        .map(|(k, _)| k.clone())
        .collect();
    let online: Vec<_> = card
        .iter()
        .filter(|(_, t)| !t.2)
        .map(|(k, _)| k.clone())
        .collect();
    anyhow::ensure!(
        offline.len() >= 10 && online.len() >= 100,
        "the fleet made {} offline and {} online card transactions: too few to test with",
        offline.len(),
        online.len()
    );
    // Every fourth offline transaction and every fiftieth online one declined.
    let declined_offline: std::collections::BTreeSet<_> =
        offline.iter().step_by(4).cloned().collect();
    let declined_online: std::collections::BTreeSet<_> =
        online.iter().step_by(50).cloned().collect();
    let mut csv = String::from("Terminal,Auth Time,Reference,Amount,Result\n");
    for (key, (ts, cents, _)) in &card {
        let at = chrono::DateTime::from_timestamp_millis(*ts).context("time")?;
        let result = if declined_offline.contains(key) || declined_online.contains(key) {
            "Declined"
        } else {
            "Approved"
        };
        csv.push_str(&format!(
            "{},{},{},{}.{:02},{result}\n",
            key.0,
            at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            key.1,
            cents / 100,
            cents % 100
        ));
    }
    let file = dir.path().join("settlement.csv");
    std::fs::write(&file, csv)?;
    let out = dir.path().join("views");
    import_settlement(&file, &telemetry, &out, &[])?;
    let exceptions = Table::read(&out.join("settlement_exceptions.csv"))?;
    let mut by_status: BTreeMap<(String, String), std::collections::BTreeSet<(String, String)>> =
        BTreeMap::new();
    for r in exceptions.records() {
        by_status
            .entry((r["status"].to_owned(), r["review"].to_owned()))
            .or_default()
            .insert((r["machine_id"].to_owned(), r["transaction_id"].to_owned()));
    }
    let expected = BTreeMap::from([
        (("declined".to_owned(), "false".to_owned()), declined_online),
        (
            ("declined_offline".to_owned(), "true".to_owned()),
            declined_offline,
        ),
    ]);
    assert_eq!(
        by_status, expected,
        "exceptions by (status, review): the declined offline sales for review, the declined online ones not, nothing else"
    );
    Ok(())
}

/// Controllers off the network for longer than they keep events (up to 40 hours against 24)
/// drop the oldest and declare them: replayed, `sequence_gaps` lists exactly the numbers
/// missing from what they sent, and every one of them is declared (`declared_dropped` equals
/// `missing`), so the loss is visible and explained; no gap is left unexplained.
#[test]
fn controllers_offline_past_24_hours_declare_what_they_dropped_and_the_gaps_say_so()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = dir.path().join("fleet");
    vendflow(&[
        "simulate",
        "--controllers",
        "--machines",
        "30",
        "--hours",
        "72",
        "--seed",
        "3",
        "--heartbeat-secs",
        "1800",
        "--outage-share",
        "0.5",
        "--max-outage-hours",
        "40",
        "--out",
        &sim.to_string_lossy(),
    ])?;
    let telemetry = sim.join("events.jsonl");
    // What the machines sent: every machine's numbers, and the ranges they declared dropped.
    let mut sent: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    let mut declared: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for line in std::fs::read_to_string(&telemetry)?.lines() {
        let event: serde_json::Value = serde_json::from_str(line)?;
        let machine = event["machineId"].as_str().context("machineId")?.to_owned();
        if let Some(seq) = event["seq"].as_u64() {
            sent.entry(machine.clone()).or_default().insert(seq);
        }
        if event["type"] == "dropped" {
            let p = &event["payload"];
            let (a, b) = (
                p["firstSeq"].as_u64().context("firstSeq")?,
                p["lastSeq"].as_u64().context("lastSeq")?,
            );
            declared.entry(machine).or_default().extend(a..=b);
        }
    }
    anyhow::ensure!(
        !declared.is_empty(),
        "no machine was offline past 24 hours: nothing to test"
    );
    let out = dir.path().join("views");
    vendflow(&[
        "replay",
        &telemetry.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ])?;
    let gaps = Table::read(&out.join("sequence_gaps.csv"))?;
    let mut missing_in_view: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for r in gaps.records() {
        let (a, b): (u64, u64) = (r["first_missing"].parse()?, r["last_missing"].parse()?);
        assert_eq!(
            r["declared_dropped"], r["missing"],
            "every missing number declared: {r:?}"
        );
        missing_in_view
            .entry(r["machine_id"].to_owned())
            .or_default()
            .extend(a..=b);
    }
    // The naive answer: per machine, the numbers between its lowest and highest sent that it
    // did not send; each of them declared.
    let mut missing: BTreeMap<String, std::collections::BTreeSet<u64>> = BTreeMap::new();
    for (machine, seqs) in &sent {
        let (Some(&lo), Some(&hi)) = (seqs.first(), seqs.last()) else {
            continue;
        };
        let gone: std::collections::BTreeSet<u64> =
            (lo..=hi).filter(|n| !seqs.contains(n)).collect();
        if !gone.is_empty() {
            let said = declared.get(machine).cloned().unwrap_or_default();
            assert!(
                gone.is_subset(&said),
                "{machine}: lost numbers it did not declare"
            );
            missing.insert(machine.clone(), gone);
        }
    }
    assert!(
        !missing.is_empty(),
        "no gap between numbers sent: the test shows nothing"
    );
    assert_eq!(missing_in_view, missing);
    Ok(())
}

/// The `late-arrivals` scenario replayed into an archive: five and a half weeks with a share
/// of the file so small that one reader has no line of it. The readers are paced day by day
/// for the history; a reader with nothing to read used to hold every snapshot back, so the
/// replay waited for ever. Now it ends, and the archive has each day, the sales 37 days late
/// in their own days, and the card sale's window correction.
#[test]
fn a_late_arrivals_history_replays_into_the_archive_day_by_day() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("archive");
    let fixtures = vendflow_tests::root().join("fixtures/late-arrivals");
    let mut child = std::process::Command::new(vendflow_tests::vendflow_bin()?)
        .args(["--workers", "2", "replay"])
        .arg(fixtures.join("events.jsonl"))
        .arg("--registry")
        .arg(fixtures.join("registry.jsonl"))
        .arg("--archive")
        .arg(&archive)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("the replay into an archive did not end within 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    anyhow::ensure!(status.success(), "the replay failed: {status}");

    let text = String::from_utf8(sql_csv(
        &archive,
        "SELECT machine_id, CAST(day AS VARCHAR) AS day, CAST(revenue * 100 AS BIGINT) AS cents, \
         lines FROM revenue_by_machine_day ORDER BY 2, 1",
    )?)?;
    let got: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        got,
        [
            "m_a,2024-03-01,1000,4",
            "m_t,2024-03-01,300,1",
            "m_a,2024-03-02,400,2",
            "m_t,2024-03-03,100,1",
            "m_a,2024-04-08,275,1",
            "m_t,2024-04-08,300,1",
        ],
        "every sale in its own day, the late ones included"
    );
    let text = String::from_utf8(sql_csv(
        &archive,
        "SELECT machine_id, CAST(window_start AS VARCHAR) AS window_start, \
         CAST(arrived AS VARCHAR) AS arrived, card_attempts FROM anomaly_window_corrections_history",
    )?)?;
    let got: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(got.len(), 1, "{text}");
    assert!(
        got[0].starts_with("m_a,2024-03-02T10:00:00") && got[0].ends_with(",2024-04-08,1"),
        "the card sale 37 days late is a card attempt of its archived window: {text}"
    );
    Ok(())
}
