//! The one gate every SQL statement passes, whatever the protocol: `POST /sql`, the Postgres
//! simple protocol, prepared statements (the extended protocol) and cursors.
//!
//! A text is parsed **once** here into [`Admitted`] statements; anything not on this list is
//! refused before anything is planned:
//! - a read-only query (`SELECT`, `WITH … SELECT`, `VALUES`, `EXPLAIN` of one) with no `INTO`
//!   and no data-modifying part anywhere. It runs only through `vendflow_queries::sql::Sql::run`, which
//!   applies the caller's tenant scope, the archive rule and every limit (time, memory, result
//!   size, concurrency);
//! - `DECLARE c CURSOR FOR <query>`, `FETCH`, `CLOSE`: the cursor's query is admitted by the same
//!   rule and runs through the same path; its rows are kept by the session;
//! - `SET`/`SHOW`/`RESET` of a short allow-list of **session** parameters ([`Setting`]); they are
//!   kept by the session and never touch the engine's shared context;
//! - `BEGIN`, `COMMIT`, `ROLLBACK` (everything is read-only, so a transaction only scopes cursors).
//!
//! Which statements a protocol takes is its own business (HTTP takes queries only), but no
//! protocol executes anything that did not come through [`admit`].

use sqlparser::ast::{
    CloseCursor, DeclareType, Expr, FetchDirection, ObjectName, Query, SetExpr, Statement, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// Why the gate refused a text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// Well-formed but not allowed (a write, an unknown setting, …).
    #[error("{0}")]
    Refused(String),
    /// Not SQL the gate can read.
    #[error("{0}")]
    Invalid(String),
}

/// The refusal of anything that is not read-only, wherever it is caught.
pub const READ_ONLY: &str = "vendflow SQL is read-only: only queries (SELECT, WITH … SELECT, VALUES, EXPLAIN), cursors over them and session settings are allowed; DDL, DML, SELECT … INTO, COPY and CREATE EXTERNAL TABLE are refused";

/// The longest SQL text the gate parses (a longer one is refused unread).
pub const MAX_SQL_BYTES: usize = 256 << 10;

/// A statement the gate let through.
#[derive(Clone, Debug, PartialEq)]
pub enum Admitted {
    /// A read-only query (or `EXPLAIN` of one).
    Query(Box<Statement>),
    /// `DECLARE name [WITH HOLD] CURSOR FOR query`.
    Declare {
        cursor: String,
        hold: bool,
        query: Box<Statement>,
    },
    /// `FETCH [n | ALL | NEXT] [FROM | IN] name`: forward only.
    Fetch {
        cursor: String,
        count: Option<u64>,
    },
    /// `CLOSE name` (`None`: `CLOSE ALL`).
    Close(Option<String>),
    /// `SET name = value` of a session parameter, the value already checked.
    Set(Setting, String),
    /// `RESET name`.
    Reset(Setting),
    /// `SHOW name`.
    Show(Setting),
    Begin,
    /// `COMMIT` (`true`) or `ROLLBACK` (`false`).
    End {
        commit: bool,
    },
}

/// The session parameters a client may set or read. Each is kept by the session; none changes
/// how the shared engine runs for anyone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    ApplicationName,
    ClientEncoding,
    DateStyle,
    ExtraFloatDigits,
    /// A session's own time limit, at most the engine's (`0`: the engine's).
    StatementTimeout,
    TimeZone,
    StandardConformingStrings,
    ServerVersion,
    ServerEncoding,
    IntegerDatetimes,
    TransactionIsolation,
}

impl Setting {
    pub const ALL: [Setting; 11] = [
        Setting::ApplicationName,
        Setting::ClientEncoding,
        Setting::DateStyle,
        Setting::ExtraFloatDigits,
        Setting::StatementTimeout,
        Setting::TimeZone,
        Setting::StandardConformingStrings,
        Setting::ServerVersion,
        Setting::ServerEncoding,
        Setting::IntegerDatetimes,
        Setting::TransactionIsolation,
    ];

