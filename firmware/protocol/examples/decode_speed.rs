//! Decoding throughput alone: every line of a JSON Lines file through `decode_line`, three
//! rounds over the file held in memory (the first pays for interning the machine ids), on
//! THREADS threads (default 1) taking blocks of lines in turn, as the replay's readers do.
//!
//! `cargo run --release -p vendflow-protocol --example decode_speed -- FILE [THREADS]`

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = std::env::args().nth(1).ok_or("usage: decode_speed FILE")?;
    let data = std::fs::read(&file)?;
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let threads: usize = std::env::args().nth(2).map_or(Ok(1), |t| t.parse())?;
    for round in 1..=3 {
        let started = Instant::now();
        let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|share| {
                    let lines = &lines;
                    scope.spawn(move || {
                        let (mut events, mut refused) = (0usize, 0usize);
                        for block in lines.chunks(256).skip(share).step_by(threads) {
                            for line in block {
                                for result in vendflow_protocol::decode::decode_line(line) {
                                    match result {
                                        Ok(_) => events += 1,
                                        Err(_) => refused += 1,
                                    }
                                }
                            }
                        }
                        (events, refused)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let events: usize = counts.iter().map(|c| c.0).sum();
        let refused: usize = counts.iter().map(|c| c.1).sum();
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "round {round}: {} lines, {events} events, {refused} refused in {seconds:.3} s ({:.0} MB/s)",
            lines.len(),
            data.len() as f64 / seconds / 1e6
        );
    }
    Ok(())
}
