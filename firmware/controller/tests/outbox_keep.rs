//! The offline keep rule in the core: a machine keeps 24 hours of events it could not deliver;
//! older ones are declared (an event pushed and synced) and then forgotten.

use vendflow_controller::outbox::{
    EXPIRY_CHECK_MS, Entry, ExpireError, Expired, KEEP_MS, Log, MemoryLog, Outbox,
};

const HOUR: i64 = 3_600_000;

/// An event's body here: the time it was made, as text.
fn made(at: i64) -> Vec<u8> {
    format!("t={at}").into_bytes()
}

fn made_at(entry: &Entry) -> Result<i64, String> {
    std::str::from_utf8(&entry.body)
        .ok()
        .and_then(|b| b.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("not a time: {:?}", entry.body))
}

fn declaration(first: u64, last: u64, seq: u64) -> Vec<u8> {
    format!("dropped {first}..={last} as {seq}").into_bytes()
}

/// An outbox in memory holding `bodies`, none acknowledged.
fn holding(bodies: &[&[u8]]) -> anyhow::Result<Outbox<MemoryLog>> {
    let (mut outbox, _) = Outbox::open(MemoryLog::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    for body in bodies {
        outbox
            .push(body, false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(outbox)
}

fn pending<L: Log>(outbox: &Outbox<L>) -> Vec<(u64, String)> {
    outbox
        .pending()
        .map(|e| (e.seq, String::from_utf8_lossy(&e.body).into_owned()))
        .collect()
}

#[test]
fn events_older_than_a_day_are_declared_then_forgotten_and_younger_ones_stay() -> anyhow::Result<()>
{
    // Offline: an event every 6 hours for 30 hours, none acknowledged.
    let bodies: Vec<Vec<u8>> = (0..=5).map(|k| made(k * 6 * HOUR)).collect();
    let mut outbox = holding(&bodies.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    let now = 30 * HOUR;
    let expired = outbox
        .expire(now, made_at, declaration)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Made at 0 h (seq 1) is older than 24 h; 6 h (seq 2) is exactly 24 h old and stays.
    assert_eq!(
        expired,
        Some(Expired {
            first_seq: 1,
            last_seq: 1,
            declared_by: 7,
        })
    );
    let left = pending(&outbox);
    assert_eq!(left.first().map(|(seq, _)| *seq), Some(2));
    assert_eq!(
        left.last(),
        Some(&(7, "dropped 1..=1 as 7".to_owned())),
        "the declaration is the newest pending event, numbered like the others"
    );
    // The declaration and the forgetting are durable: a power cut keeps both.
    let cut = outbox.log_mut().after_power_cut();
    let (after, _) = Outbox::open(cut).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(pending(&after), left);
    assert_eq!(after.last_seq(), 7);
    Ok(())
}

#[test]
fn the_rule_looks_at_most_every_ten_minutes() -> anyhow::Result<()> {
    let mut outbox = holding(&[&made(0)])?;
    const MINUTE: i64 = 60_000;
    let first_look = KEEP_MS - 5 * MINUTE;
    assert_eq!(
        outbox
            .expire(first_look, made_at, declaration)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None,
        "23 h 55 min old: kept"
    );
    // 24 h 04 min old, but nine minutes after the last look: not yet.
    let early = outbox
        .expire(first_look + 9 * MINUTE, made_at, declaration)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(early, None);
    assert_eq!(pending(&outbox).len(), 1);
    // Ten minutes after the last look, it goes.
    let expired = outbox
        .expire(first_look + EXPIRY_CHECK_MS, made_at, declaration)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(expired.map(|e| (e.first_seq, e.last_seq)), Some((1, 1)));
    Ok(())
}

/// A log whose appends fail after a given number (the power going between two writes).
#[derive(Clone)]
struct FailingAfter {
    inner: MemoryLog,
    appends_left: usize,
}

impl Log for FailingAfter {
    type Error = String;

    fn read_all(&mut self) -> Result<Vec<u8>, Self::Error> {
        Ok(self.inner.bytes.clone())
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        if self.appends_left == 0 {
            return Err("the power went".into());
        }
        self.appends_left -= 1;
        self.inner.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Self::Error> {
        self.inner.synced = self.inner.bytes.len();
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> Result<(), Self::Error> {
        self.inner.bytes.truncate(len as usize);
        self.inner.synced = self.inner.synced.min(self.inner.bytes.len());
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> Result<(), Self::Error> {
        self.inner.bytes = bytes.to_vec();
        self.inner.synced = bytes.len();
        Ok(())
    }
}

#[test]
fn a_power_cut_between_the_declaration_and_the_forgetting_declares_them_again() -> anyhow::Result<()>
{
    // Two old events, one young; the log takes their three appends and the declaration's,
    // then the power goes before the marker that forgets them.
    let log = FailingAfter {
        inner: MemoryLog::default(),
        appends_left: 4,
    };
    let (mut outbox, _) = Outbox::open(log).map_err(|e| anyhow::anyhow!("{e}"))?;
    for at in [0, HOUR, 26 * HOUR] {
        outbox
            .push(&made(at), true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let now = 27 * HOUR;
    let failed = outbox.expire(now, made_at, declaration);
    assert!(
        matches!(failed, Err(ExpireError::Outbox(_))),
        "the marker's write failed: {failed:?}"
    );
    // Booted again: the declaration is there, and so are the events it declared.
    let survived = outbox.log_mut().inner.after_power_cut();
    let (mut again, _) = Outbox::open(survived).map_err(|e| anyhow::anyhow!("{e}"))?;
    let seqs: Vec<u64> = again.pending().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    // The next look declares them again (the declaration itself is young) and forgets them.
    let expired = again
        .expire(now, made_at, |first, last, seq| {
            format!("t={now} dropped {first}..={last} as {seq}").into_bytes()
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        expired,
        Some(Expired {
            first_seq: 1,
            last_seq: 2,
            declared_by: 5,
        })
    );
    let seqs: Vec<u64> = again.pending().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    Ok(())
}

#[test]
fn an_event_whose_time_cannot_be_read_is_an_error_and_changes_nothing() -> anyhow::Result<()> {
    let mut outbox = holding(&[&made(0), b"garbage"])?;
    let result = outbox.expire(30 * HOUR, made_at, declaration);
    assert!(
        matches!(&result, Err(ExpireError::Time { seq: 2, .. })),
        "{result:?}"
    );
    assert_eq!(pending(&outbox).len(), 2);
    assert_eq!(outbox.last_seq(), 2);
    Ok(())
}

#[test]
fn a_shorter_keep_period_is_at_least_the_check_interval() -> anyhow::Result<()> {
    let mut outbox = holding(&[&made(0)])?;
    assert_eq!(outbox.keeps(), KEEP_MS);
    outbox.set_keep(1);
    assert_eq!(outbox.keeps(), EXPIRY_CHECK_MS);
    outbox.set_keep(2 * HOUR);
    let expired = outbox
        .expire(2 * HOUR + 1, made_at, declaration)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(expired.map(|e| e.last_seq), Some(1));
    Ok(())
}
