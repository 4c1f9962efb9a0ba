//! The command line as a user meets it: help, the demo, and clear errors.

use anyhow::Context;
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

/// `device provision`: the machine is registered (its public key in the credentials file) and
/// its bundle written privately, with the planogram the registry gives it, and shown as a QR
/// code whose payload is the same bundle. A controller booted from the bundle signs envelopes
/// the platform's key for it verifies. A second provisioning of the same machine is refused.
#[test]
fn a_provisioned_controller_boots_from_its_bundle_and_signs_what_the_platform_accepts()
-> anyhow::Result<()> {
    use vendflow_protocol::auth::{
        MachineKey, PublicKey, StoredKey, sign_envelope, verify_envelope,
    };
    use vendflow_protocol::provision::Bundle;
    let dir = tempfile::tempdir()?;
    let registry = dir.path().join("registry.jsonl");
    let creds = dir.path().join("credentials.jsonl");
    let bundle_path = dir.path().join("mach_00003.json");
    let text = |p: &std::path::Path| p.display().to_string();
    vendflow(&[
        "publish",
        "--machines",
        "5",
        "--registry-out",
        &text(&registry),
        "--dry-run",
    ])?;
    let creds_text = text(&creds);
    let provision = |extra: &[&str]| {
        let mut args = vec![
            "device",
            "provision",
            "mach_00003",
            "--credentials",
            &creds_text,
            "--mqtt",
            "mqtt.example:8883",
        ];
        args.extend(extra);
        vendflow(&args)
    };
    let out = provision(&["--registry", &text(&registry), "--out", &text(&bundle_path)])?;
    let printed = String::from_utf8_lossy(&out.stdout);
    let payload = printed
        .lines()
        .find(|l| l.starts_with("VFP1:"))
        .ok_or_else(|| anyhow::anyhow!("no QR payload printed:\n{printed}"))?;
    assert!(
        printed.contains('\u{2580}') || printed.contains('\u{2588}'),
        "a QR code is drawn"
    );
    let bundle = Bundle::from_json(&std::fs::read(&bundle_path)?)?;
    assert_eq!(Bundle::from_qr_payload(payload)?, bundle);
    assert_eq!(bundle.planogram.len(), 30, "the registry's planogram");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&bundle_path)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the bundle holds a secret");
    }
    // The controller boots from the bundle and sends a heartbeat, signed with its secret.
    let now = 1_764_000_000_000;
    let (mut machine, _, _) = vendflow_firmware::machine::Machine::provisioned(
        &bundle,
        &dir.path().join("outbox.log"),
        now,
    )?;
    machine.heartbeat(now, vendflow_protocol::Heartbeat::default())?;
    let (envelope, _) = machine
        .envelope(10)?
        .ok_or_else(|| anyhow::anyhow!("nothing to send"))?;
    let signed = sign_envelope(
        &envelope,
        &MachineKey::from_secret(&bundle.secret),
        now,
        "n1",
    );
    let line = std::fs::read_to_string(&creds)?;
    let stored: serde_json::Value = serde_json::from_str(line.trim())?;
    assert_eq!(stored["machineId"], "mach_00003");
    let key = PublicKey::from_hex(stored["publicKey"].as_str().unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let verified = verify_envelope(signed.as_bytes(), |m| {
        (m == "mach_00003").then_some(StoredKey::PublicKey(key))
    });
    assert!(verified.is_ok(), "{verified:?}");
    // Provisioned once: a second bundle for it is refused, and the first is kept.
    let again = provision(&["--out", &text(&dir.path().join("again.json"))]);
    assert!(again.is_err(), "a machine is provisioned once");
    assert!(bundle_path.exists());
    Ok(())
}

