//! Helpers for the end-to-end tests: the real binary, the shared workload scripts, Python with
//! DuckDB, and CSV reading.
//!
//! The tests run the `vendflow` binary built next to them (`cargo build --bins` first; the test
//! script does). Anything external they need is installed by `tests/run-all.sh`; under `CI=true`
//! or `tests/run-all.sh` a missing tool is a failure, never a skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The benchmark workload's generator and DuckDB reference (`benches/workload/`, kept in the
/// repository so no test reads files outside it).
pub fn workload_scripts() -> PathBuf {
    root().join("benches").join("workload")
}

/// The `vendflow` binary of this build.
pub fn vendflow_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("VENDFLOW_BIN") {
        return Ok(PathBuf::from(p));
    }
    // Tests run from target/<profile>/deps/; the binary is in target/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let bin = profile_dir.join("vendflow");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --bins` first (tests/run-all.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `vendflow ARGS`, failing with its output if it fails.
pub fn vendflow(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(vendflow_bin()?)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()?;
    if !out.status.success() {
        bail!(
            "vendflow {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A Python with `duckdb` and `pyarrow`. `None` means "skip", unless [`tools_required`].
pub fn python_with_duckdb() -> anyhow::Result<Option<PathBuf>> {
    python_with(&["duckdb", "pyarrow"])
}

/// A Python (`$VENDFLOW_PYTHON`, or `python3`) that can import `modules`. `None`
/// means "skip", unless [`tools_required`] (then it is an error).
pub fn python_with(modules: &[&str]) -> anyhow::Result<Option<PathBuf>> {
    let python = std::env::var("VENDFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let import = format!("import {}", modules.join(", "));
    let ok = Command::new(&python)
        .args(["-c", &import])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(Some(PathBuf::from(python)));
    }
    let names = modules.join(", ");
    if tools_required() {
        bail!("{python} cannot import {names}; tests/run-all.sh installs them");
    }
    eprintln!("skipping: {python} has no {names} (run tests/run-all.sh to install them)");
    Ok(None)
}

/// Runs a Python script, failing with its output if it fails.
pub fn run_python(python: &Path, args: &[&Path]) -> anyhow::Result<Output> {
    let out = Command::new(python).args(args).output()?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed:\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A CSV file as header → column index, and rows.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn read(path: &Path) -> anyhow::Result<Table> {
        let mut reader =
            csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
        let header = reader.headers()?.iter().map(str::to_owned).collect();
        let rows = reader
            .records()
            .map(|r| r.map(|r| r.iter().map(str::to_owned).collect()))
            .collect::<Result<_, _>>()?;
        Ok(Table { header, rows })
    }

    pub fn col(&self, name: &str) -> anyhow::Result<usize> {
        self.header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no column {name} in {:?}", self.header))
    }

    /// Rows as maps from column name to cell.
    pub fn records(&self) -> Vec<BTreeMap<&str, &str>> {
        self.rows
            .iter()
            .map(|r| {
                self.header
                    .iter()
                    .map(String::as_str)
                    .zip(r.iter().map(String::as_str))
                    .collect()
            })
            .collect()
    }
}

/// Exact decimal text → integer in units of 10^-scale (`"2.5"`, 2 → 250).
pub fn fixed(text: &str, scale: u32) -> anyhow::Result<i64> {
    let (neg, digits) = match text.trim().strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.trim()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let frac = frac.trim_end_matches('0');
    if frac.len() > scale as usize {
        bail!("{text} has more than {scale} decimals");
    }
    let mut value: i64 = int
        .parse()
        .with_context(|| format!("{text} is not a decimal"))?;
    for i in 0..scale as usize {
        let d = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        value = value * 10 + d;
    }
    Ok(if neg { -value } else { value })
}

/// Whether a missing tool is a failure, not a skip: under `CI=true`, and under
/// `tests/run-all.sh` (which installs every tool, so a missing one is its bug:
/// it sets `VENDFLOW_TOOLS_REQUIRED=1`). A bare `cargo test` on a laptop skips instead.
pub fn tools_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("VENDFLOW_TOOLS_REQUIRED").is_ok_and(|v| v == "1")
}

/// `mosquitto`, where Debian puts it or on the PATH ([`require_program`]).
pub fn require_mosquitto() -> anyhow::Result<Option<PathBuf>> {
    require_program("mosquitto", &[PathBuf::from("/usr/sbin/mosquitto")])
}

/// `tansu`, where `tests/install.sh` puts it (`cargo install`) or on the PATH.
pub fn require_tansu() -> anyhow::Result<Option<PathBuf>> {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    require_program("tansu", &[home.join(".cargo/bin/tansu")])
}

/// Finds an external program; `None` means skip (only when not [`tools_required`]).
pub fn require_program(name: &str, candidates: &[PathBuf]) -> anyhow::Result<Option<PathBuf>> {
    let found = candidates.iter().find(|p| p.exists()).cloned().or_else(|| {
        Command::new("which")
            .arg(name)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    });
    match found {
        Some(p) => Ok(Some(p)),
        None if tools_required() => bail!("{name} is not installed; tests/run-all.sh installs it"),
        None => {
            eprintln!("skipping: {name} is not installed (tests/run-all.sh installs it)");
            Ok(None)
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `curl -s` with `args`, POSTing `body` to `url`: (HTTP status, response body).
pub fn curl_post(
    curl: &Path,
    args: &[&str],
    body: &str,
    url: &str,
) -> anyhow::Result<(String, String)> {
    let out = Command::new(curl)
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .args(["--data-binary", body, url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    Ok((code.trim().to_owned(), body.to_owned()))
}

/// `psql -c SQL` on 127.0.0.1:`port` (with `password`, a token, if given): (success, stdout,
/// stderr).
pub fn psql(
    program: &Path,
    port: u16,
    password: Option<&str>,
    sql: &str,
) -> anyhow::Result<(bool, String, String)> {
    let mut command = Command::new(program);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "vendflow"])
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
    if let Some(p) = password {
        command.env("PGPASSWORD", p);
    }
    let out = command.output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Where tests leave files for people to look at (screenshots): `$VENDFLOW_ARTIFACTS`, or
/// `artifacts/` in the checkout.
pub fn artifacts() -> PathBuf {
    std::env::var_os("VENDFLOW_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("artifacts"))
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Free loopback ports for MQTT, Kafka and an HTTP endpoint, and their `127.0.0.1:PORT`
/// addresses: what every test and bench on the real brokers starts with.
pub struct Loopback {
    pub mqtt_port: u16,
    pub kafka_port: u16,
    pub http_port: u16,
    pub mqtt: String,
    pub kafka: String,
    pub http: String,
}

impl Loopback {
    pub fn new() -> anyhow::Result<Loopback> {
        let (mqtt_port, kafka_port, http_port) = (free_port()?, free_port()?, free_port()?);
        let at = |port: u16| format!("127.0.0.1:{port}");
        Ok(Loopback {
            mqtt: at(mqtt_port),
            kafka: at(kafka_port),
            http: at(http_port),
            mqtt_port,
            kafka_port,
            http_port,
        })
    }
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, timeout: std::time::Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// The last 15 lines of a log, for failure messages.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A background process, killed (SIGKILL) when dropped; its output goes to `log`.
pub struct Daemon {
    pub name: String,
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `program` with `RUST_LOG=info` (vendflow's own processes).
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Daemon> {
        Daemon::spawn_with(name, program, args, log, "info")
    }

    pub fn spawn_with(
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
        rust_log: &str,
    ) -> anyhow::Result<Daemon> {
        Self::spawn_in(name, program, args, log, rust_log, None)
    }

    /// [`Daemon::spawn_with`] in the working directory `cwd`.
    pub fn spawn_in(
        name: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
        rust_log: &str,
        cwd: Option<&Path>,
    ) -> anyhow::Result<Daemon> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = Command::new(program);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let child = command
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LOG", rust_log)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        Ok(Daemon {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()?;
        Ok(())
    }

    /// Waits until a line of its log contains `marker`; answers the rest of that line.
    pub fn wait_for_line(
        &self,
        marker: &str,
        timeout: std::time::Duration,
    ) -> anyhow::Result<String> {
        let started = std::time::Instant::now();
        loop {
            let log = self.output();
            if let Some(rest) = log
                .lines()
                .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim().to_owned()))
            {
                return Ok(rest);
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} never logged {marker:?}; its last lines:\n{}",
                    self.name,
                    tail(&log)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Its log so far (for failure messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Mosquitto on a free port, with persistence in `dir` (a restart keeps sessions and queues).
pub fn start_mosquitto(program: &Path, dir: &Path, port: u16) -> anyhow::Result<Daemon> {
    start_mosquitto_tls(program, dir, port, None, None)
}

/// [`start_mosquitto`], with a second listener that speaks MQTT over TLS: (its port, the
/// certificate and key in PEM).
pub fn start_mosquitto_tls(
    program: &Path,
    dir: &Path,
    port: u16,
    tls: Option<(u16, &Path, &Path)>,
    client_ca: Option<&Path>,
) -> anyhow::Result<Daemon> {
    let conf = dir.join("mosquitto.conf");
    // A listener's settings follow its `listener` line, so the TLS one comes last. With
    // `client_ca`, it takes only clients with a certificate that CA signed, and a client's
    // certificate name is its MQTT user.
    let tls_listener = tls.map_or(String::new(), |(port, cert, key)| {
        let clients = client_ca.map_or(String::new(), |ca| {
            format!(
                "cafile {}\nrequire_certificate true\nuse_identity_as_username true\n",
                ca.display()
            )
        });
        format!(
            "listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n{clients}",
            cert.display(),
            key.display()
        )
    });
    std::fs::write(
        &conf,
        format!(
            // `user root`: mosquitto started as root otherwise drops to user `mosquitto`, which
            // cannot write its persistence file into the test's private directory.
            // `autosave_interval 5`: the in-memory database (sessions, queued messages) is
            // written every 5 s, not every 30 minutes, so a `kill -9` finds the sessions saved.
            // Each save rewrites the whole file from Mosquitto's one thread: at 1 s, a queue
            // grown to 145 MB behind a slow subscriber was saved back to back and Mosquitto
            // delivered ~100 messages a second. What a kill loses since the last save the
            // machines send again (their delivery receipts).
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nautosave_interval 5\n\
             max_inflight_messages 200\nmax_queued_messages 0\n{}{tls_listener}",
            dir.display(),
            if is_root() { "user root\n" } else { "" }
        ),
    )?;
    let conf_text = conf.display().to_string();
    let daemon = Daemon::spawn(
        "mosquitto",
        program,
        &["-c", &conf_text],
        &dir.join("mosquitto.log"),
    )?;
    wait_for_port(port, std::time::Duration::from_secs(10))?;
    if let Some((port, ..)) = tls {
        wait_for_port(port, std::time::Duration::from_secs(10))?;
    }
    Ok(daemon)
}

/// Where tansu keeps its log.
#[derive(Clone, Copy, Debug)]
pub enum TansuStorage {
    /// In memory: gone when the process is.
    Memory,
    /// In `tansu.db` (SQLite, write-ahead log) in the daemon's directory: a `kill -9` keeps
    /// every record tansu acknowledged.
    Sqlite,
    /// [`TansuStorage::Sqlite`], with tansu's maintenance every second: records older than a
    /// topic's `retention.ms` are deleted then (the default is every 10 minutes).
    SqliteMaintained,
}

/// tansu (a Kafka-protocol broker) on a free port, storing in memory.
pub fn start_tansu(program: &Path, dir: &Path, port: u16) -> anyhow::Result<Daemon> {
    start_tansu_with(program, dir, port, TansuStorage::Memory)
}

/// tansu on `port`, storing as `storage` says (its SQLite file in `dir`, found again by a
/// restart in the same `dir`).
pub fn start_tansu_with(
    program: &Path,
    dir: &Path,
    port: u16,
    storage: TansuStorage,
) -> anyhow::Result<Daemon> {
    let url = format!("tcp://127.0.0.1:{port}");
    // tansu resolves a sqlite:// path against its working directory.
    let engine = match storage {
        TansuStorage::Memory => "memory://tansu/",
        TansuStorage::Sqlite => "sqlite://tansu.db",
        TansuStorage::SqliteMaintained => "sqlite://tansu.db?maintenance_interval=1s",
    };
    let daemon = Daemon::spawn_in(
        "tansu",
        program,
        &[
            "broker",
            "--storage-engine",
            engine,
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ],
        &dir.join("tansu.log"),
        "warn",
        Some(dir),
    )?;
    wait_for_port(port, std::time::Duration::from_secs(20))?;
    Ok(daemon)
}

/// A self-signed certificate for 127.0.0.1, made with `openssl`: (certificate, key).
pub fn self_signed(openssl: &Path, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    run_openssl(
        openssl,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            &text(&key),
            "-out",
            &text(&cert),
        ],
        "a certificate",
    )?;
    Ok((cert, key))
}

/// A certificate authority and a server certificate it signed for 127.0.0.1, made with
/// `openssl` in `dir`: (the CA's certificate, the server's certificate, its key), PEM. A client
/// that trusts the CA accepts the server (rustls takes no self-signed server certificate as
/// its own trust anchor).
pub fn ca_signed(openssl: &Path, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let [ca, ca_key, cert, key, request, extensions] = [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "server.csr",
        "server.ext",
    ]
    .map(|name| dir.join(name));
    std::fs::write(
        &extensions,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )?;
    #[rustfmt::skip]
    let steps: [(&[&str], &str); 2] = [
        (&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
           "-subj", "/CN=vendflow test CA", "-keyout", &text(&ca_key), "-out", &text(&ca)],
         "a CA"),
        (&["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
           "-keyout", &text(&key), "-out", &text(&request)],
         "a certificate request"),
    ];
    for (args, what) in steps {
        run_openssl(openssl, args, what)?;
    }
    signed_by_ca(
        openssl,
        dir,
        [&request, &extensions, &cert],
        "a server certificate",
    )?;
    Ok((ca, cert, key))
}

/// `request` signed by the CA [`ca_signed`] made in `dir`, with `extensions`, into `cert`.
fn signed_by_ca(
    openssl: &Path,
    dir: &Path,
    [request, extensions, cert]: [&Path; 3],
    what: &str,
) -> anyhow::Result<()> {
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    #[rustfmt::skip]
    let args = ["x509", "-req", "-in", &text(request), "-CA", &text(&ca), "-CAkey", &text(&ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", &text(extensions), "-out", &text(cert)];
    run_openssl(openssl, &args, what)
}

/// A client certificate named `name` (its CN) and its key, signed by the CA [`ca_signed`] made
/// in `dir`: (certificate, key).
pub fn client_signed(openssl: &Path, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let [cert, key, request, extensions] = [
        format!("{name}.pem"),
        format!("{name}-key.pem"),
        format!("{name}.csr"),
        format!("{name}.ext"),
    ]
    .map(|file| dir.join(file));
    std::fs::write(
        &extensions,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )?;
    let subject = format!("/CN={name}");
    #[rustfmt::skip]
    let args = ["req", "-newkey", "rsa:2048", "-nodes", "-subj", &subject,
        "-keyout", &text(&key), "-out", &text(&request)];
    run_openssl(openssl, &args, "a client certificate request")?;
    signed_by_ca(
        openssl,
        dir,
        [&request, &extensions, &cert],
        "a client certificate",
    )?;
    Ok((cert, key))
}

/// `openssl ARGS`, quietly; an error says it could not make `what`.
fn run_openssl(openssl: &Path, args: &[&str], what: &str) -> anyhow::Result<()> {
    let status = Command::new(openssl)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("openssl could not make {what}");
    }
    Ok(())
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

/// `vendflow bridge` from `mqtt` to `kafka` for `machines` simulated machines (seed 3: their
/// credentials are written into `dir`), serving plain-HTTP `GET /metrics` on `http`; returns
/// once its MQTT session has subscribed (from then on the broker keeps the fleet's telemetry).
/// What the benchmarks of the production path start.
pub fn start_bridge(
    bin: &Path,
    dir: &Path,
    mqtt: &str,
    kafka: &str,
    machines: usize,
    partitions: u32,
    http: &str,
) -> anyhow::Result<Daemon> {
    let creds = dir.join("credentials.jsonl");
    let machines = machines.to_string();
    let status = Command::new(bin)
        .args([
            "publish",
            "--mqtt",
            mqtt,
            "--machines",
            &machines,
            "--seed",
            "3",
        ])
        .args(["--dry-run", "--credentials-out"])
        .arg(&creds)
        .status()?;
    if !status.success() {
        bail!("writing the fleet's credentials failed");
    }
    spawn_bridge(
        bin,
        &dir.join("bridge.log"),
        [mqtt, kafka, &creds.display().to_string()],
        partitions,
        &["--http", http],
    )
}

/// `vendflow bridge` from the broker `mqtt` to `kafka` with the machines' `credentials`,
/// producing to `partitions` partitions, with `extra` options, logging to `log`; returned once
/// it has subscribed.
pub fn spawn_bridge(
    bin: &Path,
    log: &Path,
    [mqtt, kafka, credentials]: [&str; 3],
    partitions: u32,
    extra: &[&str],
) -> anyhow::Result<Daemon> {
    let partitions = partitions.to_string();
    let mut args = vec![
        "bridge",
        "--mqtt",
        mqtt,
        "--kafka",
        kafka,
        "--credentials",
        credentials,
        "--partitions",
        &partitions,
    ];
    args.extend(extra);
    let bridge = Daemon::spawn("bridge", bin, &args, log)?;
    bridge.wait_for_line("subscribed", std::time::Duration::from_secs(30))?;
    Ok(bridge)
}

/// The counter or gauge `vendflow_bridge_<name>` from a bridge's plain-HTTP `GET /metrics`.
pub fn bridge_metric(curl: &Path, http: &str, name: &str) -> anyhow::Result<u64> {
    let out = Command::new(curl)
        .args(["-s", "--max-time", "5", &format!("http://{http}/metrics")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("vendflow_bridge_{name} ")))
        .with_context(|| format!("no {name} in the bridge's /metrics"))?
        .trim()
        .parse()
        .with_context(|| format!("the bridge's {name}"))
}

/// `vendflow simulate`'s `events.jsonl` (`simulated`) moved in time to end at `end_ms`, written
/// to `to` as a history export of the same machines would hold it. Its transaction ids and event
/// numbers are made distinct from a live run of the same simulated machines: two simulations of
/// one machine number their sales and events alike from 1, where one machine's history and its
/// live stream do not. Two passes over the file (it can be gigabytes), never held whole.
pub fn history_ending_at(simulated: &Path, end_ms: i64, to: &Path) -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let lines = || -> anyhow::Result<_> {
        Ok(std::io::BufReader::new(std::fs::File::open(simulated)?).lines())
    };
    let time = |e: &serde_json::Value| e["timestamp"].as_i64().context("an event without its time");
    let mut last = None;
    for line in lines()? {
        let t = time(&serde_json::from_str(&line?)?)?;
        last = Some(last.map_or(t, |l: i64| l.max(t)));
    }
    let shift = end_ms - last.context("an empty history")?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(to)?);
    for line in lines()? {
        let mut e: serde_json::Value = serde_json::from_str(&line?)?;
        e["timestamp"] = (time(&e)? + shift).into();
        if let Some(seq) = e["seq"].as_i64() {
            e["seq"] = (seq + 1_000_000_000).into();
        }
        if let Some(txn) = e["payload"]["transactionId"].as_str() {
            e["payload"]["transactionId"] = format!("history_{txn}").into();
        }
        serde_json::to_writer(&mut out, &e)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
