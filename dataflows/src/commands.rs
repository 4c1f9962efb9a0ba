//! `commands`: every command sent to a machine and what the machine answered.
//!
//! ```sql
//! SELECT c.command_id, c.machine_id, c.type, c.slot_number, c.new_price, c.issued_at,
//!        coalesce(a.status, 'pending') AS status, a.timestamp AS acked_at, a.reason
//! FROM commands c LEFT JOIN LATERAL (
//!   SELECT * FROM command_acks a          -- command_ack events
//!   WHERE a.machine_id = c.machine_id AND a.command_id = c.command_id
//!   ORDER BY a.timestamp, a.status, a.reason LIMIT 1) a ON true
//! WHERE now() < c.issued_at + retention
//! ```
//! Only the command's own machine can acknowledge it (an ack naming another machine's command
//! matches nothing); the first acknowledgement by the machine's clock wins, so redelivered
//! commands acknowledged again change nothing. A command sent twice (the same id and machine)
//! is one command. Commands and acknowledgements leave the view `command_retention_ms` after
//! they were issued / made (temporal filter), so state is bounded.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use vendflow_protocol::{AckStatus, Action, Command, Event, EventKind, MachineId, Timestamp};

use crate::config::Config;
use crate::fold::{Counted, KeyedFold, Published};
use crate::operators::{Temporal, Time, hash_of};
use crate::row::ViewDef;
use crate::row::{ColumnType::*, Row, Value, col, null};

pub const COMMANDS: ViewDef = ViewDef {
    name: "commands",
    description: "commands sent to machines and their acknowledgement (pending / applied / rejected)",
    columns: &[
        col("command_id", Text),
        col("machine_id", Text),
        col("type", Text),
        null("slot_number", Int),
        null("new_price", Money),
        col("issued_at", Time),
        col("status", Text),
        null("acked_at", Time),
        null("reason", Text),
    ],
};

/// What a machine answered: (its clock, status, reason).
pub type Answer = (Timestamp, AckStatus, Option<String>);

/// The command's record and, once it came, its answers. Answers sort in time order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Item {
    Command(Command),
    Answer(Answer),
}

/// A command's items with their counts (an item leaves when its retention ends).
type Items = Counted<Item>;

/// The least item present (with a positive count) that `pick` accepts.
fn first(items: &Items, pick: impl Fn(&Item) -> bool) -> Option<&Item> {
    items
        .0
        .iter()
        .filter(|(i, n)| *n > 0 && pick(i))
        .map(|(i, _)| i)
        .min()
}

pub struct Commands<'s> {
    pub status: VecCollection<'s, Time, (Command, Option<Answer>)>,
    /// Commands and answers that arrived after their retention (counted in `too_late`).
    pub too_late: VecCollection<'s, Time, ()>,
}

pub fn render<'s>(
    commands: VecCollection<'s, Time, Command>,
    events: VecCollection<'s, Time, Event>,
    config: &Config,
) -> Commands<'s> {
    let retention = config.command_retention_ms;
    let (commands, late_commands) = commands
        .retain_between(move |c: &Command| (Time::EPOCH, c.issued_at.saturating_add(retention)));
    let commands = commands.map(|c| {
        (
            (c.machine_id.clone(), c.command_id.clone()),
            Item::Command(c),
        )
    });
    let (answers, late_answers) = events
        .flat_map(|e| match e.kind {
            EventKind::CommandAck(a) => Some((
                (e.machine_id, a.command_id),
                (e.timestamp, a.status, a.reason),
            )),
            _ => None,
        })
        .retain_between(move |(_, (at, _, _)): &((MachineId, String), Answer)| {
            (Time::EPOCH, at.saturating_add(retention))
        });
    let answers = answers.map(|(key, answer)| (key, Item::Answer(answer)));
    let status = commands.concat(answers).fold_by_key(
        "Commands: status",
        Published::Recomputed,
        |key: &(MachineId, String)| hash_of(key),
        |_, items: &mut Items, item, diff, _| items.add(item, diff),
        |_, _, _| {},
        |_, items, out| {
            // The first command (answers to a command this view does not hold show nothing),
            // with its first answer in time order.
            if let Some(Item::Command(command)) = first(items, |i| matches!(i, Item::Command(_))) {
                let answer = match first(items, |i| matches!(i, Item::Answer(_))) {
                    Some(Item::Answer(a)) => Some(a.clone()),
                    _ => None,
                };
                out.push((command.clone(), answer));
            }
        },
    );
    Commands {
        status,
        too_late: late_commands.map(|_| ()).concat(late_answers.map(|_| ())),
    }
}