    /// The parameter's name as Postgres spells it.
    pub fn name(self) -> &'static str {
        match self {
            Setting::ApplicationName => "application_name",
            Setting::ClientEncoding => "client_encoding",
            Setting::DateStyle => "DateStyle",
            Setting::ExtraFloatDigits => "extra_float_digits",
            Setting::StatementTimeout => "statement_timeout",
            Setting::TimeZone => "TimeZone",
            Setting::StandardConformingStrings => "standard_conforming_strings",
            Setting::ServerVersion => "server_version",
            Setting::ServerEncoding => "server_encoding",
            Setting::IntegerDatetimes => "integer_datetimes",
            Setting::TransactionIsolation => "transaction_isolation",
        }
    }

    /// The value a session starts with.
    pub fn default_value(self) -> &'static str {
        match self {
            Setting::ApplicationName => "",
            Setting::ClientEncoding | Setting::ServerEncoding => "UTF8",
            Setting::DateStyle => "ISO, MDY",
            Setting::ExtraFloatDigits => "1",
            Setting::StatementTimeout => "0",
            Setting::TimeZone => "UTC",
            Setting::StandardConformingStrings | Setting::IntegerDatetimes => "on",
            Setting::ServerVersion => "16.0",
            Setting::TransactionIsolation => "read committed",
        }
    }

    fn find(name: &str) -> Option<Setting> {
        let name = name.trim_matches('"');
        Setting::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Checks a value for `SET`; the canonical value, or which values it takes.
    fn check(self, value: &str) -> Result<String, &'static str> {
        let v = value.trim();
        let lower = v.to_ascii_lowercase();
        match self {
            Setting::ApplicationName if v.len() <= 64 && !v.chars().any(char::is_control) => {
                Ok(v.to_owned())
            }
            Setting::ApplicationName => Err("at most 64 printable characters"),
            Setting::ClientEncoding if matches!(lower.as_str(), "utf8" | "utf-8" | "unicode") => {
                Ok("UTF8".into())
            }
            Setting::ClientEncoding => Err("only UTF8 is served"),
            Setting::DateStyle if lower.starts_with("iso") => Ok(v.to_owned()),
            Setting::DateStyle => Err("only ISO dates are served"),
            Setting::ExtraFloatDigits => match v.parse::<i32>() {
                Ok(n) if (-15..=3).contains(&n) => Ok(n.to_string()),
                _ => Err("a whole number from -15 to 3"),
            },
            Setting::StatementTimeout => parse_duration_ms(v)
                .map(|ms| ms.to_string())
                .ok_or("milliseconds, or a number with ms, s or min"),
            Setting::TimeZone
                if matches!(lower.as_str(), "utc" | "gmt" | "etc/utc" | "z" | "zulu") =>
            {
                Ok("UTC".into())
            }
            Setting::TimeZone => Err("answers are in UTC; only UTC can be set"),
            Setting::StandardConformingStrings if lower == "on" => Ok("on".into()),
            Setting::StandardConformingStrings => Err("only on"),
            _ => Err("it is read-only"),
        }
    }
}

/// `'30s'`, `'1min'`, `'250ms'` or a bare number of milliseconds.
fn parse_duration_ms(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => t.split_at(at),
        None => (t.as_str(), "ms"),
    };
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "min" => 60_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// How deep expressions and subqueries may nest in a query.
pub const MAX_NESTING: usize = 20;

