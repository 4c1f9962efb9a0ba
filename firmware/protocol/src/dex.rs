//! EVA-DTS / DEX audit files: the vending industry's standard audit read from every machine.
//!
//! A DEX file is a set of segments, one per line (`\r\n` or `\n`), elements separated by `*`:
//! ```text
//! DXS*RST7654321*VA*V0/6*1        transmission start (communication id, function, version)
//! ST*001*0001                     transaction set header (set id, control number)
//! ID1*SN123456*VX-10*…            machine: ID101 serial number, ID102 model
//! ID4*2*840                       ID401 decimal places of money values (default 2), ID402 currency
//! ID5*240115*1430                 ID501 date (YYMMDD) and ID502 time (HHMM) of the read
//! VA1*1250000*5000*…              all paid vends: VA101 value, VA102 count (since initialisation)
//! CA2*300000*1200*…               cash sales: CA201 value, CA202 count
//! PA1*148*250                     a column: PA101 its code (the coil), PA102 its price
//! PA2*45*11250*3*750              its paid vends: PA201 count, PA202 value (since initialisation),
//!                                 PA203 count, PA204 value (since the last reset)
//! EA3*12*240115*1430              audit reads: EA302 date, EA303 time of this read
//! G85*1A2B                        CRC of the set
//! SE*12*0001                      set trailer (number of segments from ST to SE, control number)
//! DXE*1*1                         transmission end
//! ```
//! [`parse`] keeps what the audit says and reports what it could not read: a malformed number, a
//! `PA2` without a `PA1`, a trailer whose count disagrees, a truncated file (no `SE` / `DXE`). An
//! audit without its `ST` or without any column is refused. Money values become cents using
//! `ID401`'s decimal places.

use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, ErrorKind};
use crate::units::{Cents, Timestamp};

/// One column (a coil, a selection) in an audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DexColumn {
    /// PA101: the column's code as the machine names it (`148`, `A1`).
    pub code: String,
    /// PA102.
    pub price: Option<Cents>,
    /// PA201: paid vends since initialisation.
    pub vends: Option<i64>,
    /// PA202: value of those vends.
    pub value: Option<Cents>,
    /// PA203, PA204: since the last reset.
    pub vends_since_reset: Option<i64>,
    pub value_since_reset: Option<Cents>,
}

impl DexColumn {
    /// The column code as a telemetry slot number, when it is one (`148` → 148).
    pub fn slot_number(&self) -> Option<u32> {
        self.code.trim_start_matches('0').parse().ok().or_else(|| {
            self.code
                .chars()
                .all(|c| c == '0')
                .then_some(0)
                .filter(|_| !self.code.is_empty())
        })
    }
}

/// A parsed audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DexAudit {
    /// ID101.
    pub serial: Option<String>,
    /// ID102.
    pub model: Option<String>,
    /// When the audit was read (EA3, else ID5), if the file says.
    pub read_at: Option<Timestamp>,
    /// VA101, VA102: all paid vends since initialisation.
    pub paid_value: Option<Cents>,
    pub paid_vends: Option<i64>,
    /// CA201, CA202: cash sales since initialisation.
    pub cash_value: Option<Cents>,
    pub cash_vends: Option<i64>,
    pub columns: Vec<DexColumn>,
    /// What could not be read, one line each (the audit is still used).
    pub problems: Vec<String>,
    /// The file as received.
    pub raw: String,
}

impl DexAudit {
    pub fn column(&self, code: &str) -> Option<&DexColumn> {
        self.columns.iter().find(|c| c.code == code)
    }
}

