//! SQL over the live views and the Parquet archive, with DataFusion.
//!
//! One [`Sql`] serves HTTP (`POST /sql`) and the Postgres wire protocol. Its tables:
//! - every live view, as a `TableProvider` reading the view store. All the views one query reads
//!   come from **one snapshot** (one frontier): the snapshot is chosen per query, keyed by the
//!   query's start instant, so a join of two views never mixes two timestamps;
//! - with an archive: `events` and `rejected` (Hive-partitioned by `date` and `hour`, so
//!   `WHERE date = DATE '2024-03-09'` reads only that day's files), and `<view>_history` for each
//!   per-day history table (partitioned by `date`);
//! - ready views for analysts: `revenue_by_machine_day` and `revenue_by_location_day` (the live
//!   days from the views, older days from the history), and `lease_revenue_share_monthly`.
//!
//! Every statement is admitted by [`crate::gate`] first (read-only queries only, parsed once), and
//! every query of every protocol executes through one function, [`Sql::run`], which applies:
//! - the caller's tenant scope, **failing closed**: a live view reads only the snapshot that
//!   `run` attached to that query's session state (already filtered to the tenant's rows); a scan
//!   without one is an error, never an unfiltered read;
//! - the archive rule (a tenant's token reads no archive table);
//! - a time limit over planning *and* producing every row; a result-size bound
//!   ([`Limits::max_result_bytes`]); a memory pool of [`Limits::memory_bytes`] per query that
//!   spills or fails rather than grow;
//! - at most [`Limits::concurrent`] queries at once, and at most [`Limits::per_caller`] of them
//!   from one token, so one token cannot take every slot.
//!
//! No function or table reads arbitrary files, and nothing a caller sends changes the shared
//! context. DataFusion runs on the async runtime's threads, apart from the dataflow's workers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{
    BinaryExpr, Expr, LogicalPlan, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vendflow_dataflows::{CATALOG, ColumnType, Snapshot, Value, ViewDef, ViewStore};

use crate::gate::{self, Admitted};

/// Per-query limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Duration,
    /// The memory pool of one query (operators spill or fail past it).
    pub memory_bytes: usize,
    /// Queries running at once; more wait (within their time limit).
    pub concurrent: usize,
    /// Queries one caller (one token) may run at once; one more is refused as busy.
    pub per_caller: usize,
    /// The largest answer, in Arrow bytes; a larger one is stopped with a message.
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            concurrent: 4,
            per_caller: 2,
            max_result_bytes: 64 << 20,
        }
    }
}

/// Who runs a query: the key its fairness is counted by (the token's id) and what it may see.
#[derive(Clone)]
pub struct Caller {
    pub key: String,
    pub scope: Scope,
}

impl Caller {
    /// The whole fleet, for in-process callers and servers without access control.
    pub fn platform() -> Caller {
        Caller {
            key: "-".into(),
            scope: Scope::All,
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
    /// Too many queries at once (retry shortly).
    #[error("{0}")]
    Busy(String),
    #[error("the answer is larger than {} MiB and was stopped: add a LIMIT, filter or aggregate", .0 >> 20)]
    TooLarge(usize),
    #[error("{0}")]
    Failed(String),
}

impl From<crate::gate::GateError> for QueryError {
    fn from(e: crate::gate::GateError) -> Self {
        match e {
            crate::gate::GateError::Refused(why) => QueryError::Refused(why),
            crate::gate::GateError::Invalid(why) => QueryError::Invalid(why),
        }
    }
}

const QUERIES_ONLY: &str = "POST /sql takes one query (SELECT, WITH … SELECT, VALUES or EXPLAIN); cursors and session settings are for Postgres sessions";

/// Whose rows a query sees.
#[derive(Clone)]
pub enum Scope {
    /// The whole fleet.
    All,
    /// One client's locations and machines, and the rows about them.
    Tenant(TenantScope),
}

#[derive(Clone)]
pub struct TenantScope {
    pub client: String,
    pub owners: Arc<dyn Owners>,
}

/// Whether a machine or a location belongs to a client (the registry knows).
pub trait Owners: Send + Sync {
    fn machine_of(&self, machine_id: &str, client: &str) -> bool;
    fn location_of(&self, location_id: &str, client: &str) -> bool;
}

/// What a view's rows are about, by the first of these columns it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Machine(usize),
    Location(usize),
    Client(usize),
}

pub fn owner_column(def: &ViewDef) -> Option<Owner> {
    def.column("machine_id")
        .map(Owner::Machine)
        .or_else(|| def.column("location_id").map(Owner::Location))
        .or_else(|| def.column("client_id").map(Owner::Client))
}

impl Scope {
    /// Whether the scope may read `def` at all: a tenant only reads views about machines,
    /// locations or clients (fleet-wide totals would tell it about others).
    pub fn sees_view(&self, def: &ViewDef) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(_) => owner_column(def).is_some(),
        }
    }

    /// Whether the scope sees `row` of `def`.
    pub fn keeps(&self, def: &ViewDef, row: &vendflow_dataflows::Row) -> bool {
        let Scope::Tenant(t) = self else {
            return true;
        };
        let text = |i: usize| match row.get(i) {
            Some(vendflow_dataflows::Value::Text(s)) => Some(s),
            _ => None,
        };
        match owner_column(def) {
            None => false,
            Some(Owner::Machine(i)) => text(i).is_some_and(|m| t.owners.machine_of(&m, &t.client)),
            Some(Owner::Location(i)) => {
                text(i).is_some_and(|l| t.owners.location_of(&l, &t.client))
            }
            Some(Owner::Client(i)) => text(i).as_deref() == Some(t.client.as_str()),
        }
    }
}

