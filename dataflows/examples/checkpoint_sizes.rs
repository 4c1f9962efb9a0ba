//! What a checkpoint file holds, by size: each worker's operators (the bytes each one's state
//! encodes to) and each view (rows and their encoded bytes), largest first. For finding what a
//! fleet's state is made of.
//!
//! `cargo run --release -p vendflow-dataflows --example checkpoint_sizes -- FILE.vfc [TOP]`

use std::collections::BTreeMap;
use std::path::Path;

use vendflow_dataflows::checkpoint::file::CheckpointDir;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: checkpoint_sizes FILE.vfc [TOP]")?;
    let top: usize = args.next().map(|t| t.parse()).transpose()?.unwrap_or(25);
    let path = Path::new(&path);
    let dir = CheckpointDir::open(path.parent().ok_or("the file has no directory")?)?;
    let started = std::time::Instant::now();
    let checkpoint = dir.load(path)?;
    println!(
        "{}: frontier {}, loaded in {:.1} s",
        path.display(),
        checkpoint.engine.frontier,
        started.elapsed().as_secs_f64()
    );
    let mut operators: BTreeMap<String, u64> = BTreeMap::new();
    let mut workers_total = 0;
    for section in checkpoint.engine.workers {
        workers_total += section.len();
        let section = section.into_bytes()?;
        let entries: Vec<(String, String, Vec<u8>)> = bincode::deserialize(&section)?;
        for (name, _layout, bytes) in entries {
            *operators.entry(name).or_default() += bytes.len() as u64;
        }
    }
    let mut views: Vec<(String, usize, u64)> = checkpoint
        .engine
        .views
        .iter()
        .map(|(name, rows)| {
            let bytes = rows.rows.iter().map(|r| r.encoded_len() as u64).sum();
            (name.clone(), rows.len(), bytes)
        })
        .collect();
    let views_total: u64 = views.iter().map(|v| v.2).sum();
    println!(
        "operators (all workers): {:.1} MiB; views: {:.1} MiB of rows",
        mib(workers_total),
        mib(views_total)
    );
    let mut operators: Vec<(String, u64)> = operators.into_iter().collect();
    operators.sort_by_key(|o| std::cmp::Reverse(o.1));
    for (name, bytes) in operators.iter().take(top) {
        println!("  operator {:>10.1} MiB  {name}", mib(*bytes));
    }
    views.sort_by_key(|v| std::cmp::Reverse(v.2));
    for (name, rows, bytes) in views.iter().take(top) {
        println!(
            "  view     {:>10.1} MiB  {rows:>10} rows  {name}",
            mib(*bytes)
        );
    }
    Ok(())
}
