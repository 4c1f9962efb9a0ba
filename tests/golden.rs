//! Golden scenarios: each folder of `fixtures/` with an `events.jsonl` (and optionally a
//! `registry.jsonl` and a `commands.jsonl`) is replayed by the real binary, and every view must
//! equal the CSV checked in under its `expected/`; an expected file whose view the replay no
//! longer writes fails too. `REWRITE=1 cargo test -p vendflow-tests --test golden` rewrites them;
//! review the diff before committing it.
//!
//! The `golden` scenario (`vendflow simulate --scenario golden`) is one day of five machines:
//! mach_00000 overheats from 14:00, mach_00001 loses its network from 16:00 to 21:00 and then
//! delivers its buffered sales (some twice), and the crew skips mach_00002. The `late-arrivals`
//! scenario (`fixtures/late-arrivals/make.py`, by hand) covers what a simulated day cannot:
//! leases, commands, sales days and weeks late, and a settlement file.

use std::path::Path;

use anyhow::Context;
use vendflow_tests::{Table, root, vendflow};

fn check(scenario: &Path) -> anyhow::Result<Vec<String>> {
    let out = tempfile::tempdir()?;
    let events = scenario.join("events.jsonl");
    let mut args = vec![
        "replay".to_owned(),
        events.to_string_lossy().into_owned(),
        "--out".into(),
        out.path().to_string_lossy().into_owned(),
    ];
    let registry = scenario.join("registry.jsonl");
    if registry.exists() {
        args.extend(["--registry".into(), registry.to_string_lossy().into_owned()]);
    }
    let commands = scenario.join("commands.jsonl");
    if commands.exists() {
        args.extend(["--commands".into(), commands.to_string_lossy().into_owned()]);
    }
    vendflow(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let expected_dir = scenario.join("expected");
    let rewrite = std::env::var("REWRITE").is_ok_and(|v| v == "1");
    if rewrite {
        std::fs::create_dir_all(&expected_dir)?;
    }
    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(out.path())?.collect::<Result<_, _>>()?;
    files.sort_by_key(|f| f.file_name());
    // An expectation whose view the replay no longer writes is a failure (a view renamed or
    // dropped must update the scenario), and REWRITE removes it.
    let written: std::collections::BTreeSet<_> = files.iter().map(|f| f.file_name()).collect();
    if expected_dir.exists() {
        let mut stale: Vec<_> = std::fs::read_dir(&expected_dir)?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|f| !written.contains(&f.file_name()))
            .collect();
        stale.sort_by_key(|f| f.file_name());
        for file in stale {
            if rewrite {
                std::fs::remove_file(file.path())?;
            } else {
                problems.push(format!(
                    "{}: expected, but the replay wrote no such view",
                    file.file_name().to_string_lossy()
                ));
            }
        }
    }
    for file in files {
        let name = file.file_name().to_string_lossy().into_owned();
        let got = std::fs::read_to_string(file.path())?;
        let expected_path = expected_dir.join(&name);
        if rewrite {
            std::fs::write(&expected_path, &got)?;
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).with_context(|| {
            format!(
                "{} is missing; run with REWRITE=1 to create it",
                expected_path.display()
            )
        })?;
        if got != expected {
            let first = got
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            problems.push(format!(
                "{name}: differs from line {} ({} lines, expected {})\n    got:      {}\n    expected: {}",
                first + 1,
                got.lines().count(),
                expected.lines().count(),
                got.lines().nth(first).unwrap_or(""),
                expected.lines().nth(first).unwrap_or("")
            ));
        }
    }
    Ok(problems)
}

