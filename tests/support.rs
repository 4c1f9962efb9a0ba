//! Helpers for the end-to-end tests: the real binary, the shared workload scripts, Python with
//! DuckDB, and CSV reading.
//!
//! The tests run the `vendflow` binary built next to them (`cargo build --bins` first; the test
//! script does). Anything external they need is installed by `tests/run-all.sh`; under `CI=true`
//! a missing tool is a failure, never a skip.

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

/// `../shared` beside the checkout (the benchmark workload scripts live there).
pub fn shared() -> PathBuf {
    root().join("..").join("shared")
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

/// A Python with `duckdb` and `pyarrow`. Outside CI, `None` means "skip"; under `CI=true` it is an error.
pub fn python_with_duckdb() -> anyhow::Result<Option<PathBuf>> {
    let python = std::env::var("VENDFLOW_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import duckdb, pyarrow"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Ok(Some(PathBuf::from(python)));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        bail!("{python} cannot import duckdb and pyarrow; tests/run-all.sh installs them");
    }
    eprintln!("skipping: {python} has no duckdb/pyarrow (run tests/run-all.sh to install them)");
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
