//! The dashboard in a real browser: `vendflow demo` serves it, headless Chromium (Debian's, driven
//! by playwright-core from `tests/browser/`) opens it with the printed token, sees the machines,
//! then sees an alert appear live after a machine overheats and the revenue ticker move after a
//! sale, both sent as signed telemetry over HTTP like a machine would. Screenshots of each step
//! are kept in `artifacts/dashboard/` (or `$VENDFLOW_ARTIFACTS/dashboard/`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use anyhow::{Context, bail};
use vendflow_protocol::auth::{MachineKey, sign_raw};
use vendflow_tests::{
    Daemon, artifacts, curl_post, free_port, require_program, root, tools_required,
};

/// The Node driver, killed when dropped.
struct Driver {
    child: Child,
    lines: Receiver<String>,
}

impl Driver {
    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("driver stdin")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// The driver's next line starting with `word`; its FAIL line is an error.
    fn expect(&self, word: &str) -> anyhow::Result<String> {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(90))
                .with_context(|| format!("the browser driver said nothing (waiting for {word})"))?;
            if let Some(rest) = line.strip_prefix(word) {
                return Ok(rest.trim().to_owned());
            }
            if line.starts_with("FAIL") {
                bail!("in the browser: {line}");
            }
            eprintln!("driver: {line}");
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a simulated machine sends over HTTP: `events` signed with its secret.
struct Machine<'a> {
    curl: &'a Path,
    addr: &'a str,
    bearer: String,
}

impl Machine<'_> {
    /// The views' current time (the demo's simulated clock), from the fleet summary.
    fn views_time(&self) -> anyhow::Result<i64> {
        let out = Command::new(self.curl)
            .args(["-s", "-H", &self.bearer])
            .arg(format!("http://{}/api/dashboard/fleet", self.addr))
            .output()?;
        let fleet: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        fleet["time"].as_i64().context("fleet summary has no time")
    }

    fn send(&self, machine: &str, events: &str, nonce: &str) -> anyhow::Result<()> {
        let secret = vendflow_firmware::mqtt::simulated_secret(7, machine);
        let signed = sign_raw(
            machine,
            events,
            &MachineKey::from_secret(&secret),
            vendflow_protocol::Timestamp::now().0,
            nonce,
        );
        let (code, body) = curl_post(
            self.curl,
            &[
                "-H",
                &format!("X-Machine-Id: {machine}"),
                "-H",
                &format!("X-Machine-Token: {secret}"),
            ],
            &signed,
            &format!("http://{}/api/telemetry", self.addr),
        )?;
        if code != "200" || !body.contains("\"ack\":true") {
            bail!("telemetry refused ({code}): {body}");
        }
        Ok(())
    }
}

#[test]
fn dashboard_shows_the_fleet_and_follows_alerts_and_sales_live() -> anyhow::Result<()> {
    let Some(node) = require_program("node", &[])? else {
        return Ok(());
    };
    let Some(chromium) = require_program("chromium", &["/usr/bin/chromium".into()])? else {
        return Ok(());
    };
    let Some(curl) = require_program("curl", &[])? else {
        return Ok(());
    };
    let driver_dir = root().join("tests/browser");
    if !driver_dir.join("node_modules/playwright-core").exists() {
        let why = "playwright-core is not installed in tests/browser (tests/run-all.sh runs `npm ci` there)";
        if tools_required() {
            bail!("{why}");
        }
        eprintln!("skipping: {why}");
        return Ok(());
    }
    let shots = artifacts().join("dashboard");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots)?;

    // A slow simulated clock (10 s per second): the overheated 5-minute window stays the
    // machine's latest for half a minute.
    let addr = format!("127.0.0.1:{}", free_port()?);
    let pg = format!("127.0.0.1:{}", free_port()?);
    let demo = Daemon::spawn(
        "demo",
        &vendflow_tests::vendflow_bin()?,
        &[
            "demo",
            "--machines",
            "30",
            "--speed",
            "10",
            "--duration",
            "240",
            "--every",
            "5",
            "--http",
            &addr,
            "--pg",
            &pg,
        ],
        &shots.join("demo.log"),
    )?;
    let url = demo.wait_for_line("dashboard: ", Duration::from_secs(30))?;
    let token = url.split_once("#token=").map(|(_, t)| t).unwrap_or("");
    let machines = Machine {
        curl: &curl,
        addr: &addr,
        bearer: format!("Authorization: Bearer {token}"),
    };

    let mut child = Command::new(node)
        .arg(driver_dir.join("dashboard.mjs"))
        .args([url.as_str(), &shots.display().to_string()])
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start node")?;
    let stdout = child.stdout.take().context("driver stdout")?;
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut driver = Driver { child, lines };
    let ready: serde_json::Value = serde_json::from_str(&driver.expect("READY")?)?;
    assert_eq!(ready["machines"], 30, "every machine on the map: {ready}");
    let quiet = ready["quiet"].as_str().context("no machine to overheat")?;

    // It overheats: a heartbeat at 12 °C in the current window.
    let now = machines.views_time()?;
    machines.send(
        quiet,
        &format!(
            r#"[{{"type":"heartbeat","timestamp":{now},"payload":{{"temperature":12.0,"doorStatus":"closed"}}}}]"#
        ),
        "browser-overheat",
    )?;
    driver.say(&format!("overheat {quiet}"))?;
    assert_eq!(driver.expect("ALERT")?, quiet);

    // It sells something dear: the ticker moves by at least that much.
    let now = machines.views_time()?;
    machines.send(
        quiet,
        &format!(
            r#"[{{"type":"sale","timestamp":{now},"payload":{{"slotNumber":1,"productId":"browser-test","amount":250.00,"paymentMethod":"card","transactionId":"browser-sale-1"}}}}]"#
        ),
        "browser-sale",
    )?;
    driver.say(&format!("sold {quiet} 250"))?;
    let moved = driver.expect("TICKER")?;
    eprintln!("ticker: {moved}");

    // Its page: inventory and the temperature windows, the hot one among them.
    driver.say(&format!("page {quiet} 12"))?;
    let windows: usize = driver.expect("PAGE")?.parse()?;
    assert!(windows > 0);
    driver.say("done")?;
    let status = driver.child.wait()?;
    assert!(status.success(), "the browser driver failed: {status}");
    for shot in ["1-fleet", "2-alert", "3-revenue", "4-machine"] {
        let path = shots.join(format!("{shot}.png"));
        assert!(
            std::fs::metadata(&path).is_ok_and(|m| m.len() > 10_000),
            "{} is missing or blank",
            path.display()
        );
    }
    drop(demo);
    Ok(())
}
