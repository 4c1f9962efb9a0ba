//! Prints every record of a Kafka topic as `partition \t offset \t timestamp \t payload`, for a
//! post-mortem (Debian's `kcat` is too old to talk to tansu):
//! `cargo run -p vendflow-ingest --example dump_topic -- 127.0.0.1:9092 machine-telemetry 3`.
//! Reads from the beginning of each partition and stops after 5 s without a record.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: dump_topic BROKERS TOPIC [PARTITIONS]";
    let brokers = args.next().ok_or(usage)?;
    let topic = args.next().ok_or(usage)?;
    let partitions: i32 = args.next().map_or(Ok(1), |p| p.parse())?;
    let consumer: BaseConsumer = vendflow_ingest::kafka::client_config(&brokers)
        .set("group.id", "vendflow-dump")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(5) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                println!(
                    "{}\t{}\t{}\t{}",
                    m.partition(),
                    m.offset(),
                    m.timestamp().to_millis().unwrap_or(-1),
                    String::from_utf8_lossy(m.payload().unwrap_or(&[]))
                );
            }
            Some(Err(e)) => eprintln!("{e}"),
            None => {}
        }
    }
    Ok(())
}
