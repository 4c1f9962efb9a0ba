//! The command line as a user meets it: help, the demo, and clear errors.

use std::process::Command;

use vendflow_tests::{vendflow, vendflow_bin};

#[test]
fn help_lists_the_commands() {
    let out = vendflow(&["--help"]).unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    for command in ["demo", "replay", "simulate"] {
        assert!(text.contains(command), "--help mentions {command}:\n{text}");
    }
}

#[test]
fn demo_prints_a_live_fleet_summary_and_stops() {
    let out = vendflow(&[
        "demo",
        "--machines",
        "200",
        "--speed",
        "600",
        "--duration",
        "4",
        "--every",
        "1",
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let summaries: Vec<&str> = text.lines().filter(|l| l.contains(" active / ")).collect();
    assert!(
        summaries.len() >= 2,
        "a summary at least every second:\n{text}"
    );
    let last = summaries.last().copied().unwrap_or_default();
    assert!(
        !last.contains("machines 0 active"),
        "machines come alive: {last}"
    );
    assert!(
        !last.contains("revenue today $0.00"),
        "machines sell: {last}"
    );
    // The machines published over real MQTT (the embedded broker), signed, and nothing was refused.
    let end = text.lines().last().unwrap_or_default();
    assert!(
        end.starts_with("stopped: ") && !end.starts_with("stopped: 0 envelopes"),
        "{text}"
    );
    assert!(end.ends_with(", 0 refused."), "{text}");
}

#[test]
fn replay_of_a_missing_file_says_so() {
    let bin = vendflow_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let out = Command::new(bin)
        .args(["replay", "/nonexistent/events.jsonl", "--out", "/tmp/never"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read /nonexistent/events.jsonl"),
        "{err}"
    );
}