const TENANT_TABLES: &str = "tokens scoped to one client read the live views about machines, locations and leases (the archive's tables and fleet-wide views need a token of tenant *)";

/// The answer: the frontier the views were read at, and the result.
pub struct Answer {
    pub time: i64,
    pub batches: Vec<RecordBatch>,
    pub schema: SchemaRef,
}

/// The snapshot one query reads, attached to its session state by [`Sql::run`]; already
/// filtered to the caller's scope.
#[derive(Debug)]
struct QuerySnapshot(Arc<Snapshot>);

/// A live view as a table: each scan reads the snapshot of the query it belongs to, and only
/// that: a scan in a state with no snapshot attached fails (scoping fails closed).
#[derive(Debug)]
struct LiveTable {
    def: &'static ViewDef,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match text_equality(self.def, f) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let Some(QuerySnapshot(snapshot)) = state
            .config()
            .get_extension::<QuerySnapshot>()
            .as_deref()
            .map(|q| QuerySnapshot(q.0.clone()))
        else {
            return Err(DataFusionError::Internal(format!(
                "live view {} scanned outside a query's snapshot",
                self.def.name
            )));
        };
        // Equalities on text columns select rows before they become Arrow (DataFusion applies
        // every filter again: they are pushed down as inexact).
        let wanted: Vec<(usize, String)> = filters
            .iter()
            .filter_map(|f| text_equality(self.def, f))
            .collect();
        let batch = if wanted.is_empty() {
            snapshot.batch(self.def.name)
        } else {
            snapshot.batch_where(self.def.name, |row| {
                wanted
                    .iter()
                    .all(|(i, v)| matches!(row.get(*i), Some(Value::Text(t)) if t.as_str() == v))
            })
        }
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let table = MemTable::try_new(self.schema.clone(), vec![vec![batch]])?;
        table.scan(state, projection, filters, limit).await
    }
}

/// `column = 'text'` (either way round) on a text column of `def`: (column index, text).
fn text_equality(def: &ViewDef, filter: &Expr) -> Option<(usize, String)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = filter
    else {
        return None;
    };
    let (column, literal) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => (c, v),
        _ => return None,
    };
    let text = match literal {
        ScalarValue::Utf8(Some(t))
        | ScalarValue::Utf8View(Some(t))
        | ScalarValue::LargeUtf8(Some(t)) => t,
        _ => return None,
    };
    let index = def.column(&column.name)?;
    matches!(def.columns[index].ty, ColumnType::Text).then(|| (index, text.clone()))
}

/// The SQL engine: one DataFusion context with every table, shared by all endpoints. Nothing a
/// caller sends changes it: queries run on a per-query copy of its state.
pub struct Sql {
    ctx: SessionContext,
    store: ViewStore,
    limits: Limits,
    permits: Semaphore,
    /// Each caller's own slots (by token id), so one token cannot take every permit.
    callers: Mutex<HashMap<String, Arc<Semaphore>>>,
    archived: bool,
    latency: Latency,
}