/// `demo --event-simulator`: the event simulator instead of the controllers (the default).
#[test]
fn demo_prints_a_live_fleet_summary_and_stops() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let archive = dir.path().join("archive");
    let out = vendflow(&[
        "demo",
        "--event-simulator",
        "--machines",
        "200",
        "--speed",
        "600",
        "--duration",
        "4",
        "--every",
        "1",
        "--archive",
        &archive.display().to_string(),
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout);
    // How to connect, and the archive it wrote (flushed at the end).
    assert!(text.contains("psql -h 127.0.0.1 -p "), "{text}");
    assert!(text.contains("POST http://127.0.0.1:"), "{text}");
    let events = archive.join("events");
    let written = std::fs::read_dir(&events)
        .map(|d| d.count())
        .unwrap_or_default();
    assert!(
        written > 0,
        "no event partitions in {}:\n{text}",
        events.display()
    );
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

/// `demo` (by default): every simulated machine runs the real controller (the vend cycle and
/// its outbox) and publishes over the embedded broker's MQTT; the demo's source sends the
/// delivery receipts its outboxes wait for. Machines come alive and sell, nothing is refused,
/// and the outboxes let go of what was receipted (without the receipts every event would still
/// wait at the end).
#[test]
fn demo_with_controllers_runs_the_machines_own_code_over_mqtt() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("archive");
    let out = vendflow(&[
        "demo",
        "--machines",
        "200",
        "--speed",
        "300",
        "--duration",
        "8",
        "--every",
        "1",
        "--http",
        "127.0.0.1:0",
        "--pg",
        "127.0.0.1:0",
        "--archive",
        &archive.display().to_string(),
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let summaries: Vec<&str> = text.lines().filter(|l| l.contains(" active / ")).collect();
    let last = summaries.last().copied().unwrap_or_default();
    anyhow::ensure!(
        summaries.len() >= 2 && !last.contains("machines 0 active"),
        "the controllers come alive:\n{text}"
    );
    anyhow::ensure!(
        !last.contains("revenue today $0.00"),
        "the controllers sell: {last}"
    );
    // "controllers: 200 machines sent E events in V envelopes; W wait for their delivery
    // receipt": the outboxes let go of what the source receipted (only the last moments' wait).
    let numbers = |line: &str| -> Vec<u64> {
        line.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let report = text
        .lines()
        .find(|l| l.starts_with("controllers: "))
        .unwrap_or_default();
    let (sent, waiting) = match numbers(report)[..] {
        [_, sent, _, waiting] => (sent, waiting),
        _ => anyhow::bail!("no controllers' report:\n{text}"),
    };
    anyhow::ensure!(
        sent > 0 && waiting * 5 < sent,
        "the controllers' outboxes were receipted: {report}"
    );
    let end = text.lines().last().unwrap_or_default();
    anyhow::ensure!(
        end.starts_with("stopped: ")
            && !end.starts_with("stopped: 0 envelopes")
            && end.ends_with(", 0 refused."),
        "{text}"
    );
    Ok(())
}

/// `device register` prints a secret once and stores only the public key; `device revoke`
/// takes the key out, and says so when there was none.
#[test]
fn device_credentials_are_registered_and_revoked() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("credentials.jsonl");
    let file_arg = file.display().to_string();
    let out = vendflow(&[
        "device",
        "register",
        "mach_00042",
        "--credentials",
        &file_arg,
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "{out:?}");
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(secret.len(), 64, "a 256-bit secret in hex: {secret:?}");
    let stored = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    assert!(stored.contains("\"machineId\":\"mach_00042\""), "{stored}");
    assert!(
        !stored.contains(&secret),
        "the secret itself is stored nowhere"
    );

    let out = vendflow(&["device", "revoke", "mach_00042", "--credentials", &file_arg])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.status.success(), "{out:?}");
    let stored = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
    assert!(!stored.contains("mach_00042"), "{stored}");
    let again = vendflow(&["device", "revoke", "mach_00042", "--credentials", &file_arg]);
    let text = format!(
        "{:#}",
        again
            .err()
            .unwrap_or_else(|| panic!("nothing to revoke is an error"))
    );
    assert!(text.contains("no credentials"), "{text}");
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

/// `vendflow replay … | head`: the reader closing the pipe ends the process quietly (status
/// 141, as Unix tools), not with a panic.
#[test]
fn replay_into_a_closed_pipe_ends_quietly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let events = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/golden/events.jsonl"
    );
    let mut child = Command::new(vendflow_bin()?)
        .args(["replay", events, "--out"])
        .arg(dir.path())
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Closed before anything is written: the first line finds no reader.
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
    Ok(())
}

/// `demo --http`: machines on HTTP go through the embedded broker into the same dataflows, and
/// the views are served on the same port.
/// A valid envelope is acknowledged; one whose sale has fields of the wrong type is accepted by
/// HTTP (its signature is fine) and refused by the dataflows' decoder, which the demo's final
/// count shows; a wrong token gets 401.
#[test]
fn demo_takes_telemetry_over_http_into_the_dataflows() -> anyhow::Result<()> {
    use vendflow_protocol::auth::sign_raw;
    let Some(curl) = vendflow_tests::require_program("curl", &[])? else {
        return Ok(());
    };
    let port = vendflow_tests::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    // The demo runs until the checks below are done and it is stopped (SIGTERM): a fixed
    // duration raced them on a loaded CI machine (connection refused on a late query). The
    // duration only bounds a run whose test died.
    let demo = Command::new(vendflow_bin()?)
        .args([
            "demo",
            "--machines",
            "5",
            "--speed",
            "600",
            "--duration",
            "300",
        ])
        .args(["--every", "1", "--http", &addr])
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // The demo prints an admin token for the API; read its output as it comes.
    let mut demo = demo;
    let stdout = demo.stdout.take().context("demo stdout")?;
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let token = loop {
        let line = lines_rx.recv_timeout(std::time::Duration::from_secs(20))?;
        printed.push(line.clone());
        if let Some((_, t)) = line.split_once("admin token (tenant *): ") {
            break t.trim().to_owned();
        }
    };
    let bearer = format!("Authorization: Bearer {token}");
    vendflow_tests::wait_for_port(port, std::time::Duration::from_secs(10))?;
    let secret = vendflow_firmware::mqtt::simulated_secret(7, "mach_00001");
    let key = vendflow_protocol::auth::MachineKey::from_secret(&secret);
    let now = vendflow_protocol::Timestamp::now().0;
    let url = format!("http://{addr}/api/telemetry");
    let post = |body: &str, token: &str| {
        let token = format!("X-Machine-Token: {token}");
        vendflow_tests::curl_post(
            &curl,
            &["-H", "X-Machine-Id: mach_00001", "-H", &token],
            body,
            &url,
        )
    };
    // Events are dated in the demo's simulated time (its ingestion clock starts at the fleet's
    // start, 2024-01-15T08:00Z): one dated by the wall clock would be years ahead of it, and
    // refused as dated in the future. `sentAt` is the wall clock, as the signature check wants.
    let at = 1_705_305_600_000i64;
    let heartbeat = format!(r#"[{{"type":"heartbeat","timestamp":{at},"payload":{{}}}}]"#);
    let good = sign_raw("mach_00001", &heartbeat, &key, now, "demo-http-1");
    let (code, body) = post(&good, &secret)?;
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"ack\":true"), "{body}");
    let wrong = format!(
        r#"[{{"type":"sale","timestamp":{at},"payload":{{"slotNumber":"one","amount":1,"transactionId":"t"}}}}]"#
    );
    let wrong = sign_raw("mach_00001", &wrong, &key, now, "demo-http-2");
    let (code, body) = post(&wrong, &secret)?;
    assert_eq!(code, "200", "{body}");
    let (code, body) = post(&good, "not-the-secret")?;
    assert_eq!(code, "401", "{body}");

    // The views on the same port: a snapshot as JSON, and live changes as Server-Sent Events.
    let get = |path: &str, seconds: &str| -> anyhow::Result<String> {
        let out = Command::new(&curl)
            .args([
                "-s",
                "-N",
                "-H",
                &bearer,
                "--max-time",
                seconds,
                &format!("http://{addr}{path}"),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let started = std::time::Instant::now();
    let rows = loop {
        let liveness: serde_json::Value = serde_json::from_str(&get("/views/liveness", "5")?)?;
        let rows = liveness["rows"].as_array().cloned().unwrap_or_default();
        if rows.len() == 5 || started.elapsed() > std::time::Duration::from_secs(5) {
            break rows;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(rows.len(), 5, "one liveness row per machine: {rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["machine_id"].is_string() && r["status"].is_string())
    );
    let stream = get("/views/liveness/subscribe", "3")?;
    let snapshot = stream.find("event: snapshot");
    let change = stream.find("event: change");
    assert!(
        snapshot.is_some() && change.is_some() && snapshot < change,
        "a snapshot first, then changes as the machines report: {stream}"
    );
    assert!(get("/views/nope", "5")?.contains("not_found"));
    // Without a token nothing is served but health, metrics and the API's description.
    let out = Command::new(&curl)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{addr}/views"),
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let fleet: serde_json::Value = serde_json::from_str(&get("/api/dashboard/fleet", "5")?)?;
    assert_eq!(fleet["totals"]["total"], 5, "{fleet}");
    // The OpenAPI document it serves passes an independent validator (openapi-spec-validator).
    if let Some(python) = vendflow_tests::python_with(&["openapi_spec_validator"])? {
        let doc = tempfile::NamedTempFile::new()?;
        std::fs::write(doc.path(), get("/api/openapi.json", "5")?)?;
        let out = Command::new(python)
            .args(["-m", "openapi_spec_validator"])
            .arg(doc.path())
            .output()?;
        assert!(
            out.status.success(),
            "the OpenAPI document is not valid:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // SQL over one snapshot of every view; read-only.
    let sql_url = format!("http://{addr}/sql");
    let sql = |query: &str, accept: &str| {
        let accept = format!("Accept: {accept}");
        vendflow_tests::curl_post(&curl, &["-H", &accept, "-H", &bearer], query, &sql_url)
    };
    let (code, body) = sql("SELECT count(*) AS n FROM liveness", "application/json")?;
    assert_eq!(code, "200", "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(answer["rows"][0]["n"], 5, "{body}");
    let (code, body) = sql(
        "SELECT l.machine_id, count(*) AS slots FROM liveness l \
         JOIN inventory i ON i.machine_id = l.machine_id GROUP BY l.machine_id ORDER BY 1",
        "text/csv",
    )?;
    assert_eq!(code, "200", "{body}");
    assert!(body.starts_with("machine_id,slots\nmach_00000,"), "{body}");
    let (code, body) = sql("DROP TABLE liveness", "application/json")?;
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("read-only"), "{body}");
    let (code, body) = sql("SELECT nope FROM liveness", "application/json")?;
    assert_eq!(code, "400", "{body}");
    // Stop the demo once a fleet summary has counted the malformed envelope, then wait for its
    // orderly stop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !printed
        .iter()
        .any(|l| l.contains(" active / ") && l.ends_with("| refused 1"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .with_context(|| format!("no summary counted the refused envelope: {printed:?}"))?;
        printed.push(line);
    }
    Command::new("kill").arg(demo.id().to_string()).status()?;
    demo.wait()?;
    let _ = reader.join();
    printed.extend(lines_rx.try_iter());
    let text = printed.join("\n");
    // The fleet summary counts the dataflows' error records: exactly that one (the summaries
    // show the views as they were each second, so look at all of them).
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" active / "))
        .filter_map(|l| l.rsplit_once("| refused ").map(|(_, n)| n))
        .collect();
    assert!(
        refused.contains(&"1") && refused.iter().all(|n| *n == "0" || *n == "1"),
        "the envelope with a malformed sale reached the dataflows' decoder: {text}"
    );
    Ok(())
}

/// The demo's Postgres endpoint takes a token as the password and scopes by its tenant: the
/// admin token sees the fleet, a wrong password is refused with a clear message, a tenant's
/// token sees its client's rows only (and no archive). Every path goes through the one SQL gate,
/// each hole found in issue 12 replayed as it was found: a cursor answers a tenant's rows only,
/// `SELECT … INTO` is refused on every path (so no tenant writes a table another reads), a
/// session's `SET` of the engine's settings is refused and breaks nothing for anyone, answers
/// are bounded in size, and prepared statements (the extended protocol, which `psycopg` uses
/// for parameters and prepared statements) are scoped and timed like simple queries.
#[test]
fn demo_postgres_endpoint_takes_tokens_as_passwords() -> anyhow::Result<()> {
    let Some(psql) = vendflow_tests::require_program("psql", &[])? else {
        return Ok(());
    };
    let Some(python) = vendflow_tests::python_with(&["psycopg"])? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("archive");
    let (http, pg) = (vendflow_tests::free_port()?, vendflow_tests::free_port()?);
    // TLS on both endpoints: psql and psycopg use it by default (sslmode=prefer), curl checks
    // the certificate.
    let openssl = vendflow_tests::require_program("openssl", &[])?.context("openssl")?;
    let (cert, key) = vendflow_tests::self_signed(&openssl, dir.path())?;
    let demo = vendflow_tests::Daemon::spawn(
        "demo",
        &vendflow_bin()?,
        &[
            "demo",
            "--machines",
            "20",
            "--speed",
            "60",
            "--duration",
            "60",
            "--http",
            &format!("127.0.0.1:{http}"),
            "--pg",
            &format!("127.0.0.1:{pg}"),
            "--archive",
            &archive.display().to_string(),
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
        &dir.path().join("demo.log"),
    )?;
    let admin = demo.wait_for_line(
        "admin token (tenant *): ",
        std::time::Duration::from_secs(30),
    )?;
    vendflow_tests::wait_for_port(pg, std::time::Duration::from_secs(10))?;
    let query = |password: &str, sql: &str| vendflow_tests::psql(&psql, pg, Some(password), sql);
    // The admin token: the whole fleet, once every machine has reported.
    let mut seen = String::new();
    for _ in 0..100 {
        let (ok, out, err) = query(&admin, "SELECT count(*) FROM liveness")?;
        assert!(ok, "{err}");
        seen = out;
        if seen == "20" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(seen, "20");
    // Encrypted, and a token is never taken over a cleartext connection.
    let (ok, out, err) = query(&admin, "\\conninfo")?;
    assert!(ok && out.contains("SSL connection"), "{out} {err}");
    let plain = Command::new(&psql)
        .args(["-X", "-At", "-c", "SELECT 1"])
        .arg(format!(
            "host=127.0.0.1 port={pg} user=vendflow sslmode=disable connect_timeout=10"
        ))
        .env("PGPASSWORD", &admin)
        .output()?;
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success() && err.contains("TLS only"), "{err}");
    let (ok, _, err) = query("vf_00000000_nope", "SELECT 1")?;
    assert!(!ok);
    assert!(
        err.contains("password authentication failed") && err.contains("vendflow token"),
        "{err}"
    );
    // A tenant's token, made while the demo runs (the token file is reread).
    let (_, clients, err) = query(&admin, "SELECT DISTINCT client_id FROM leases ORDER BY 1")?;
    let client = clients.lines().next().context("no leases")?.to_owned();
    assert!(
        clients.lines().count() > 1,
        "several clients: {clients} {err}"
    );
    let out = vendflow(&[
        "token",
        "create",
        "--role",
        "viewer",
        "--tenant",
        &client,
        "--tokens",
        &archive.join("tokens.jsonl").display().to_string(),
    ])?;
    let printed = String::from_utf8_lossy(&out.stdout);
    let tenant = printed
        .split_whitespace()
        .find(|w| w.starts_with("vf_"))
        .with_context(|| format!("no token in {printed}"))?
        .to_owned();
    let (ok, out, err) = query(&tenant, "SELECT DISTINCT client_id FROM leases")?;
    assert!(ok, "{err}");
    assert_eq!(out, client);
    let (ok, _, err) = query(&tenant, "SELECT count(*) FROM events")?;
    assert!(!ok && err.contains("tenant *"), "{err}");
    let scoped = |sql: &str| -> anyhow::Result<String> {
        let (ok, out, err) = query(&tenant, sql)?;
        assert!(ok, "{sql}: {err}");
        Ok(out)
    };
    let own = scoped("SELECT count(DISTINCT machine_id) FROM liveness")?;
    let own_n: usize = own.parse()?;
    assert!(own_n > 0 && own_n < 20, "the tenant's machines: {own}");
    // Hole 1: a cursor answered the whole fleet (200 of 200 in the issue). Now the tenant's.
    // (psql prints each statement's result: BEGIN, DECLARE CURSOR, then the fetched row.)
    let fetched = scoped(
        "BEGIN; DECLARE c CURSOR FOR SELECT count(DISTINCT machine_id) FROM liveness; FETCH ALL FROM c",
    )?;
    assert_eq!(fetched.lines().last(), Some(own.as_str()), "{fetched}");
    // Hole 2: SELECT … INTO through a cursor wrote a table every token could read.
    let curl = vendflow_tests::require_program("curl", &[])?.context("curl")?;
    let (ok, _, err) = query(
        &tenant,
        "DECLARE d CURSOR FOR SELECT * INTO leak FROM inventory; CLOSE d",
    )?;
    assert!(!ok && err.contains("read-only"), "{err}");
    let (ok, _, err) = query(&tenant, "SELECT * INTO leak FROM inventory")?;
    assert!(!ok && err.contains("read-only"), "{err}");
    let sql_url = format!("https://127.0.0.1:{http}/sql");
    let cacert = cert.display().to_string();
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    let (status, body) = vendflow_tests::curl_post(
        &curl,
        &["--cacert", &cacert, "-H", &bearer(&admin)],
        "SELECT count(*) FROM leak",
        &sql_url,
    )?;
    assert_eq!(status, "400", "no table leak: {body}");
    assert!(body.contains("leak"), "{body}");
    // Hole 3: SET of the engine's own settings broke SQL for every user.
    let (ok, _, err) = query(
        &tenant,
        "SET \"datafusion\".catalog.default_schema = 'nope'",
    )?;
    assert!(!ok && err.contains("configuration parameter"), "{err}");
    let (ok, _, err) = query(&tenant, "SET datafusion.execution.time_zone = '+05:00'")?;
    assert!(!ok, "{err}");
    let (ok, out, err) = query(&admin, "SELECT count(*) FROM liveness")?;
    assert!(ok && out == "20", "{out} {err}");
    let (status, body) = vendflow_tests::curl_post(
        &curl,
        &["--cacert", &cacert, "-H", &bearer(&admin)],
        "SELECT count(*) AS n FROM liveness",
        &sql_url,
    )?;
    assert!(
        status == "200" && body.contains("\"n\":20"),
        "{status} {body}"
    );
    // The API answers over HTTPS only, with the security headers.
    let (status, _) = vendflow_tests::curl_post(
        &curl,
        &["-H", &bearer(&admin)],
        "SELECT 1",
        &format!("http://127.0.0.1:{http}/sql"),
    )?;
    assert_ne!(status, "200", "plain HTTP on the HTTPS port");
    let headers = Command::new(&curl)
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert", &cacert])
        .arg(format!("https://127.0.0.1:{http}/"))
        .output()?;
    let headers = String::from_utf8_lossy(&headers.stdout).to_ascii_lowercase();
    assert!(
        headers.contains("content-security-policy: default-src 'self'")
            && headers.contains("x-content-type-options: nosniff")
            && headers.contains("x-frame-options: deny"),
        "{headers}"
    );
    // A session's own settings are its own.
    let shown = scoped("SET application_name = 'report'; SHOW application_name")?;
    assert_eq!(shown.lines().last(), Some("report"), "{shown}");
    // Answers are bounded.
    let (ok, _, err) = query(&tenant, "SELECT * FROM range(100000000000)")?;
    assert!(!ok && err.contains("larger than"), "{err}");
    // The extended protocol (parameters, a named prepared statement): scoped like simple
    // queries, and timed over every row it produces.
    let script = dir.path().join("extended.py");
    std::fs::write(
        &script,
        format!(
            "import sys, psycopg\n\
             with psycopg.connect(host='127.0.0.1', port={pg}, user='analyst', password=sys.argv[1], dbname='vendflow', autocommit=True) as c:\n\
             \x20   print(c.execute('SELECT count(*) FROM liveness WHERE machine_id <> %s', ('none',)).fetchone()[0])\n\
             \x20   print(c.execute('SELECT count(DISTINCT machine_id) FROM liveness WHERE machine_id <> %s', ('none',), prepare=True).fetchone()[0])\n\
             \x20   c.execute('SET statement_timeout = 500')\n\
             \x20   try:\n\
             \x20       c.execute('SELECT sum(value) FROM range(100000000000) WHERE value <> %s', (-1,))\n\
             \x20       print('no timeout')\n\
             \x20   except psycopg.errors.QueryCanceled as e:\n\
             \x20       print('canceled')\n"
        ),
    )?;
    let run = |token: &str| -> anyhow::Result<Vec<String>> {
        let out = Command::new(&python).arg(&script).arg(token).output()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    };
    assert_eq!(run(&admin)?, ["20", "20", "canceled"]);
    assert_eq!(run(&tenant)?, [own.as_str(), own.as_str(), "canceled"]);
    drop(demo);
    Ok(())
}

/// `maintenance train`: a short simulated history through the engine gives a model file that
/// says what it was trained on and how it scored, and that `--maintenance-model` runs with;
/// options that leave nothing to train on, and a model file that does not fit, are refused
/// with the reason.
#[test]
fn maintenance_train_writes_a_model_that_the_engine_then_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("model.json");
    let model_arg = model.to_string_lossy().into_owned();
    let out = vendflow(&[
        "--workers",
        "1",
        "maintenance",
        "train",
        "--machines",
        "40",
        "--days",
        "36",
        "--holdout-days",
        "14",
        "--failures-per-year",
        "24",
        "--out",
        &model_arg,
    ])?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "trained on days 1..22",
        "held out days 23..36",
        "fixed rule",
        "precision",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&model)?)?;
    let trained = &written["trained"];
    assert_eq!(trained["machines"], 40, "{written}");
    assert!(trained["train_positives"].as_u64() > Some(0), "{written}");
    assert!(trained["holdout_failures"].as_u64() > Some(0), "{written}");
    // The engine runs with it: a replay of a simulated day lists the view.
    let events = dir.path().join("sim");
    vendflow(&[
        "simulate",
        "--machines",
        "3",
        "--hours",
        "2",
        "--out",
        &events.to_string_lossy(),
    ])?;
    let views = dir.path().join("views");
    vendflow(&[
        "--maintenance-model",
        &model_arg,
        "replay",
        &events.join("events.jsonl").to_string_lossy(),
        "--out",
        &views.to_string_lossy(),
    ])?;
    let header = std::fs::read_to_string(views.join("maintenance_candidates.csv"))?;
    assert!(header.starts_with("machine_id,hour_start,failure_probability,flagged,reasons"));

    let bin = vendflow_bin()?;
    let refused = Command::new(&bin)
        .args([
            "maintenance",
            "train",
            "--days",
            "30",
            "--holdout-days",
            "20",
        ])
        .output()?;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("leaves too few of --days 30"), "{err}");
    std::fs::write(&model, "{\"version\": 2}")?;
    let refused = Command::new(&bin)
        .args([
            "--maintenance-model",
            &model_arg,
            "replay",
            "x.jsonl",
            "--out",
            "never",
        ])
        .output()?;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("is not a model file"), "{err}");
    Ok(())
}

/// `--holidays` reaches the stockout forecast: the golden scenario's two days (08:00 on
/// 2024-01-15 to 08:00 the next day) named holidays leave the machines no working day to learn
/// a level from, so no slot with units left is forecast to run out; without the calendar the
/// same replay forecasts them. A date that is not
/// one is refused with its file and line.
#[test]
fn a_holiday_calendar_reaches_the_stockout_forecast() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fixtures = vendflow_tests::root().join("fixtures/golden");
    let (events, registry) = (
        fixtures.join("events.jsonl").to_string_lossy().into_owned(),
        fixtures
            .join("registry.jsonl")
            .to_string_lossy()
            .into_owned(),
    );
    let calendar = dir.path().join("holidays.txt");
    std::fs::write(
        &calendar,
        "# Martin Luther King Jr. Day\n2024-01-15\n2024-01-16 # and the day after\n",
    )?;
    let calendar = calendar.to_string_lossy().into_owned();
    let forecast = |holidays: Option<&str>, out: &str| -> anyhow::Result<Vec<(i64, String)>> {
        let out = dir.path().join(out);
        let out_arg = out.to_string_lossy().into_owned();
        let mut args = Vec::new();
        if let Some(file) = holidays {
            args.extend(["--holidays", file]);
        }
        args.extend([
            "replay",
            &events,
            "--registry",
            &registry,
            "--out",
            &out_arg,
        ]);
        vendflow(&args)?;
        let table = vendflow_tests::Table::read(&out.join("stockout_forecast.csv"))?;
        let (units, hours) = (table.col("units")?, table.col("hours_to_empty")?);
        table
            .rows
            .iter()
            .map(|r| Ok((r[units].parse()?, r[hours].clone())))
            .collect()
    };
    let plain = forecast(None, "plain")?;
    let with = forecast(Some(&calendar), "holidays")?;
    assert_eq!(plain.len(), with.len());
    let stocked = |rows: &[(i64, String)]| {
        rows.iter()
            .filter(|(units, hours)| *units > 0 && !hours.is_empty())
            .count()
    };
    assert!(stocked(&plain) > 10, "{plain:?}");
    assert_eq!(stocked(&with), 0, "{with:?}");
    // Empty slots are empty either way.
    let empty = |rows: &[(i64, String)]| rows.iter().filter(|(u, h)| *u <= 0 && h == "0.0").count();
    assert_eq!(empty(&plain), empty(&with));

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "2024-01-01\n2024-02-30\n")?;
    let refused = Command::new(vendflow_bin()?)
        .arg("--holidays")
        .arg(&bad)
        .args(["replay", &events, "--out"])
        .arg(dir.path().join("never"))
        .env("RUST_BACKTRACE", "0")
        .output()?;
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("bad.txt line 2: not a holiday"), "{err}");
    Ok(())
}

