//! The outbox survives a power cut at any byte: a recorded log is cut at every offset and
//! opened again, in memory and in a real file.

use std::collections::BTreeMap;

use vendflow_controller::file::FileLog;
use vendflow_controller::outbox::{Log, MemoryLog, Outbox};

/// A log as a machine writes it: events (durable), acknowledgements, a compaction, more
/// events. Returns the bytes, and for each event its seq, body and the offset where its record
/// ends; for each marker the offset where it ends and what it acknowledges.
struct Recorded {
    bytes: Vec<u8>,
    events: Vec<(u64, Vec<u8>, usize)>,
    acks: Vec<(usize, u64)>,
}

fn record() -> Recorded {
    let (mut outbox, _) = Outbox::open(MemoryLog::default()).expect("an empty log opens");
    let mut events = Vec::new();
    let mut acks = Vec::new();
    let push =
        |outbox: &mut Outbox<MemoryLog>, events: &mut Vec<(u64, Vec<u8>, usize)>, i: usize| {
            let body = format!(
                "{{\"type\":\"sale\",\"n\":{i},\"pad\":\"{}\"}}",
                "x".repeat(i % 7)
            )
            .into_bytes();
            let seq = outbox.push(&body, true).expect("pushed");
            events.push((seq, body, outbox.bytes() as usize));
        };
    for i in 0..12 {
        push(&mut outbox, &mut events, i);
    }
    outbox.ack(5).expect("acked");
    acks.push((outbox.bytes() as usize, 5));
    for i in 12..20 {
        push(&mut outbox, &mut events, i);
    }
    outbox.ack(9).expect("acked");
    acks.push((outbox.bytes() as usize, 9));
    push(&mut outbox, &mut events, 20);
    Recorded {
        bytes: outbox.log_mut().bytes.clone(),
        events,
        acks,
    }
}

/// What the acknowledgement markers that ended by `k` acknowledge.
fn acked_by(acks: &[(usize, u64)], k: usize) -> u64 {
    acks.iter()
        .filter(|(end, _)| *end <= k)
        .map(|(_, through)| *through)
        .max()
        .unwrap_or(0)
}

/// The newest number among the events that stand after a cut at `k` (their record, or their
/// step's state, ended by `k`).
fn last_standing(events: &[(u64, Vec<u8>, usize)], k: usize) -> u64 {
    events
        .iter()
        .filter(|(_, _, end)| *end <= k)
        .map(|(seq, _, _)| *seq)
        .max()
        .unwrap_or(0)
}

/// What must be pending after a cut at `k`: every event whose record ended by `k`, minus those
/// acknowledged by a marker that ended by `k`.
fn expected(r: &Recorded, k: usize) -> BTreeMap<u64, Vec<u8>> {
    let acked = acked_by(&r.acks, k);
    r.events
        .iter()
        .filter(|(seq, _, end)| *end <= k && *seq > acked)
        .map(|(seq, body, _)| (*seq, body.clone()))
        .collect()
}