fn failed(e: impl std::fmt::Display) -> QueryError {
    QueryError::Failed(e.to_string())
}

impl Sql {
    /// The engine over `store`, and over the Parquet archive at `archive` when given.
    pub async fn new(
        store: ViewStore,
        archive: Option<&Path>,
        limits: Limits,
    ) -> Result<Sql, QueryError> {
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        for def in CATALOG {
            let table = LiveTable {
                def,
                schema: def.schema(),
            };
            ctx.register_table(def.name, Arc::new(table))
                .map_err(failed)?;
        }
        let archived = match archive {
            Some(root) => {
                register_archive(&ctx, root).await?;
                true
            }
            None => false,
        };
        for (name, sql) in ready_views(archived) {
            ctx.sql(&format!("CREATE VIEW {name} AS {sql}"))
                .await
                .map_err(|e| QueryError::Failed(format!("view {name}: {e}")))?;
        }
        Ok(Sql {
            ctx,
            store,
            limits,
            permits: Semaphore::new(limits.concurrent.max(1)),
            callers: Mutex::new(HashMap::new()),
            archived,
            latency: Latency::default(),
        })
    }

    /// SQL over a Parquet archive alone, with no engine running (`vendflow sql --archive`): the
    /// views as of the archive's newest snapshot, its history tables and raw events.
    pub fn over_archive(archive: &Path) -> Result<Arc<Sql>, QueryError> {
        if !archive.join("history").is_dir() {
            return Err(QueryError::Invalid(format!(
                "{} is not a vendflow archive (no history/ directory); write one with `vendflow replay FILE --archive DIR` or `vendflow demo --archive DIR`",
                archive.display()
            )));
        }
        let failed = |e: &dyn std::fmt::Display| {
            QueryError::Failed(format!("archive {}: {e}", archive.display()))
        };
        let (frontier, views) = vendflow_sinks::archive::newest_snapshot(archive)
            .map_err(|e| failed(&e))?
            .unwrap_or_default();
        let store = ViewStore::fixed(frontier, views).map_err(|e| failed(&e))?;
        Sql::open(store, Some(archive), Limits::default())
    }

    /// [`Sql::new`] for callers outside a runtime: nothing in it waits on I/O.
    pub fn open(
        store: ViewStore,
        archive: Option<&Path>,
        limits: Limits,
    ) -> Result<Arc<Sql>, QueryError> {
        futures::executor::block_on(Sql::new(store, archive, limits)).map(Arc::new)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the archive's tables are available.
    pub fn archived(&self) -> bool {
        self.archived
    }

    /// Runs one read-only query over the whole fleet.
    pub async fn query(&self, sql: &str) -> Result<Answer, QueryError> {
        self.query_in(&Caller::platform(), sql).await
    }

    /// [`Sql::query`] for a caller outside a runtime (a command-line tool): on a runtime of its
    /// own, for this query.
    pub fn query_blocking(&self, sql: &str) -> Result<Answer, QueryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(failed)?;
        runtime.block_on(self.query(sql))
    }

    /// Runs the one query of `sql` (as `POST /sql` does) for `caller`.
    pub async fn query_in(&self, caller: &Caller, sql: &str) -> Result<Answer, QueryError> {
        let started = std::time::Instant::now();
        let result = match gate::admit(sql) {
            Ok(admitted) => match <[Admitted; 1]>::try_from(admitted) {
                Ok([Admitted::Query(statement)]) => {
                    return self.run_statement(caller, &statement, None).await;
                }
                Ok(_) => Err(QueryError::Refused(QUERIES_ONLY.into())),
                Err(v) if v.is_empty() => Err(QueryError::Invalid("no statement".into())),
                Err(_) => Err(QueryError::Invalid("one statement per query".into())),
            },
            Err(e) => Err(e.into()),
        };
        self.latency.record(started.elapsed(), result.is_ok());
        result
    }

    /// Plans an admitted query on the shared context without running it (prepared statements
    /// are described before they run). Planning reads no rows.
    pub async fn plan(&self, statement: &Statement) -> Result<LogicalPlan, QueryError> {
        self.ctx
            .state()
            .statement_to_plan(DFStatement::Statement(Box::new(statement.clone())))
            .await
            .map_err(|e| QueryError::Invalid(e.to_string()))
    }