pub fn row((command, answer): (Command, Option<Answer>)) -> Row {
    let (slot, price) = match command.action {
        Action::UpdatePrice {
            slot_number,
            new_price,
        } => (Value::Int(i64::from(slot_number)), Value::Money(new_price)),
        Action::Dispense { slot_number, .. } => (Value::Int(i64::from(slot_number)), Value::Null),
        Action::Reboot | Action::SetPlanogram { .. } | Action::UpdateFirmware { .. } => {
            (Value::Null, Value::Null)
        }
    };
    let (status, acked_at, reason) = match answer {
        None => (Value::text("pending"), Value::Null, Value::Null),
        Some((at, status, reason)) => (
            Value::text(status.as_str()),
            Value::Time(at),
            Value::opt(reason, Value::text),
        ),
    };
    Row::from([
        Value::text(&command.command_id),
        Value::text(command.machine_id.as_str()),
        Value::text(command.action.type_name()),
        slot,
        price,
        Value::Time(command.issued_at),
        status,
        acked_at,
        reason,
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use vendflow_protocol::{Cents, CommandAck};

    use super::*;
    use crate::testing::{self, Scenario, machine};

    fn ack(m: &str, at: i64, id: &str, status: AckStatus, reason: Option<&str>) -> Event {
        Event {
            machine_id: machine(m),
            timestamp: Timestamp(at),
            seq: None,
            kind: EventKind::CommandAck(CommandAck {
                command_id: id.into(),
                status,
                reason: reason.map(str::to_owned),
            }),
        }
    }

    /// Commands and answers delivered in random order, late, twice, from the wrong machine,
    /// for unknown commands; some commands never answered, some past the retention.
    fn scenario(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s = Scenario::empty();
        s.config.command_retention_ms = 20 * 3_600_000;
        let machines = ["m0", "m1", "m2"];
        for i in 0..60 {
            let m = machines[rng.random_range(0..3)];
            let id = format!("cmd{}", rng.random_range(0..50)); // ids repeat across machines
            let issued = rng.random_range(0..24 * 3_600_000i64);
            let action = if rng.random_bool(0.8) {
                Action::UpdatePrice {
                    slot_number: rng.random_range(1..5),
                    new_price: Cents(rng.random_range(100..400)),
                }
            } else {
                Action::Reboot
            };
            let command = Command {
                command_id: id.clone(),
                machine_id: machine(m),
                issued_at: Timestamp(issued),
                action,
            };
            let sent = issued + rng.random_range(0..60_000);
            s.commands.push((Timestamp(sent), command.clone()));
            if rng.random_bool(0.1) {
                // The same command sent again later.
                s.commands
                    .push((Timestamp(sent + rng.random_range(0..7_200_000)), command));
            }
            for _ in 0..rng.random_range(0..3) {
                let from = if rng.random_bool(0.85) {
                    m
                } else {
                    machines[rng.random_range(0..3)]
                };
                let at = issued + rng.random_range(1_000..3_600_000);
                let status = if rng.random_bool(0.8) {
                    AckStatus::Applied
                } else {
                    AckStatus::Rejected
                };
                let reason = (status == AckStatus::Rejected).then_some("no such slot");
                let delivered = at + rng.random_range(0..8 * 3_600_000);
                s.deliver(delivered, ack(from, at, &id, status, reason));
            }
            if i % 10 == 0 {
                // An answer to a command that was never sent.
                s.deliver(
                    issued,
                    ack(m, issued, "cmd-unknown", AckStatus::Applied, None),
                );
            }
        }
        s
    }

    fn oracle(s: &Scenario) -> Vec<Row> {
        let now = s.now();
        let retention = s.config.command_retention_ms;
        let alive = |at: i64| now.ms() < at + retention;
        let mut commands: BTreeMap<(MachineId, String), Command> = BTreeMap::new();
        for (_, c) in &s.commands {
            if !alive(c.issued_at.0) {
                continue;
            }
            let key = (c.machine_id.clone(), c.command_id.clone());
            let first = commands.entry(key).or_insert_with(|| c.clone());
            if c < first {
                *first = c.clone();
            }
        }
        let mut answers: BTreeMap<(MachineId, String), Answer> = BTreeMap::new();
        for (_, e) in &s.deliveries {
            let EventKind::CommandAck(a) = &e.kind else {
                continue;
            };
            if !alive(e.timestamp.0) {
                continue;
            }
            let answer = (e.timestamp, a.status, a.reason.clone());
            let key = (e.machine_id.clone(), a.command_id.clone());
            let first = answers.entry(key).or_insert_with(|| answer.clone());
            if answer < *first {
                *first = answer;
            }
        }
        commands
            .into_iter()
            .map(|(key, c)| row((c, answers.get(&key).cloned())))
            .collect()
    }

    #[test]
    fn commands_equal_the_oracle_on_random_streams() {
        for seed in 0..4 {
            let s = scenario(seed);
            let views = testing::run(&s);
            let expected = oracle(&s);
            assert!(
                expected.iter().any(|r| r.cell(6) == Value::text("pending"))
                    && expected.iter().any(|r| r.cell(6) == Value::text("applied")),
                "seed {seed}: the scenario must have pending and applied commands"
            );
            let horizon = s.now().ms() - s.config.command_retention_ms;

            assert!(
                s.commands.iter().any(|(_, c)| c.issued_at.0 <= horizon),
                "seed {seed}: some commands must have expired"
            );
            testing::assert_view(&views, "commands", expected, seed + 1);
        }
    }
}