/// Parses `sql` once and admits each of its statements, or refuses the whole text.
pub fn admit(sql: &str) -> Result<Vec<Admitted>, GateError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(GateError::Invalid(format!(
            "the SQL text is {} bytes; at most {MAX_SQL_BYTES} are read",
            sql.len()
        )));
    }
    // Nesting is bounded well below sqlparser's default (50): the parser backtracks on
    // parentheses, and a fuzzed 256-byte text nested ~30 deep took it over 10 s.
    let parsed = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(MAX_NESTING)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    let statements = match parsed {
        Ok(s) => s,
        Err(e) => {
            // DataFusion's own statements (CREATE EXTERNAL TABLE, COPY … TO) are not in the
            // Postgres dialect: refuse them by their first word rather than call them invalid.
            let first = sql
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if matches!(
                first.as_str(),
                "create"
                    | "drop"
                    | "insert"
                    | "update"
                    | "delete"
                    | "copy"
                    | "alter"
                    | "truncate"
                    | "grant"
                    | "revoke"
                    | "merge"
                    | "load"
                    | "attach"
            ) {
                return Err(GateError::Refused(READ_ONLY.into()));
            }
            return Err(GateError::Invalid(format!("not valid SQL: {e}")));
        }
    };
    statements.into_iter().map(admit_statement).collect()
}