#[test]
fn every_fixture_scenario_matches_its_expected_views() {
    let fixtures = root().join("fixtures");
    let mut scenarios: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap_or_else(|e| panic!("{}: {e}", fixtures.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    scenarios.sort();
    assert!(
        !scenarios.is_empty(),
        "no scenarios under {}",
        fixtures.display()
    );
    for scenario in scenarios {
        let problems = check(&scenario).unwrap_or_else(|e| panic!("{}: {e:#}", scenario.display()));
        assert!(
            problems.is_empty(),
            "{}:\n  {}",
            scenario.display(),
            problems.join("\n  ")
        );
    }
}

/// The expected files say what the scenario promises, not just whatever the engine printed.
#[test]
fn golden_expectations_show_the_scenario() {
    let expected = root().join("fixtures/golden/expected");
    let read = |name: &str| Table::read(&expected.join(name)).unwrap_or_else(|e| panic!("{e:#}"));

    let health = read("health.csv");
    let overheated = health
        .records()
        .into_iter()
        .find(|r| r["machine_id"] == "mach_00000");
    assert!(
        overheated.is_some_and(|r| r["reasons"].contains("temperature critical")),
        "mach_00000 overheats"
    );

    // mach_00001's sales during its outage (16:00–21:00) were delivered hours later, yet count in
    // their own windows: windows with card payments but no heartbeat.
    let windows = read("anomaly_windows.csv");
    let silent_but_selling = windows
        .records()
        .into_iter()
        .filter(|r| {
            r["machine_id"] == "mach_00001" && r["heartbeats"] == "0" && r["card_attempts"] != "0"
        })
        .filter(|r| {
            r["window_start"].starts_with("2024-01-15T1")
                || r["window_start"].starts_with("2024-01-15T2")
        })
        .count();
    assert!(
        silent_but_selling > 0,
        "buffered sales land in their own event-time windows"
    );
    let duplicates = read("sale_duplicates.csv");
    assert!(
        duplicates
            .records()
            .iter()
            .any(|r| r["machine_id"] == "mach_00001"),
        "the re-sent buffer is deduplicated"
    );

    let inventory = read("inventory.csv");
    assert!(
        inventory
            .records()
            .iter()
            .any(|r| r["machine_id"] == "mach_00002" && r["sold_out"] == "true"),
        "a sold-out slot"
    );

    // mach_00003 refunded a jammed unit (its refund re-sent: counted once) and voided a late
    // card approval.
    let refunds = read("refunds.csv");
    let row = refunds
        .records()
        .into_iter()
        .find(|r| r["machine_id"] == "mach_00003")
        .unwrap_or_else(|| panic!("no refunds for mach_00003"));
    assert_eq!(
        (row["refunds"], row["units"], row["amount"]),
        ("2", "1", "14.50"),
        "the jam once and the void"
    );

    // Every machine numbers its events; none was lost, not even mach_00001's outage buffer.
    assert!(
        read("sequence_gaps.csv").records().is_empty(),
        "no event number is missing"
    );
}

/// The `late-arrivals` expectations, each what `fixtures/late-arrivals/make.py` set up.
#[test]
fn late_arrival_expectations_show_the_scenario() {
    let expected = root().join("fixtures/late-arrivals/expected");
    let read = |name: &str| Table::read(&expected.join(name)).unwrap_or_else(|e| panic!("{e:#}"));
    let rows = |name: &str| -> Vec<std::collections::BTreeMap<String, String>> {
        read(name)
            .records()
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    };
    let find = |rows: &[std::collections::BTreeMap<String, String>], key: &str, value: &str| {
        rows.iter()
            .find(|r| r[key] == value)
            .cloned()
            .unwrap_or_else(|| panic!("no row with {key} = {value}"))
    };

    // Commands: applied, rejected with its reason, pending; the wrong machine's ack matched nothing.
    let commands = rows("commands.csv");
    assert_eq!(commands.len(), 3, "{commands:?}");
    assert_eq!(
        find(&commands, "command_id", "cmd_price")["status"],
        "applied"
    );
    let reboot = find(&commands, "command_id", "cmd_reboot");
    assert_eq!(
        (reboot["status"].as_str(), reboot["reason"].as_str()),
        ("rejected", "dispensing")
    );
    assert_eq!(
        find(&commands, "command_id", "cmd_pending")["status"],
        "pending"
    );
    // The refused command line is counted, by its file.
    let errors = rows("error_counts.csv");
    let refused = find(&errors, "source", "commands:commands.jsonl");
    assert_eq!(
        (refused["kind"].as_str(), refused["records"].as_str()),
        ("unknown_type", "1")
    );

    // Leases: both, and the five lifecycle events; the termination keeps its note.
    assert_eq!(rows("leases.csv").len(), 2);
    let events = rows("lease_events.csv");
    assert_eq!(events.len(), 5, "{events:?}");
    let terminated = find(&events, "event", "TERMINATED");
    assert_eq!(
        (terminated["lease_id"].as_str(), terminated["note"].as_str()),
        ("L-T", "terminal closed for works")
    );

    // Late arrivals are counted as such: the Friday sale and heartbeat on Monday, the re-sent
    // cart and sale, and the three sales 37 days late (the card one also for its window).
    let too_late = rows("too_late.csv");
    let late = |view: &str| -> i64 {
        find(&too_late, "view", view)["events"]
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(late("sales"), 7, "{too_late:?}");
    assert_eq!(late("anomaly_windows"), 2, "{too_late:?}");
    // ... and the re-deliveries were recognised, 3 days late, by the ledger on disk.
    let duplicates = rows("sale_duplicates.csv");
    assert_eq!(find(&duplicates, "machine_id", "m_a")["duplicates"], "3");

    // The restock and the heartbeat sent twice counted once: slot 2 of m_a holds its 8 units
    // less the cart's 2 plus one restock of 5.
    let duplicates = rows("event_duplicates.csv");
    assert_eq!(duplicates.len(), 2, "{duplicates:?}");
    assert_eq!(find(&duplicates, "kind", "restock")["duplicates"], "1");
    assert_eq!(find(&duplicates, "kind", "heartbeat")["duplicates"], "1");
    let inventory = rows("inventory.csv");
    let chips = inventory
        .iter()
        .find(|r| r["machine_id"] == "m_a" && r["slot_number"] == "2")
        .unwrap_or_else(|| panic!("no m_a slot 2 in {inventory:?}"));
    assert_eq!(chips["units"], "11");

    // The sales 37 days late still count, as corrections of their own (closed) days: by UTC
    // day, and by the machine's local day.
    let corrections = rows("revenue_corrections.csv");
    let water_and_cola = find(&corrections, "machine_id", "m_a");
    assert_eq!(
        (
            water_and_cola["day"].as_str(),
            water_and_cola["revenue"].as_str(),
            water_and_cola["lines"].as_str()
        ),
        ("2024-03-02", "4.00", "2")
    );
    // The card sale is also a card-reader attempt of its window, archived long before.
    let windows = rows("anomaly_window_corrections.csv");
    assert_eq!(windows.len(), 1, "{windows:?}");
    let cola = &windows[0];
    assert_eq!(
        (
            cola["machine_id"].as_str(),
            cola["window_start"].as_str(),
            cola["arrived"].as_str(),
            cola["card_attempts"].as_str()
        ),
        ("m_a", "2024-03-02T10:00:00Z", "2024-04-08", "1")
    );
    let gum = find(&corrections, "machine_id", "m_t");
    assert_eq!(
        (gum["day"].as_str(), gum["revenue"].as_str()),
        ("2024-03-03", "1.00")
    );
    let local = find(&rows("revenue_local_corrections.csv"), "machine_id", "m_a");
    assert_eq!(
        (local["day"].as_str(), local["time_zone"].as_str()),
        ("2024-03-02", "UTC")
    );
    // The Tokyo machine's Monday 16:30 UTC sale is on Tuesday in Tokyo.
    let tokyo = rows("revenue_machine_local_daily.csv");
    assert!(
        tokyo.iter().any(|r| r["machine_id"] == "m_t"
            && r["day"] == "2024-04-09"
            && r["revenue"] == "3.00"),
        "{tokyo:?}"
    );

    // The settlement file: one amount differs, one transaction was never reported.
    let exceptions = rows("settlement_exceptions.csv");
    assert_eq!(
        find(&exceptions, "transaction_id", "T-T3")["status"],
        "amount_differs"
    );
    assert_eq!(
        find(&exceptions, "transaction_id", "T-X")["status"],
        "missing_in_telemetry"
    );
}
