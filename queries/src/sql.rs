//! SQL over the live views, with DataFusion.
//!
//! Each query runs over one snapshot of the view store: every view is a table of that snapshot
//! (an in-memory `TableProvider`), so a query joining two views sees one frontier. Read-only:
//! DDL (`CREATE`, `DROP`, `CREATE EXTERNAL TABLE`), DML (`INSERT`, `COPY`) and statements (`SET`,
//! transactions) are refused before planning; no table reads files. Each query has a time limit
//! and a memory limit, and runs on its own runtime threads apart from the dataflows.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use vendflow_dataflows::ViewStore;

/// Per-query limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the query ran longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// The answer: the frontier the views were read at, and the result.
pub struct Answer {
    pub time: u64,
    pub batches: Vec<RecordBatch>,
    pub schema: arrow_schema::SchemaRef,
}

/// Runs `sql` over one snapshot of `store`.
pub async fn query(store: &ViewStore, sql: &str, limits: Limits) -> Result<Answer, QueryError> {
    // One statement, and only a query: refused with a reason before anything is planned.
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|e| QueryError::Invalid(format!("not valid SQL: {e}")))?;
    match statements.as_slice() {
        [datafusion::sql::sqlparser::ast::Statement::Query(_)] => {}
        [] => return Err(QueryError::Invalid("no statement".into())),
        [_] => {
            return Err(QueryError::Refused(
                "read-only: only SELECT (and WITH … SELECT) queries are allowed; DDL, DML, COPY and SET are refused".into(),
            ));
        }
        _ => return Err(QueryError::Invalid("one statement per query".into())),
    }
    let snapshot = store.snapshot();
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_bytes)))
        .build_arc()
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
    let batches = snapshot
        .batches()
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    for (def, batch) in batches {
        ctx.register_batch(def.name, batch)
            .map_err(|e| QueryError::Failed(e.to_string()))?;
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let run = async {
        let frame = ctx
            .sql_with_options(sql, options)
            .await
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame
            .collect()
            .await
            .map_err(|e| QueryError::Failed(e.to_string()))?;
        Ok::<_, QueryError>((schema, batches))
    };
    let (schema, batches) = tokio::time::timeout(limits.timeout, run)
        .await
        .map_err(|_| QueryError::Timeout(limits.timeout))??;
    Ok(Answer {
        time: snapshot.frontier,
        batches,
        schema,
    })
}

/// Encodes an answer for an `Accept` header: (content type, bytes).
pub fn encode(answer: &Answer, accept: &str) -> Result<(&'static str, Vec<u8>), QueryError> {
    let failed = |e: arrow_schema::ArrowError| QueryError::Failed(e.to_string());
    if accept.contains("text/csv") {
        let mut out = Vec::new();
        {
            let mut writer = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut out);
            for batch in &answer.batches {
                writer.write(batch).map_err(failed)?;
            }
        }
        return Ok(("text/csv; charset=utf-8", out));
    }
    if accept.contains("application/vnd.apache.arrow.stream") {
        let mut out = Vec::new();
        {
            let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut out, &answer.schema)
                .map_err(failed)?;
            for batch in &answer.batches {
                writer.write(batch).map_err(failed)?;
            }
            writer.finish().map_err(failed)?;
        }
        return Ok(("application/vnd.apache.arrow.stream", out));
    }
    let mut rows = Vec::new();
    {
        let mut writer = arrow_json::ArrayWriter::new(&mut rows);
        for batch in &answer.batches {
            writer.write(batch).map_err(failed)?;
        }
        writer.finish().map_err(failed)?;
    }
    if rows.is_empty() {
        rows.extend_from_slice(b"[]");
    }
    let columns: Vec<&str> = answer
        .schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let mut out = format!(
        "{{\"time\":{},\"columns\":{},\"rows\":",
        answer.time,
        serde_json::to_string(&columns).unwrap_or_default()
    )
    .into_bytes();
    out.extend_from_slice(&rows);
    out.push(b'}');
    Ok(("application/json", out))
}