/// Admits one parsed statement.
pub fn admit_statement(statement: Statement) -> Result<Admitted, GateError> {
    match statement {
        Statement::Query(ref q) => {
            read_only_query(q)?;
            Ok(Admitted::Query(Box::new(statement)))
        }
        Statement::Explain {
            statement: ref inner,
            ..
        } => match inner.as_ref() {
            Statement::Query(q) => {
                read_only_query(q)?;
                Ok(Admitted::Query(Box::new(statement)))
            }
            _ => Err(GateError::Refused(READ_ONLY.into())),
        },
        Statement::Declare { stmts } => {
            let [declare] = stmts.as_slice() else {
                return Err(GateError::Invalid("declare one cursor at a time".into()));
            };
            let (Some(DeclareType::Cursor), Some(query), [name]) = (
                &declare.declare_type,
                &declare.for_query,
                declare.names.as_slice(),
            ) else {
                return Err(GateError::Refused(
                    "only cursors can be declared: DECLARE name CURSOR FOR <query>".into(),
                ));
            };
            if declare.scroll == Some(true) {
                return Err(GateError::Refused(
                    "cursors are forward-only: declare it NO SCROLL (the default)".into(),
                ));
            }
            read_only_query(query)?;
            Ok(Admitted::Declare {
                cursor: name.value.clone(),
                hold: declare.hold == Some(true),
                query: Box::new(Statement::Query(query.clone())),
            })
        }
        Statement::Fetch {
            name,
            direction,
            into,
            ..
        } => {
            if into.is_some() {
                return Err(GateError::Refused(READ_ONLY.into()));
            }
            let count = |v: &Value| match v {
                Value::Number(n, _) => n.parse::<u64>().map_err(|_| {
                    GateError::Invalid(format!("FETCH count {n} is not a whole number"))
                }),
                other => Err(GateError::Invalid(format!(
                    "FETCH count {other} is not a number"
                ))),
            };
            let count = match direction {
                FetchDirection::Next | FetchDirection::Forward { limit: None } => Some(1),
                FetchDirection::Count { limit } => Some(count(&limit.value)?),
                FetchDirection::Forward { limit: Some(limit) } => Some(count(&limit.value)?),
                FetchDirection::All | FetchDirection::ForwardAll => None,
                _ => {
                    return Err(GateError::Refused(
                        "cursors are forward-only: FETCH n, NEXT, FORWARD n or ALL".into(),
                    ));
                }
            };
            Ok(Admitted::Fetch {
                cursor: name.value,
                count,
            })
        }
        Statement::Close { cursor } => Ok(Admitted::Close(match cursor {
            CloseCursor::All => None,
            CloseCursor::Specific { name } => Some(name.value),
        })),
        Statement::Set(set) => admit_set(set),
        Statement::ShowVariable { variable } => {
            let name = variable
                .iter()
                .map(|i| i.value.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            Setting::find(&name)
                .map(Admitted::Show)
                .ok_or_else(|| unknown_setting(&name))
        }
        Statement::StartTransaction { .. } => Ok(Admitted::Begin),
        Statement::Commit { .. } => Ok(Admitted::End { commit: true }),
        Statement::Rollback {
            savepoint: None, ..
        } => Ok(Admitted::End { commit: false }),
        _ => Err(GateError::Refused(READ_ONLY.into())),
    }
}

fn unknown_setting(name: &str) -> GateError {
    let known: Vec<&str> = Setting::ALL.iter().map(|s| s.name()).collect();
    GateError::Refused(format!(
        "unrecognized or unavailable configuration parameter \"{name}\": a session may set or show {}; the engine's own settings are not settable",
        known.join(", ")
    ))
}

fn admit_set(set: sqlparser::ast::Set) -> Result<Admitted, GateError> {
    use sqlparser::ast::Set;
    let (variable, values): (ObjectName, Vec<Expr>) = match set {
        Set::SingleAssignment {
            variable,
            values,
            hivevar: false,
            ..
        } => (variable, values),
        Set::SetTimeZone { value, .. } => {
            let text = expr_text(&value);
            return Setting::TimeZone
                .check(&text)
                .map(|v| Admitted::Set(Setting::TimeZone, v))
                .map_err(|why| GateError::Refused(format!("SET TimeZone = {text}: {why}")));
        }
        other => {
            return Err(GateError::Refused(format!(
                "{other}: a session may only SET one of its own parameters"
            )));
        }
    };
    let name = variable.to_string();
    let setting = Setting::find(&name).ok_or_else(|| unknown_setting(&name))?;
    let text = values.iter().map(expr_text).collect::<Vec<_>>().join(", ");
    if text.eq_ignore_ascii_case("default") {
        return Ok(Admitted::Reset(setting));
    }
    setting
        .check(&text)
        .map(|v| Admitted::Set(setting, v))
        .map_err(|why| GateError::Refused(format!("SET {} = {text}: {why}", setting.name())))
}

/// A SET value as text: quoted strings unquoted, identifiers and numbers as written.
fn expr_text(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

/// A query with no `INTO` and no data-modifying part, at any depth of its body and its CTEs.
fn read_only_query(query: &Query) -> Result<(), GateError> {
    if let Some(with) = &query.with {
        for cte in &with.cte_tables {
            read_only_query(&cte.query)?;
        }
    }
    read_only_body(&query.body)
}

fn read_only_body(body: &SetExpr) -> Result<(), GateError> {
    match body {
        SetExpr::Select(select) if select.into.is_none() => Ok(()),
        SetExpr::Query(q) => read_only_query(q),
        SetExpr::SetOperation { left, right, .. } => {
            read_only_body(left)?;
            read_only_body(right)
        }
        SetExpr::Values(_) | SetExpr::Table(_) => Ok(()),
        _ => Err(GateError::Refused(READ_ONLY.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(sql: &str) -> bool {
        matches!(admit(sql), Err(GateError::Refused(_)))
    }

    #[test]
    fn queries_pass_and_everything_that_writes_is_refused() {
        for ok in [
            "SELECT 1",
            "with a as (select 1) select * from a",
            "EXPLAIN SELECT * FROM inventory",
            "VALUES (1), (2)",
            "SELECT 1 UNION SELECT 2",
        ] {
            assert!(
                matches!(admit(ok).as_deref(), Ok([Admitted::Query(_)])),
                "{ok}"
            );
        }
        for no in [
            "DROP TABLE inventory",
            "CREATE TABLE t (a int)",
            "CREATE VIEW v AS SELECT 1",
            "INSERT INTO inventory VALUES (1)",
            "COPY inventory TO '/tmp/x.csv'",
            "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
            "DELETE FROM inventory",
            "SELECT * INTO leak FROM inventory",
            "SELECT 1 UNION SELECT * INTO leak FROM inventory",
            "WITH x AS (SELECT * INTO leak FROM inventory) SELECT 1",
            "EXPLAIN SELECT * INTO leak FROM inventory",
            "DECLARE d CURSOR FOR SELECT * INTO leak FROM inventory",
            "FETCH ALL FROM c INTO leak",
            "PREPARE p AS SELECT 1",
            "SHOW TABLES",
        ] {
            assert!(refused(no), "{no}: {:?}", admit(no));
        }
        assert!(matches!(admit("SELEC 1"), Err(GateError::Invalid(_))));
        assert!(matches!(
            admit(&"x".repeat(MAX_SQL_BYTES + 1)),
            Err(GateError::Invalid(_))
        ));
    }

    #[test]
    fn only_session_parameters_can_be_set_and_never_the_engines() {
        for no in [
            "SET \"datafusion\".catalog.default_schema = 'nope'",
            "SET datafusion.catalog.default_schema = 'nope'",
            "SET datafusion.execution.target_partitions = 8",
            "SET \"DataFusion\".\"execution\".\"time_zone\" = '+05:00'",
            "SET search_path = nope",
            "SET TIME ZONE 'Asia/Tokyo'",
            "SET timezone = 'Europe/Paris'",
            "SET client_encoding = 'LATIN1'",
            "SET statement_timeout = 'forever'",
            "SET server_version = '9'",
            "SET ROLE admin",
            "SHOW datafusion.catalog.default_schema",
            "SHOW ALL",
        ] {
            assert!(refused(no), "{no}: {:?}", admit(no));
        }
        assert_eq!(
            admit("SET application_name = 'psql'").ok(),
            Some(vec![Admitted::Set(Setting::ApplicationName, "psql".into())])
        );
        assert_eq!(
            admit("SET extra_float_digits = 3").ok(),
            Some(vec![Admitted::Set(Setting::ExtraFloatDigits, "3".into())])
        );
        assert_eq!(
            admit("SET statement_timeout = '5s'").ok(),
            Some(vec![Admitted::Set(
                Setting::StatementTimeout,
                "5000".into()
            )])
        );
        assert_eq!(
            admit("SET TIME ZONE 'UTC'").ok(),
            Some(vec![Admitted::Set(Setting::TimeZone, "UTC".into())])
        );
        assert_eq!(
            admit("SHOW TimeZone").ok(),
            Some(vec![Admitted::Show(Setting::TimeZone)])
        );
        assert_eq!(
            admit("SET application_name TO DEFAULT").ok(),
            Some(vec![Admitted::Reset(Setting::ApplicationName)])
        );
    }

    #[test]
    fn cursors_are_admitted_with_their_query_checked() {
        let declared = admit("DECLARE c CURSOR WITH HOLD FOR SELECT count(*) FROM liveness");
        let Ok([Admitted::Declare { cursor, hold, .. }]) = declared.as_deref() else {
            panic!("not one cursor: {declared:?}")
        };
        let (cursor, hold) = (cursor.clone(), *hold);
        assert_eq!((cursor.as_str(), hold), ("c", true));
        assert_eq!(
            admit("FETCH 5 FROM c").ok(),
            Some(vec![Admitted::Fetch {
                cursor: "c".into(),
                count: Some(5)
            }])
        );
        assert_eq!(
            admit("FETCH ALL IN c").ok(),
            Some(vec![Admitted::Fetch {
                cursor: "c".into(),
                count: None
            }])
        );
        assert_eq!(admit("CLOSE ALL").ok(), Some(vec![Admitted::Close(None)]));
        assert!(refused("FETCH PRIOR FROM c"));
        assert!(refused("DECLARE c SCROLL CURSOR FOR SELECT 1"));
        assert_eq!(
            admit("BEGIN; SELECT 1; COMMIT").map(|v| v.len()).ok(),
            Some(3)
        );
    }

    #[test]
    fn deeply_nested_text_is_refused_quickly() {
        // Found by the `sql_gate` fuzz target (fuzz/regressions/sql_gate/): over 10 s to parse.
        let text = include_bytes!(
            "../../../fuzz/regressions/sql_gate/timeout-551ac8c0b09a8e8d9cc62aab59053882b1761497"
        );
        let started = std::time::Instant::now();
        let _ = admit(&String::from_utf8_lossy(text));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let nested = format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40));
        assert!(matches!(admit(&nested), Err(GateError::Invalid(_))));
        let fine = format!("SELECT {}1{}", "(".repeat(8), ")".repeat(8));
        assert!(admit(&fine).is_ok());
    }
}
