//! Golden scenarios: each folder of `fixtures/` with an `events.jsonl` (and optionally a
//! `registry.jsonl`) is replayed by the real binary, and every view must equal the CSV checked in
//! under its `expected/`. `REWRITE=1 cargo test -p vendflow-tests --test golden` rewrites them;
//! review the diff before committing it.
//!
//! The `golden` scenario (`vendflow simulate --scenario golden`) is one day of five machines:
//! mach_00000 overheats from 14:00, mach_00001 loses its network from 16:00 to 21:00 and then
//! delivers its buffered sales (some twice), and the crew skips mach_00002.

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
    vendflow(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let expected_dir = scenario.join("expected");
    let rewrite = std::env::var("REWRITE").is_ok_and(|v| v == "1");
    if rewrite {
        std::fs::create_dir_all(&expected_dir)?;
    }
    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(out.path())?.collect::<Result<_, _>>()?;
    files.sort_by_key(|f| f.file_name());
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
}