fn check_reopened<L: Log>(r: &Recorded, k: usize, open: impl Fn() -> L) -> anyhow::Result<()> {
    let (mut outbox, opened) = Outbox::open(open()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pending: BTreeMap<u64, Vec<u8>> =
        outbox.pending().map(|e| (e.seq, e.body.clone())).collect();
    anyhow::ensure!(
        pending == expected(r, k),
        "cut at {k}: pending {:?}",
        pending.keys().collect::<Vec<_>>()
    );
    // The torn tail was cut off exactly at the last whole record.
    let whole = r
        .events
        .iter()
        .map(|(_, _, end)| *end)
        .chain(r.acks.iter().map(|(end, _)| *end))
        .filter(|end| *end <= k)
        .max()
        .unwrap_or(0);
    anyhow::ensure!(
        opened.torn_bytes as usize == k - whole,
        "cut at {k}: {} torn bytes, expected {}",
        opened.torn_bytes,
        k - whole
    );
    // Numbering goes on after the last event it had, and the next open sees the new event.
    let last = last_standing(&r.events, k);
    let seq = outbox
        .push(b"after", true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        seq == last + 1,
        "cut at {k}: the next event is {seq}, not {}",
        last + 1
    );
    drop(outbox);
    let (again, opened) = Outbox::open(open()).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(opened.torn_bytes == 0, "cut at {k}: torn again");
    let mut want = expected(r, k);
    want.insert(seq, b"after".to_vec());
    let got: BTreeMap<u64, Vec<u8>> = again.pending().map(|e| (e.seq, e.body.clone())).collect();
    anyhow::ensure!(got == want, "cut at {k}: after a push and a reopen");
    Ok(())
}

#[test]
fn a_log_cut_at_every_byte_keeps_every_whole_record_and_nothing_else() -> anyhow::Result<()> {
    let r = record();
    assert!(
        r.bytes.len() > 500,
        "the recorded log is too small to mean much"
    );
    for k in 0..=r.bytes.len() {
        let log = std::cell::RefCell::new(MemoryLog {
            bytes: r.bytes[..k].to_vec(),
            synced: k,
            ..Default::default()
        });
        // The same log is opened twice (before and after a push): share it.
        let shared = SharedLog(&log);
        check_reopened(&r, k, || shared.clone())?;
    }
    Ok(())
}

#[test]
fn a_file_cut_at_every_byte_keeps_every_whole_record_and_nothing_else() -> anyhow::Result<()> {
    let r = record();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("outbox.log");
    for k in 0..=r.bytes.len() {
        std::fs::write(&path, &r.bytes[..k])?;
        check_reopened(&r, k, || FileLog::open(&path).expect("the file opens"))?;
    }
    Ok(())
}

#[test]
fn a_damaged_byte_ends_the_log_there_and_compaction_keeps_the_numbering() -> anyhow::Result<()> {
    let r = record();
    // A flipped bit in the 15th event's body: it and everything after are dropped.
    let (_, _, end14) = r.events[13];
    let mut bytes = r.bytes.clone();
    bytes[end14 + 20] ^= 0x10;
    let (outbox, opened) = Outbox::open(MemoryLog {
        synced: bytes.len(),
        bytes,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(opened.torn_bytes as usize, r.bytes.len() - end14);
    assert_eq!(outbox.last_seq(), 14);

    // Everything acknowledged, then compacted: an empty log but for the marker, and the next
    // event is numbered after the last one ever given.
    let (mut outbox, _) = Outbox::open(MemoryLog {
        bytes: r.bytes.clone(),
        synced: r.bytes.len(),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let last = outbox.last_seq();
    outbox.ack(last).map_err(|e| anyhow::anyhow!("{e}"))?;
    outbox.compact().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(outbox.is_empty());
    assert!(outbox.bytes() < 32, "compacted to {} bytes", outbox.bytes());
    let bytes = outbox.log_mut().bytes.clone();
    let (mut reopened, _) = Outbox::open(MemoryLog {
        synced: bytes.len(),
        bytes,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        reopened
            .push(b"next", true)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        last + 1
    );
    Ok(())
}

#[test]
fn only_what_was_synced_survives_a_power_cut() -> anyhow::Result<()> {
    let (mut outbox, _) = Outbox::open(MemoryLog::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    outbox
        .push(b"sale", true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    outbox
        .push(b"heartbeat", false)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cut = outbox.log_mut().after_power_cut();
    let (after, _) = Outbox::open(cut).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bodies: Vec<&[u8]> = after.pending().map(|e| e.body.as_slice()).collect();
    assert_eq!(bodies, vec![b"sale".as_slice()]);
    Ok(())
}

/// A [`MemoryLog`] two outboxes open one after the other.
#[derive(Clone)]
struct SharedLog<'a>(&'a std::cell::RefCell<MemoryLog>);

impl Log for SharedLog<'_> {
    type Error = std::convert::Infallible;
    fn read_all(&mut self) -> Result<Vec<u8>, Self::Error> {
        self.0.borrow_mut().read_all()
    }
    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.borrow_mut().append(bytes)
    }
    fn sync(&mut self) -> Result<(), Self::Error> {
        self.0.borrow_mut().sync()
    }
    fn truncate(&mut self, len: u64) -> Result<(), Self::Error> {
        self.0.borrow_mut().truncate(len)
    }
    fn replace(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.0.borrow_mut().replace(bytes)
    }
}

/// A log of steps (events, then the controller's state) with heartbeats between them and
/// acknowledgements: per step its events and where its state record ends; per heartbeat where
/// it ends.
struct Steps {
    bytes: Vec<u8>,
    /// (seq, body, where the record that makes it stand ends: its step's state, or itself).
    events: Vec<(u64, Vec<u8>, usize)>,
    /// (where the state record ends, the state).
    states: Vec<(usize, Vec<u8>)>,
    acks: Vec<(usize, u64)>,
}

fn record_steps() -> Steps {
    let (mut outbox, _) = Outbox::open(MemoryLog::default()).expect("an empty log opens");
    let (mut events, mut states, mut acks) = (Vec::new(), Vec::new(), Vec::new());
    for step in 0..10usize {
        let mut made = Vec::new();
        for line in 0..(1 + step % 3) {
            let body =
                format!("{{\"type\":\"sale\",\"step\":{step},\"line\":{line}}}").into_bytes();
            made.push((outbox.push_step(&body).expect("pushed"), body));
        }
        let state = format!("stock after step {step}: {}", "x".repeat(step)).into_bytes();
        outbox.commit(&state).expect("committed");
        let end = outbox.bytes() as usize;
        states.push((end, state));
        events.extend(made.into_iter().map(|(seq, body)| (seq, body, end)));
        if step % 2 == 1 {
            let body = format!("{{\"type\":\"heartbeat\",\"after\":{step}}}").into_bytes();
            let seq = outbox.push(&body, false).expect("pushed");
            events.push((seq, body, outbox.bytes() as usize));
        }
        if step == 4 {
            outbox.ack(3).expect("acked");
            acks.push((outbox.bytes() as usize, 3));
        }
    }
    // The last step is cut short by the end of the recording: its events stand on nothing.
    outbox
        .push_step(b"{\"type\":\"sale\",\"unfinished\":true}")
        .expect("pushed");
    Steps {
        bytes: outbox.log_mut().bytes.clone(),
        events,
        states,
        acks,
    }
}

#[test]
fn a_log_of_steps_cut_at_every_byte_keeps_whole_steps_with_their_state_and_nothing_else()
-> anyhow::Result<()> {
    let r = record_steps();
    for k in 0..=r.bytes.len() {
        let (mut outbox, opened) = Outbox::open(MemoryLog {
            bytes: r.bytes[..k].to_vec(),
            synced: k,
            ..Default::default()
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let acked = acked_by(&r.acks, k);
        let want: BTreeMap<u64, Vec<u8>> = r
            .events
            .iter()
            .filter(|(seq, _, end)| *end <= k && *seq > acked)
            .map(|(seq, body, _)| (*seq, body.clone()))
            .collect();
        let got: BTreeMap<u64, Vec<u8>> =
            outbox.pending().map(|e| (e.seq, e.body.clone())).collect();
        anyhow::ensure!(
            got == want,
            "cut at {k}: pending {:?}, expected {:?}",
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        let state = r
            .states
            .iter()
            .filter(|(end, _)| *end <= k)
            .map(|(_, s)| s.clone())
            .next_back();
        anyhow::ensure!(opened.state == state, "cut at {k}: the wrong state");
        anyhow::ensure!(
            outbox.state() == state.as_deref(),
            "cut at {k}: the outbox holds another state than it opened with"
        );
        // The numbers of an unfinished step are given again; none of a standing event is.
        let last = last_standing(&r.events, k).max(acked);
        let next = outbox
            .push_step(b"next")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            next == last + 1,
            "cut at {k}: next event {next}, not {}",
            last + 1
        );
    }
    // The whole recording: its last step had no state, so its one event is cut off.
    let (_, opened) = Outbox::open(MemoryLog {
        bytes: r.bytes.clone(),
        synced: r.bytes.len(),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(opened.unfinished, 1);
    Ok(())
}

#[test]
fn compaction_keeps_the_newest_state_where_it_stood_among_the_pending_events() -> anyhow::Result<()>
{
    let (mut outbox, _) = Outbox::open(MemoryLog::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let e = |r: Result<u64, _>| {
        r.map_err(|e: vendflow_controller::outbox::OutboxError<_>| anyhow::anyhow!("{e}"))
    };
    e(outbox.push_step(b"sale 1"))?;
    outbox
        .commit(b"state 1")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    e(outbox.push_step(b"sale 2"))?;
    outbox
        .commit(b"state 2")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let heartbeat = e(outbox.push(b"heartbeat", false))?;
    outbox.ack(1).map_err(|e| anyhow::anyhow!("{e}"))?;
    outbox.compact().map_err(|e| anyhow::anyhow!("{e}"))?;
    let bytes = outbox.log_mut().bytes.clone();
    let (mut reopened, opened) = Outbox::open(MemoryLog {
        synced: bytes.len(),
        bytes,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(opened.state.as_deref(), Some(b"state 2".as_slice()));
    assert_eq!(opened.unfinished, 0);
    assert_eq!(
        pending_of(&reopened),
        [
            (2, b"sale 2".as_slice()),
            (heartbeat, b"heartbeat".as_slice())
        ]
    );
    // A step after the compaction whose event reached flash and whose state did not: the
    // event goes, its number is given again, the state before it stays.
    e(reopened.push_step(b"sale 4"))?;
    let bytes = reopened.log_mut().bytes.clone();
    let (mut after, opened) = Outbox::open(MemoryLog {
        synced: bytes.len(),
        bytes,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(opened.unfinished, 1);
    assert_eq!(opened.state.as_deref(), Some(b"state 2".as_slice()));
    assert_eq!(after.last_seq(), heartbeat);
    assert_eq!(e(after.push_step(b"sale 4 again"))?, heartbeat + 1);
    Ok(())
}

/// A power failure during a write ([`MemoryLog::power_fails_after`], what the simulated fleet's
/// power cuts do): the bytes that reached storage stay, synced or not, a record cut short among
/// them; the next boot cuts it off and numbers on after the last whole record. Whatever comes
/// after the failure (a write, a truncation) does not reach storage.
#[test]
fn a_power_failure_mid_write_leaves_a_torn_record_that_the_next_boot_cuts_off() -> anyhow::Result<()>
{
    let e = |r: Result<u64, _>| {
        r.map_err(|e: vendflow_controller::outbox::OutboxError<_>| anyhow::anyhow!("{e}"))
    };
    let (mut outbox, _) = Outbox::open(MemoryLog::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    e(outbox.push(b"heartbeat 1", true))?;
    e(outbox.push(b"heartbeat 2", false))?;
    let whole = outbox.log_mut().bytes.len();
    outbox.log_mut().power_fails_after(10);
    e(outbox.push(b"heartbeat 3", true))?;
    e(outbox.push(b"heartbeat 4", true))?;
    let log = outbox.log_mut();
    assert_eq!(log.bytes.len(), whole + 10, "only 10 bytes reached storage");
    log.truncate(0).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        log.bytes.len(),
        whole + 10,
        "no truncation once the power is gone"
    );
    let (mut reopened, opened) =
        Outbox::open(log.after_power_cut()).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(opened.torn_bytes, 10);
    // The second heartbeat was not synced, but it reached storage whole: it stays.
    assert_eq!(
        pending_of(&reopened),
        [
            (1, b"heartbeat 1".as_slice()),
            (2, b"heartbeat 2".as_slice())
        ]
    );
    assert_eq!(e(reopened.push(b"heartbeat 3 again", true))?, 3);
    Ok(())
}

/// An outbox's pending events: number and body.
fn pending_of<L: Log>(outbox: &Outbox<L>) -> Vec<(u64, &[u8])> {
    outbox
        .pending()
        .map(|e| (e.seq, e.body.as_slice()))
        .collect()
}
