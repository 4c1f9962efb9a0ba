//! The Postgres wire protocol, so `psql`, Grafana and BI tools connect as to Postgres.
//!
//! Built on `pgwire` and `datafusion-postgres` (which plans the extended protocol and encodes
//! Arrow as Postgres types), with one hook in front of everything that decides what may run:
//! - a query (simple protocol) runs through [`Sql::query`]: the same read-only check, snapshot,
//!   time limit and concurrency limit as `POST /sql`;
//! - a query in the extended protocol (prepared statements, as drivers send them) is planned by
//!   `datafusion-postgres` on the same context, so it reads one snapshot per execution too; its
//!   time limit is the session's `statement_timeout`, set to the engine's limit unless the
//!   client set one;
//! - `SET`/`SHOW` of session parameters, transactions and cursors pass to `datafusion-postgres`'s
//!   own hooks, except `SET datafusion.*` (the engine's shared settings);
//! - anything else (DDL, DML, `COPY`, `CREATE EXTERNAL TABLE`) is refused with SQLSTATE 25006
//!   (read-only transaction) and a message saying why.
//!
//! No authentication yet: listen on loopback (the default) until access control lands.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::portal::Format;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::{ClientInfo, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use tokio::net::TcpListener;

use crate::sql::{QueryError, Sql, check_read_only};

fn refusal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

fn pg_error(e: QueryError) -> PgWireError {
    let code = match e {
        QueryError::Refused(_) => "25006", // read_only_sql_transaction
        QueryError::Invalid(_) => "42601", // syntax_error (or unknown table / column)
        QueryError::Timeout(_) => "57014", // query_canceled
        QueryError::Failed(_) => "XX000",  // internal_error
    };
    refusal(code, e.to_string())
}

/// What may pass to `datafusion-postgres`'s own hooks.
fn session_statement(statement: &Statement) -> bool {
    match statement {
        Statement::Set(set) => !set.to_string().to_ascii_lowercase().contains("datafusion."),
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => true,
        _ => false,
    }
}

struct ReadOnly {
    sql: Arc<Sql>,
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if session_statement(statement) {
            return None;
        }
        let text = statement.to_string();
        if let Err(e) = check_read_only(&text) {
            return Some(Err(pg_error(e)));
        }
        let answer = match self.sql.query(&text).await {
            Ok(a) => a,
            Err(e) => return Some(Err(pg_error(e))),
        };
        tracing::debug!(time = answer.time, peer = %client.socket_addr(), "pgwire query");
        let frame = if answer.batches.is_empty() {
            ctx.read_batch(arrow_array::RecordBatch::new_empty(answer.schema.clone()))
        } else {
            ctx.read_batches(answer.batches)
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return Some(Err(PgWireError::ApiError(Box::new(e)))),
        };
        Some(
            encode_dataframe(frame, &Format::UnifiedText, None)
                .await
                .map(Response::Query),
        )
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if session_statement(statement) {
            return None;
        }
        match check_read_only(&statement.to_string()) {
            Ok(()) => None,
            Err(e) => Some(Err(pg_error(e))),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if session_statement(statement) {
            return None;
        }
        if let Err(e) = check_read_only(&statement.to_string()) {
            return Some(Err(pg_error(e)));
        }
        // Executed by datafusion-postgres with the session's statement_timeout: default it.
        let metadata = client.metadata_mut();
        if !metadata.contains_key("statement_timeout_ms") {
            metadata.insert(
                "statement_timeout_ms".to_owned(),
                self.sql.limits().timeout.as_millis().to_string(),
            );
        }
        None
    }
}

struct Startup;

impl NoopStartupHandler for Startup {}

struct Handlers {
    service: Arc<DfSessionService>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
}

/// Serves `sql` over the Postgres protocol on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sql: Arc<Sql>) {
    let ctx = Arc::new(sql.context().clone());
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnly { sql: sql.clone() }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let handlers = Arc::new(Handlers {
        service: Arc::new(DfSessionService::new_with_hooks(ctx, hooks)),
        startup: Arc::new(Startup),
    });
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let handlers = handlers.clone();
                tokio::spawn(async move {
                    if let Err(e) = pgwire::tokio::process_socket(socket, None, handlers).await {
                        tracing::debug!(%peer, error = %e, "pgwire connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "pgwire: cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `addr` and serves on it from a thread with its own runtime (two workers, so queries
/// over the wire cannot take more than two cores); returns the bound address (port 0 picks one).
pub fn spawn(addr: SocketAddr, sql: Arc<Sql>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vendflow-pgwire")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("vendflow-pgwire".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, sql).await,
                    Err(e) => tracing::error!(error = %e, "pgwire: cannot listen"),
                }
            });
        })?;
    Ok(local)
}