    /// Plans and runs an admitted query for `caller`, within `timeout` when shorter than the
    /// engine's limit.
    pub async fn run_statement(
        &self,
        caller: &Caller,
        statement: &Statement,
        timeout: Option<Duration>,
    ) -> Result<Answer, QueryError> {
        self.timed(timeout, async {
            let plan = self.plan(statement).await?;
            self.execute(caller, plan).await
        })
        .await
    }

    /// Runs a plan made by [`Sql::plan`] (its parameters bound) for `caller`: the one place
    /// every query of every protocol executes.
    pub async fn run(
        &self,
        caller: &Caller,
        plan: LogicalPlan,
        timeout: Option<Duration>,
    ) -> Result<Answer, QueryError> {
        self.timed(timeout, self.execute(caller, plan)).await
    }

    /// `work` within the time limit (the session's, when shorter), its latency recorded.
    async fn timed(
        &self,
        timeout: Option<Duration>,
        work: impl std::future::Future<Output = Result<Answer, QueryError>>,
    ) -> Result<Answer, QueryError> {
        let started = std::time::Instant::now();
        let limit = self.timeout(timeout);
        let result = tokio::time::timeout(limit, work)
            .await
            .map_err(|_| QueryError::Timeout(limit))
            .and_then(|r| r);
        self.latency.record(started.elapsed(), result.is_ok());
        result
    }

    fn timeout(&self, session: Option<Duration>) -> Duration {
        match session {
            Some(t) if !t.is_zero() => t.min(self.limits.timeout),
            _ => self.limits.timeout,
        }
    }

    /// The caller's own slot (refused when it already runs its share), then a shared one
    /// (waited for, within the time limit).
    async fn slots(
        &self,
        caller: &Caller,
    ) -> Result<(OwnedSemaphorePermit, tokio::sync::SemaphorePermit<'_>), QueryError> {
        let per_caller = self.limits.per_caller.max(1);
        let mine = {
            let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
            if callers.len() > 1024 {
                callers.retain(|_, s| s.available_permits() < per_caller);
            }
            callers
                .entry(caller.key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(per_caller)))
                .clone()
        };
        let mine = mine.try_acquire_owned().map_err(|_| {
            QueryError::Busy(format!(
                "this token already runs {per_caller} queries at once; retry when one has finished"
            ))
        })?;
        let shared = self.permits.acquire().await.map_err(failed)?;
        Ok((mine, shared))
    }

    async fn execute(&self, caller: &Caller, plan: LogicalPlan) -> Result<Answer, QueryError> {
        let _slots = self.slots(caller).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|_| QueryError::Refused(gate::READ_ONLY.into()))?;
        if let Scope::Tenant(_) = caller.scope
            && let Some(table) = archive_tables(&plan).first()
        {
            return Err(QueryError::Refused(format!(
                "table {table}: {TENANT_TABLES}"
            )));
        }
        // Snapshot just the views the query reads (all of them if it reads a ready view), and
        // of a view scanned only with `first_column = 'text'`, just those rows (one machine's
        // rows are a lookup, not a copy of the view); filtered to the caller's rows before
        // anything can scan it. Filters are found where the optimizer pushed them, on the scans.
        let reads = match self.ctx.state().optimize(&plan) {
            Ok(optimized) => live_reads(&optimized),
            Err(_) => live_reads(&plan),
        };
        let reads: Vec<(&str, Option<&[String]>)> = reads
            .iter()
            .map(|(name, keys)| (name.as_str(), keys.as_deref()))
            .collect();
        let mut snapshot = self.store.snapshot_reads(&reads);
        if let Scope::Tenant(_) = caller.scope {
            snapshot.retain(|def, row| caller.scope.keeps(def, row));
        }
        let time = snapshot.frontier.ms();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(self.limits.memory_bytes)))
            .build_arc()
            .map_err(failed)?;
        let mut state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_runtime_env(runtime)
            .build();
        state
            .config_mut()
            .set_extension(Arc::new(QuerySnapshot(Arc::new(snapshot))));
        let frame = DataFrame::new(state, plan);
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let mut stream = frame.execute_stream().await.map_err(failed)?;
        let (mut batches, mut bytes) = (Vec::new(), 0usize);
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(failed)?;
            bytes = bytes.saturating_add(batch.get_array_memory_size());
            if bytes > self.limits.max_result_bytes {
                return Err(QueryError::TooLarge(self.limits.max_result_bytes));
            }
            batches.push(batch);
        }
        Ok(Answer {
            time,
            batches,
            schema,
        })
    }

    /// Query latencies so far (for `/metrics`).
    pub fn latency(&self) -> &Latency {
        &self.latency
    }
}