/// Parses one audit file.
pub fn parse(text: &str) -> Result<DexAudit, DecodeError> {
    let refuse = |m: String| DecodeError::new(ErrorKind::Schema, format!("DEX: {m}"));
    let mut audit = DexAudit {
        raw: text.to_owned(),
        ..DexAudit::default()
    };
    let mut decimals: u32 = 2;
    // Money elements are read after ID4 may have set the decimals: keep them as text first.
    struct PendingMoney {
        segment: usize,
        text: String,
        target: MoneyField,
    }
    #[derive(Clone, Copy)]
    enum MoneyField {
        Paid,
        Cash,
        Price(usize),
        Value(usize),
        ValueReset(usize),
    }
    let mut money: Vec<PendingMoney> = Vec::new();
    // The column of the last PA1 (its PA2 follows it).
    let mut current: Option<usize> = None;
    let (mut saw_dxs, mut saw_dxe, mut st_at, mut se_seen) = (false, false, None, false);
    // (date, time) of the read, from ID5 and from EA3.
    let mut id5: Option<(String, String)> = None;
    let mut ea3: Option<(String, String)> = None;
    let segments: Vec<&str> = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for (n, segment) in segments.iter().enumerate() {
        let e: Vec<&str> = segment.split('*').collect();
        let el = |i: usize| e.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
        let count = |i: usize, what: &str, problems: &mut Vec<String>| -> Option<i64> {
            let text = el(i)?;
            match text.parse::<i64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    problems.push(format!("{} ({what}): {text:?} is not a number", e[0]));
                    None
                }
            }
        };
        match e[0] {
            "DXS" => saw_dxs = true,
            "DXE" => saw_dxe = true,
            "ST" => st_at = Some(n),
            "SE" => {
                se_seen = true;
                if let (Some(start), Some(declared)) =
                    (st_at, count(1, "segment count", &mut audit.problems))
                {
                    let actual = (n - start + 1) as i64;
                    if declared != actual {
                        audit
                            .problems
                            .push(format!("SE says {declared} segments, the set has {actual}"));
                    }
                }
            }
            "ID1" => {
                audit.serial = el(1).map(str::to_owned);
                audit.model = el(2).map(str::to_owned);
            }
            "ID4" => {
                if let Some(d) = count(1, "decimal places", &mut audit.problems) {
                    match u32::try_from(d) {
                        Ok(d) if d <= 4 => decimals = d,
                        _ => audit
                            .problems
                            .push(format!("ID4: {d} decimal places is not supported")),
                    }
                }
            }
            "ID5" => {
                if let (Some(d), Some(t)) = (el(1), el(2)) {
                    id5 = Some((d.to_owned(), t.to_owned()));
                }
            }
            "EA3" => {
                if let (Some(d), Some(t)) = (el(2), el(3)) {
                    ea3 = Some((d.to_owned(), t.to_owned()));
                }
            }
            "VA1" => {
                if let Some(t) = el(1) {
                    money.push(PendingMoney {
                        segment: n,
                        text: t.to_owned(),
                        target: MoneyField::Paid,
                    });
                }
                audit.paid_vends = count(2, "paid vends", &mut audit.problems);
            }
            "CA2" => {
                if let Some(t) = el(1) {
                    money.push(PendingMoney {
                        segment: n,
                        text: t.to_owned(),
                        target: MoneyField::Cash,
                    });
                }
                audit.cash_vends = count(2, "cash vends", &mut audit.problems);
            }
            "PA1" => {
                current = None;
                let Some(code) = el(1) else {
                    audit.problems.push("PA1 without a column code".into());
                    continue;
                };
                if audit.columns.iter().any(|c| c.code == code) {
                    audit
                        .problems
                        .push(format!("column {code} appears twice; the first is kept"));
                    continue;
                }
                current = Some(audit.columns.len());
                audit.columns.push(DexColumn {
                    code: code.to_owned(),
                    ..DexColumn::default()
                });
                if let Some(t) = el(2) {
                    money.push(PendingMoney {
                        segment: n,
                        text: t.to_owned(),
                        target: MoneyField::Price(audit.columns.len() - 1),
                    });
                }
            }
            "PA2" => {
                // The column of the PA1 above it.
                let Some(i) = current else {
                    audit
                        .problems
                        .push(format!("PA2 without its PA1 (segment {})", n + 1));
                    continue;
                };
                audit.columns[i].vends = count(1, "vends", &mut audit.problems);
                audit.columns[i].vends_since_reset =
                    count(3, "vends since reset", &mut audit.problems);
                for (index, target) in [(2, MoneyField::Value(i)), (4, MoneyField::ValueReset(i))] {
                    if let Some(t) = el(index) {
                        money.push(PendingMoney {
                            segment: n,
                            text: t.to_owned(),
                            target,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if !saw_dxs {
        audit
            .problems
            .push("no DXS: the start of the file is missing".into());
    }
    if st_at.is_none() {
        return Err(refuse("no ST segment: not an audit".into()));
    }
    if !se_seen {
        audit.problems.push("no SE: the audit is truncated".into());
    }
    if !saw_dxe {
        audit
            .problems
            .push("no DXE: the transmission is truncated".into());
    }
    if audit.columns.is_empty() {
        return Err(refuse("no PA1 column in the audit".into()));
    }
    for m in money {
        let Some(cents) = minor_units(&m.text, decimals) else {
            audit.problems.push(format!(
                "segment {}: {:?} is not an amount",
                m.segment + 1,
                m.text
            ));
            continue;
        };
        match m.target {
            MoneyField::Paid => audit.paid_value = Some(cents),
            MoneyField::Cash => audit.cash_value = Some(cents),
            MoneyField::Price(i) => audit.columns[i].price = Some(cents),
            MoneyField::Value(i) => audit.columns[i].value = Some(cents),
            MoneyField::ValueReset(i) => audit.columns[i].value_since_reset = Some(cents),
        }
    }
    audit.read_at = match ea3.or(id5) {
        Some((d, t)) => match read_time(&d, &t) {
            Some(ts) => Some(ts),
            None => {
                audit
                    .problems
                    .push(format!("read time {d:?} {t:?} is not YYMMDD HHMM"));
                None
            }
        },
        None => None,
    };
    Ok(audit)
}

/// An amount in the audit's minor units (`decimals` places) as cents.
fn minor_units(text: &str, decimals: u32) -> Option<Cents> {
    let v: i64 = text.parse().ok()?;
    let cents = match decimals {
        0 => v.checked_mul(100)?,
        1 => v.checked_mul(10)?,
        2 => v,
        // Finer than a cent: kept only when it is a whole number of cents.
        d => {
            let div = 10_i64.pow(d - 2);
            if v % div != 0 {
                return None;
            }
            v / div
        }
    };
    Some(Cents(cents))
}

/// `YYMMDD` (or `YYYYMMDD`) and `HHMM` (or `HHMMSS`), UTC.
fn read_time(date: &str, time: &str) -> Option<Timestamp> {
    let date = match date.len() {
        6 => chrono::NaiveDate::parse_from_str(&format!("20{date}"), "%Y%m%d").ok()?,
        8 => chrono::NaiveDate::parse_from_str(date, "%Y%m%d").ok()?,
        _ => return None,
    };
    let time = match time.len() {
        4 => chrono::NaiveTime::parse_from_str(time, "%H%M").ok()?,
        6 => chrono::NaiveTime::parse_from_str(time, "%H%M%S").ok()?,
        _ => return None,
    };
    Some(Timestamp(date.and_time(time).and_utc().timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIT: &str = "DXS*RST7654321*VA*V0/6*1\r\n\
        ST*001*0001\r\n\
        ID1*SN123456*VX-10*1234\r\n\
        ID4*2*840\r\n\
        ID5*240115*1430\r\n\
        VA1*1250000*5000*1250000*5000\r\n\
        CA2*300000*1200\r\n\
        PA1*148*250\r\n\
        PA2*45*11250*3*750\r\n\
        PA1*101*175\r\n\
        PA2*10*1750\r\n\
        EA3*12*240115*1435\r\n\
        G85*1A2B\r\n\
        SE*13*0001\r\n\
        DXE*1*1\r\n";

    fn parsed(text: &str) -> DexAudit {
        parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_segment_of_a_whole_audit() {
        let a = parsed(AUDIT);
        assert_eq!(a.problems, Vec::<String>::new());
        // ID1
        assert_eq!(a.serial.as_deref(), Some("SN123456"));
        assert_eq!(a.model.as_deref(), Some("VX-10"));
        // VA1, CA2
        assert_eq!(
            (a.paid_value, a.paid_vends),
            (Some(Cents(1_250_000)), Some(5000))
        );
        assert_eq!(
            (a.cash_value, a.cash_vends),
            (Some(Cents(300_000)), Some(1200))
        );
        // PA1 / PA2
        assert_eq!(
            a.column("148"),
            Some(&DexColumn {
                code: "148".into(),
                price: Some(Cents(250)),
                vends: Some(45),
                value: Some(Cents(11_250)),
                vends_since_reset: Some(3),
                value_since_reset: Some(Cents(750)),
            })
        );
        let c101 = a.column("101").unwrap_or_else(|| panic!("101"));
        assert_eq!(
            (c101.vends, c101.value, c101.vends_since_reset),
            (Some(10), Some(Cents(1750)), None)
        );
        assert_eq!(c101.slot_number(), Some(101));
        // EA3 wins over ID5: 2024-01-15 14:35 UTC.
        assert_eq!(a.read_at, Some(Timestamp(1_705_329_300_000)));
    }

    #[test]
    fn id5_gives_the_time_without_ea3_and_id4_the_decimals() {
        let text = AUDIT
            .replace("EA3*12*240115*1435\r\n", "")
            .replace("SE*13", "SE*12")
            .replace("ID4*2*840", "ID4*0*392");
        let a = parsed(&text);
        assert_eq!(a.problems, Vec::<String>::new());
        assert_eq!(a.read_at, Some(Timestamp(1_705_329_000_000)));
        // No decimals (yen-style): 250 is 250 units, 25,000 "cents".
        assert_eq!(a.column("148").and_then(|c| c.price), Some(Cents(25_000)));
    }

    #[test]
    fn what_cannot_be_read_is_reported_not_guessed() {
        let text = AUDIT
            .replace("PA2*10*1750", "PA2*ten*17.50")
            .replace("SE*13", "SE*99")
            .replace("DXE*1*1\r\n", "");
        let a = parsed(&text);
        let c = a.column("101").unwrap_or_else(|| panic!("101"));
        assert_eq!((c.vends, c.value), (None, None));
        assert!(
            a.problems
                .iter()
                .any(|p| p.contains("\"ten\" is not a number")),
            "{:?}",
            a.problems
        );
        assert!(
            a.problems
                .iter()
                .any(|p| p.contains("\"17.50\" is not an amount")),
            "{:?}",
            a.problems
        );
        assert!(
            a.problems.iter().any(|p| p.contains("SE says 99")),
            "{:?}",
            a.problems
        );
        assert!(
            a.problems.iter().any(|p| p.contains("no DXE")),
            "{:?}",
            a.problems
        );
    }

    #[test]
    fn a_pa2_without_its_pa1_and_a_repeated_column_are_reported() {
        let text = AUDIT
            .replace("ST*001*0001\r\n", "ST*001*0001\r\nPA2*1*100\r\n")
            .replace("PA1*101*175", "PA1*148*175");
        let a = parsed(&text);
        assert!(
            a.problems.iter().any(|p| p.contains("PA2 without its PA1")),
            "{:?}",
            a.problems
        );
        assert!(
            a.problems.iter().any(|p| p.contains("148 appears twice")),
            "{:?}",
            a.problems
        );
        // The second 148's PA2 belongs to no column of its own and does not overwrite the first.
        assert_eq!(a.column("148").and_then(|c| c.vends), Some(45));
    }

    #[test]
    fn not_an_audit_is_refused() {
        assert!(parse("hello").is_err());
        assert!(
            parse("DXS*X\nST*001*1\nSE*2*1\nDXE*1*1").is_err(),
            "no column"
        );
        let truncated = &AUDIT[..AUDIT.find("EA3").unwrap_or(0)];
        let a = parsed(truncated);
        assert!(a.problems.iter().any(|p| p.contains("truncated")));
        assert_eq!(
            a.read_at,
            Some(Timestamp(1_705_329_000_000)),
            "ID5 still dates it"
        );
    }
}