/// An engine started without `--state-dir` keeps its state in a new directory under the system's
/// temporary one and removes it when it ends; killed with `kill -9`, it cannot, and the next
/// engine to start without one removes it (once it is a minute old: its lock is free).
#[test]
fn the_state_of_a_killed_engine_is_reclaimed_by_the_next() -> anyhow::Result<()> {
    use std::time::{Duration, Instant, SystemTime};
    let dir = tempfile::tempdir()?;
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp)?;
    let events = dir.path().join("events.jsonl");
    let lines: String = (0..200)
        .map(|i| {
            format!(
                "{{\"machineId\":\"m{:03}\",\"type\":\"heartbeat\",\"timestamp\":{},\"payload\":{{\"temperature\":5.0,\"doorStatus\":\"closed\"}}}}\n",
                i % 7,
                1_700_000_000_000_i64 + i * 1000
            )
        })
        .collect();
    std::fs::write(&events, lines)?;
    let state_dirs = || -> anyhow::Result<Vec<std::path::PathBuf>> {
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(&tmp)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vendflow-state-"))
            {
                dirs.push(path);
            }
        }
        Ok(dirs)
    };
    // A paced replay (two events a second) stands for a long-running engine.
    let mut running = Command::new(vendflow_bin()?)
        .args(["replay", &events.to_string_lossy(), "--rate", "2", "--out"])
        .arg(dir.path().join("never"))
        .env("TMPDIR", &tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let killed = loop {
        if let [one] = state_dirs()?.as_slice()
            && one.join("owner.lock").exists()
        {
            break one.clone();
        }
        if let Some(status) = running.try_wait()? {
            anyhow::bail!("the paced replay ended ({status}) before it was killed");
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the engine made no state directory under {}",
            tmp.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    running.kill()?;
    running.wait()?;
    assert!(killed.exists(), "kill -9 leaves the state directory behind");
    let out = dir.path().join("out");
    let replay = |what: &str| -> anyhow::Result<()> {
        let done = Command::new(vendflow_bin()?)
            .args(["replay", &events.to_string_lossy(), "--out"])
            .arg(&out)
            .env("TMPDIR", &tmp)
            .env("RUST_LOG", "info")
            .output()?;
        anyhow::ensure!(
            done.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        Ok(())
    };
    // Under a minute old, it may be an engine setting up: kept.
    replay("a replay beside a new directory")?;
    assert!(killed.exists(), "a new directory is not reclaimed");
    std::fs::File::options()
        .write(true)
        .open(killed.join("owner.lock"))?
        .set_modified(SystemTime::now() - Duration::from_secs(120))?;
    replay("a replay after a killed engine")?;
    assert_eq!(
        state_dirs()?,
        Vec::<std::path::PathBuf>::new(),
        "the killed engine's directory is reclaimed, the replay's own removed"
    );
    Ok(())
}