/// A histogram of query latencies, in Prometheus' shape (cumulative buckets, sum, count).
#[derive(Default)]
pub struct Latency {
    buckets: [std::sync::atomic::AtomicU64; Latency::BOUNDS_MS.len()],
    sum_us: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Latency {
    pub const BOUNDS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

    fn record(&self, took: Duration, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let ms = took.as_secs_f64() * 1e3;
        for (bound, bucket) in Self::BOUNDS_MS.iter().zip(&self.buckets) {
            if ms <= *bound as f64 {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.sum_us
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
        if !ok {
            self.failed.fetch_add(1, Relaxed);
        }
    }

    /// The histogram as Prometheus text.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::from(
            "# HELP vendflow_query_duration_seconds SQL query latency (HTTP and Postgres protocol).\n\
             # TYPE vendflow_query_duration_seconds histogram\n",
        );
        for (bound, bucket) in Self::BOUNDS_MS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "vendflow_query_duration_seconds_bucket{{le=\"{}\"}} {}",
                *bound as f64 / 1e3,
                bucket.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(
            out,
            "vendflow_query_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             vendflow_query_duration_seconds_sum {}\n\
             vendflow_query_duration_seconds_count {count}\n\
             # HELP vendflow_queries_failed_total SQL queries refused, invalid, timed out or failed.\n\
             # TYPE vendflow_queries_failed_total counter\n\
             vendflow_queries_failed_total {}",
            self.sum_us.load(Relaxed) as f64 / 1e6,
            self.failed.load(Relaxed)
        );
        out
    }
}

/// The archive's tables a plan reads (raw events, rejected records, history).
fn archive_tables(plan: &LogicalPlan) -> Vec<String> {
    let mut names = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table();
            if name == "events" || name == "rejected" || name.ends_with("_history") {
                names.push(name.to_owned());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    names
}

/// The live views a plan reads; every view if it reads a view defined in SQL.
/// The live views a plan scans, each with the keys its scans select: `None` when some scan of
/// it reads every row, `Some(keys)` when every scan has `first_column = 'key'` among its filters.
fn live_reads(plan: &LogicalPlan) -> Vec<(String, Option<Vec<String>>)> {
    let mut reads: Vec<(String, Option<Vec<String>>)> = Vec::new();
    let mut everything = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let name = scan.table_name.table();
            if let Some(def) = CATALOG.iter().find(|d| d.name == name) {
                let key = scan
                    .filters
                    .iter()
                    .filter_map(|f| text_equality(def, f))
                    .find(|(column, _)| *column == 0)
                    .map(|(_, key)| key);
                match (reads.iter_mut().find(|(n, _)| n == name), key) {
                    (None, key) => reads.push((name.to_owned(), key.map(|k| vec![k]))),
                    (Some((_, Some(keys))), Some(key)) => keys.push(key),
                    (Some((_, keys)), _) => *keys = None,
                }
            } else if ready_views(true).iter().any(|(v, _)| *v == name) {
                everything = true;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if everything {
        return CATALOG.iter().map(|d| (d.name.to_owned(), None)).collect();
    }
    reads
}

fn listing(
    root: &Path,
    dir: &str,
    schema: SchemaRef,
    partitions: Vec<(String, DataType)>,
) -> Result<Option<ListingTable>, QueryError> {
    let path = root.join(dir);
    if !path.is_dir() {
        return Ok(None);
    }
    let path = std::path::absolute(&path).map_err(failed)?;
    let url = ListingTableUrl::parse(format!("{}/", path.display())).map_err(failed)?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partitions);
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(config).map(Some).map_err(failed)
}

async fn register_archive(ctx: &SessionContext, root: &Path) -> Result<(), QueryError> {
    let hourly = || {
        vec![
            ("date".to_owned(), DataType::Date32),
            ("hour".to_owned(), DataType::Int32),
        ]
    };
    let tables = [
        (
            "events",
            "events",
            vendflow_sinks::rows::EVENT_SCHEMA.clone(),
        ),
        (
            "rejected",
            "rejected",
            vendflow_sinks::rows::REJECTED_SCHEMA.clone(),
        ),
    ];
    for (name, dir, schema) in tables {
        if let Some(table) = listing(root, dir, schema, hourly())? {
            ctx.register_table(name, Arc::new(table)).map_err(failed)?;
        }
    }
    for table in vendflow_sinks::archive::history_views() {
        let Some((_, def)) = vendflow_dataflows::views::find(table) else {
            continue;
        };
        let dir = format!("history/{table}");
        let daily = vec![("date".to_owned(), DataType::Date32)];
        if let Some(listing) = listing(root, &dir, def.schema(), daily)? {
            ctx.register_table(format!("{table}_history"), Arc::new(listing))
                .map_err(failed)?;
        }
    }
    Ok(())
}

/// The analysts' ready views: `(name, SELECT …)`.
fn ready_views(archived: bool) -> Vec<(&'static str, String)> {
    // Live days from the views; with an archive, older days from the history: a day's file
    // plus the corrections that arrived after it had left the view, summed.
    let with_history = |view: &str, key: &str| {
        let live = format!("SELECT {key}, day, revenue, units, lines FROM {view}");
        if archived {
            format!(
                "{live} UNION ALL SELECT {key}, day, CAST(SUM(revenue) AS DECIMAL(18, 2)) AS revenue, \
                 SUM(units) AS units, SUM(lines) AS lines FROM {view}_history \
                 WHERE day NOT IN (SELECT DISTINCT day FROM {view}) GROUP BY {key}, day"
            )
        } else {
            live
        }
    };
    vec![
        (
            "revenue_by_machine_day",
            with_history("revenue_machine_daily", "machine_id"),
        ),
        (
            "revenue_by_location_day",
            with_history("revenue_location_daily", "location_id"),
        ),
        (
            // Days of each machine's own calendar (its location's time zone).
            "revenue_by_machine_local_day",
            with_history("revenue_machine_local_daily", "machine_id, time_zone"),
        ),
        (
            // What each lease owes per month: the monthly rate plus its share of the machine's
            // revenue on the days of the month the lease covers, months and days of the
            // machine's own calendar (its location's time zone; UTC without one). The share is computed in
            // integers, cents × basis points, rounded half up to the cent (floor((x + 5000) /
            // 10000), exact for either sign): the invoice (`GET /api/leases/{id}/invoices`)
            // reads this view, so both say the same amount.
            "lease_revenue_share_monthly",
            "SELECT lease_id, client_id, machine_id, month, machine_revenue, \
                    revenue_share_basis_points, \
                    CAST(CAST((x - ((x % 10000) + 10000) % 10000) / 10000 AS DECIMAL(18, 0)) / 100 AS DECIMAL(18, 2)) AS revenue_share, \
                    monthly_rate, \
                    CAST(monthly_rate + CAST(CAST((x - ((x % 10000) + 10000) % 10000) / 10000 AS DECIMAL(18, 0)) / 100 AS DECIMAL(18, 2)) AS DECIMAL(18, 2)) AS amount_due \
             FROM (SELECT l.lease_id, l.client_id, l.machine_id, \
                          CAST(date_trunc('month', CAST(r.day AS TIMESTAMP)) AS DATE) AS month, \
                          SUM(r.revenue) AS machine_revenue, \
                          l.revenue_share_basis_points, l.monthly_rate, \
                          CAST(SUM(r.revenue) * 100 AS BIGINT) * l.revenue_share_basis_points + 5000 AS x \
                   FROM leases l JOIN revenue_by_machine_local_day r \
                     ON r.machine_id = l.machine_id AND r.day >= l.start_date AND r.day <= l.end_date \
                   GROUP BY l.lease_id, l.client_id, l.machine_id, \
                            CAST(date_trunc('month', CAST(r.day AS TIMESTAMP)) AS DATE), \
                            l.revenue_share_basis_points, l.monthly_rate)"
                .to_owned(),
        ),
    ]
}

/// The schema `encode` gives an empty answer.
pub fn empty_schema() -> SchemaRef {
    Arc::new(Schema::new(Vec::<Field>::new()))
}

/// `vendflow sql`: one read-only query over a Parquet archive, without a running engine.
#[derive(clap::Args)]
pub struct ArchiveQuery {
    /// The archive directory.
    #[arg(long)]
    pub archive: std::path::PathBuf,
    /// Output: a text table, CSV with a header, or a JSON array of rows.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The query, e.g. "SELECT * FROM revenue_by_machine_day ORDER BY day".
    pub query: String,
}

/// How `vendflow sql` prints its answer.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl ArchiveQuery {
    /// The answer, as it is to be printed.
    pub fn run(&self) -> Result<Vec<u8>, QueryError> {
        let answer = Sql::over_archive(&self.archive)?.query_blocking(&self.query)?;
        Ok(match self.format {
            Format::Table => {
                let mut text = render_table(&answer)?;
                text.push('\n');
                text.into_bytes()
            }
            Format::Csv => encode(&answer, "text/csv")?.1,
            Format::Json => encode(&answer, "application/json")?.1,
        })
    }
}

/// An answer as a text table, for a terminal.
pub fn render_table(answer: &Answer) -> Result<String, QueryError> {
    datafusion::arrow::util::pretty::pretty_format_batches(&answer.batches)
        .map(|t| t.to_string())
        .map_err(failed)
}

/// Encodes an answer for an `Accept` header: (content type, bytes).
pub fn encode(answer: &Answer, accept: &str) -> Result<(&'static str, Vec<u8>), QueryError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use vendflow_dataflows::{Config, Engine};

    /// A live view read by anything but [`Sql::run`] (the shared context itself, as a protocol
    /// library executing on it would) fails: it never reads unscoped rows.
    #[tokio::test]
    async fn a_scan_outside_a_query_fails_closed() {
        let engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let sql = Sql::new(engine.store(), None, Limits::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let direct = match sql.ctx.sql("SELECT count(*) FROM liveness").await {
            Ok(frame) => frame.collect().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let err = direct.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("outside a query's snapshot"), "{err}");
        // Through the one path it answers.
        let answer = sql
            .query("SELECT count(*) AS n FROM liveness")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            answer.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            1
        );
        let _ = engine.shutdown();
    }

    /// A lease's monthly share is cents × basis points rounded half up to the cent, in
    /// integers: 0.04 × 12.5 % = 0.005 is 0.01, 0.23 × 12.5 % = 0.02875 is 0.03.
    #[tokio::test]
    async fn lease_shares_round_half_up_to_the_cent() {
        let mut engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let lease = vendflow_protocol::decode::decode_registry(
            br#"{"type":"lease","leaseId":"L","clientId":"c","machineId":"m1","start":"2024-01-01","end":"2024-12-31","monthlyRate":300,"revenueSharePercent":12.5,"status":"ACTIVE"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let day = |d: i64| 1_704_067_200_000 + d * vendflow_protocol::units::MS_PER_DAY; // 2024-01-01
        let mut sent = vendflow_protocol::Timestamp(day(29));
        feeders
            .send(
                sent,
                vendflow_dataflows::Batch {
                    registry: vec![(lease, 1)],
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        // 2024-01-30: 0.04; 2024-02-02: 0.12 and 0.11; each sent on its own day.
        for (txn, at, amount) in [
            ("a", day(29), "0.04"),
            ("b", day(32), "0.12"),
            ("c", day(32), "0.11"),
        ] {
            let line = format!(
                r#"{{"machineId":"m1","type":"sale","timestamp":{at},"payload":{{"slotNumber":1,"productId":"cola","amount":{amount},"paymentMethod":"card","transactionId":"{txn}"}}}}"#
            );
            let event = match vendflow_protocol::decode::decode_line(line.as_bytes()).pop() {
                Some(Ok(e)) => e,
                other => panic!("{other:?}"),
            };
            sent = sent.max(vendflow_protocol::Timestamp(at));
            feeders
                .send(
                    sent,
                    vendflow_dataflows::Batch {
                        events: vec![event],
                        ..Default::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{e}"));
        }
        feeders
            .advance_all(sent + 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.wait_for(sent + 1, Duration::from_secs(30)));
        let sql = Sql::new(store, None, Limits::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = sql
            .query(
                "SELECT CAST(month AS VARCHAR) AS month, CAST(machine_revenue AS VARCHAR) AS revenue, \
                        CAST(revenue_share AS VARCHAR) AS share, CAST(amount_due AS VARCHAR) AS due \
                 FROM lease_revenue_share_monthly ORDER BY month",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let json = encode(&answer, "application/json").unwrap_or_else(|e| panic!("{e}"));
        let json = String::from_utf8_lossy(&json.1).into_owned();
        assert!(
            json.contains(
                r#"[{"month":"2024-01-01","revenue":"0.04","share":"0.01","due":"300.01"},{"month":"2024-02-01","revenue":"0.23","share":"0.03","due":"300.03"}]"#
            ),
            "{json}"
        );
        drop(feeders);
        let _ = engine.shutdown();
    }

    /// A scan filtered on a view's first column copies only those rows into the query's
    /// snapshot; a second, unfiltered scan of the same view still reads all of it.
    #[tokio::test]
    async fn point_queries_read_only_their_key_and_answer_the_same() {
        let mut engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let mut feeders = engine.feeders().unwrap_or_else(|| panic!("feeders"));
        let t0: i64 = 1_700_000_000_000;
        let events = ["m1", "m2", "m3"]
            .iter()
            .map(|m| {
                let line = format!(
                    r#"{{"machineId":"{m}","type":"heartbeat","timestamp":{t0},"payload":{{"temperature":4.0}}}}"#
                );
                match vendflow_protocol::decode::decode_line(line.as_bytes()).pop() {
                    Some(Ok(e)) => e,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        let t = vendflow_protocol::Timestamp(t0);
        feeders
            .send(
                t,
                vendflow_dataflows::Batch {
                    events,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        feeders.advance_all(t + 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(store.wait_for(t + 1, Duration::from_secs(30)));
        let sql = Sql::new(store, None, Limits::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let reads = |query: &'static str| {
            let state = sql.ctx.state();
            async move {
                let plan = state
                    .create_logical_plan(query)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let optimized = state.optimize(&plan).unwrap_or_else(|e| panic!("{e}"));
                live_reads(&optimized)
            }
        };
        assert_eq!(
            reads("SELECT * FROM liveness WHERE machine_id = 'm2'").await,
            vec![("liveness".to_owned(), Some(vec!["m2".to_owned()]))]
        );
        assert_eq!(
            reads("SELECT count(*) FROM liveness a, liveness b WHERE a.machine_id = 'm2'").await,
            vec![("liveness".to_owned(), None)]
        );
        let count = |query: &'static str| {
            let sql = &sql;
            async move {
                let answer = sql.query(query).await.unwrap_or_else(|e| panic!("{e}"));
                let json = encode(&answer, "application/json").unwrap_or_else(|e| panic!("{e}"));
                String::from_utf8_lossy(&json.1).into_owned()
            }
        };
        let one = count("SELECT machine_id FROM liveness WHERE machine_id = 'm2'").await;
        assert!(one.contains(r#"[{"machine_id":"m2"}]"#), "{one}");
        let pairs =
            count("SELECT count(*) AS n FROM liveness a, liveness b WHERE a.machine_id = 'm2'")
                .await;
        assert!(pairs.contains(r#"[{"n":3}]"#), "{pairs}");
        drop(feeders);
        let _ = engine.shutdown();
    }

    /// An answer over the size bound is stopped, and one token cannot take every slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_are_bounded_and_one_caller_cannot_take_every_slot() {
        let engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let limits = Limits {
            timeout: Duration::from_secs(20),
            per_caller: 1,
            concurrent: 2,
            max_result_bytes: 1 << 20,
            ..Limits::default()
        };
        let sql = Arc::new(
            Sql::new(engine.store(), None, limits)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let huge = sql.query("SELECT * FROM range(100000000000)").await;
        assert!(
            matches!(huge, Err(QueryError::TooLarge(_))),
            "{:?}",
            huge.err()
        );
        let greedy = Caller {
            key: "greedy".into(),
            scope: Scope::All,
        };
        let slow = {
            let (sql, greedy) = (sql.clone(), greedy.clone());
            tokio::spawn(async move {
                sql.query_in(&greedy, "SELECT sum(value) FROM range(100000000000)")
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = sql.query_in(&greedy, "SELECT 1").await;
        assert!(
            matches!(again, Err(QueryError::Busy(_))),
            "{:?}",
            again.err()
        );
        let other = Caller {
            key: "other".into(),
            scope: Scope::All,
        };
        assert!(sql.query_in(&other, "SELECT 1").await.is_ok());
        slow.abort();
        let _ = engine.shutdown();
    }
}
