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
//!
//! **Access control**: with tokens (the REST API's), a client logs in with a token as its
//! password (cleartext password authentication: use TLS or loopback, as with any Postgres
//! password; `PGPASSWORD=vf_… psql -U anything`). The token's tenant scopes every query exactly as
//! `POST /sql` does (rows of the tenant's machines, locations and leases only; no archive tables).
//! The extended protocol (prepared statements) is planned by `datafusion-postgres` on the shared
//! context, outside that filter, so it is open to tenant `*` only; a tenant's client gets a clear
//! refusal and can use simple queries (`psql`, and drivers' "simple" mode). Without tokens
//! (`run --insecure-open-api`) anyone who reaches the port reads everything.

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
use std::fmt::Debug;

use futures::sink::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::portal::Format;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::{ClientInfo, PgWireServerHandlers};
use pgwire::api::{PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;

use crate::ApiState;
use crate::api::fleet::Fleet;
use crate::auth::{Tenant, Tokens};
use crate::sql::{QueryError, Scope, Sql, check_read_only};

/// Who may connect, and what each caller's queries may see.
#[derive(Clone)]
pub struct Access {
    pub tokens: Arc<Tokens>,
    /// The REST API's registry: a tenant's scope is looked up in it per query, so a new
    /// registration is seen at once.
    pub fleet: Arc<Fleet>,
}

/// The client metadata key holding the authenticated tenant (removed from what a client sends).
const TENANT: &str = "vendflow.tenant";

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
    access: Option<Access>,
}

impl ReadOnly {
    /// The scope of the session's authenticated tenant (everything without access control).
    fn scope(&self, client: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<Scope> {
        let Some(access) = &self.access else {
            return Ok(Scope::All);
        };
        let tenant = client
            .metadata()
            .get(TENANT)
            .and_then(|t| Tenant::parse(t).ok())
            .ok_or_else(|| refusal("28000", "not authenticated".to_owned()))?;
        Ok(ApiState::scope_of(&access.fleet, &tenant))
    }

    /// Extended-protocol statements run outside the tenant filter: tenant `*` only.
    fn extended_allowed(&self, client: &(dyn ClientInfo + Send + Sync)) -> PgWireResult<()> {
        match self.scope(client)? {
            Scope::All => Ok(()),
            Scope::Tenant(_) => Err(refusal(
                "0A000",
                "prepared statements (the extended protocol) are not available to a tenant's \
                 token; send simple queries (psql does; JDBC: preferQueryMode=simple)"
                    .to_owned(),
            )),
        }
    }
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
        let scope = match self.scope(&*client) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let answer = match self.sql.query_in(&scope, &text).await {
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
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        if let Err(e) = self.extended_allowed(client) {
            return Some(Err(e));
        }
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
        if let Err(e) = self.extended_allowed(&*client) {
            return Some(Err(e));
        }
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

/// Startup: without tokens, straight in; with them, a cleartext password that must be a valid
/// token, whose tenant the session keeps.
struct Startup {
    tokens: Option<Arc<Tokens>>,
    pids: RandomPidSecretKeyGenerator,
    parameters: DefaultServerParameterProvider,
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // Only authentication sets the tenant, never a startup parameter.
                client.metadata_mut().remove(TENANT);
                if self.tokens.is_some() {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                } else {
                    let (pid, key) = self.pids.generate(client);
                    client.set_pid_and_secret_key(pid, key);
                    finish_authentication(client, &self.parameters).await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let Some(tokens) = &self.tokens else {
                    return Ok(());
                };
                let password = password.into_password()?;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                let Some(who) = tokens.verify(&password.password) else {
                    tracing::info!(%user, "pgwire: refused a login (not a valid token)");
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".to_owned(),
                        "28P01".to_owned(),
                        format!(
                            "password authentication failed for user \"{user}\": the password \
                             must be a vendflow token (vendflow token create)"
                        ),
                    ))));
                };
                client
                    .metadata_mut()
                    .insert(TENANT.to_owned(), who.tenant.as_str().to_owned());
                let (pid, key) = self.pids.generate(client);
                client.set_pid_and_secret_key(pid, key);
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

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

/// Serves `sql` over the Postgres protocol on `listener` until the task is dropped; with
/// `access`, only to holders of a token, each within its tenant.
pub async fn serve(listener: TcpListener, sql: Arc<Sql>, access: Option<Access>) {
    let ctx = Arc::new(sql.context().clone());
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(ReadOnly {
            sql: sql.clone(),
            access: access.clone(),
        }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let handlers = Arc::new(Handlers {
        service: Arc::new(DfSessionService::new_with_hooks(ctx, hooks)),
        startup: Arc::new(Startup {
            tokens: access.map(|a| a.tokens),
            pids: RandomPidSecretKeyGenerator::default(),
            parameters: DefaultServerParameterProvider::default(),
        }),
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
pub fn spawn(
    addr: SocketAddr,
    sql: Arc<Sql>,
    access: Option<Access>,
) -> std::io::Result<SocketAddr> {
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
                    Ok(listener) => serve(listener, sql, access).await,
                    Err(e) => tracing::error!(error = %e, "pgwire: cannot listen"),
                }
            });
        })?;
    Ok(local)
}
