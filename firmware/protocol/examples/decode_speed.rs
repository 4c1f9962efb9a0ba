//! Decoding throughput alone: every line of a JSON Lines file through `decode_line`, three
//! rounds over the file held in memory (the first pays for interning the machine ids).
//!
//! `cargo run --release -p vendflow-protocol --example decode_speed -- FILE`

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args().nth(1).ok_or("usage: decode_speed FILE")?;
    let data = std::fs::read(&file)?;
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for round in 1..=3 {
        let started = Instant::now();
        let (mut events, mut refused) = (0usize, 0usize);
        for line in &lines {
            for result in vendflow_protocol::decode::decode_line(line) {
                match result {
                    Ok(_) => events += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "round {round}: {} lines, {events} events, {refused} refused in {seconds:.3} s ({:.0} MB/s)",
            lines.len(),
            data.len() as f64 / seconds / 1e6
        );
    }
    Ok(())
}
