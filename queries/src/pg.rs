//! The Postgres wire protocol, so `psql`, Grafana and BI tools connect as to Postgres.
//!
//! Built on `pgwire`, with `arrow-pg` (from `datafusion-postgres`) to encode Arrow as Postgres
//! types. Both protocols are handled here, and both go through [`crate::gate`], the one gate of
//! every SQL statement: a text is parsed once, and only what the gate admits runs.
//! - **Queries**, in the simple protocol and as prepared statements (the extended protocol, which
//!   drivers use for parameters), run through [`Sql::run`]: the session's tenant scope, the
//!   archive rule, the time limit over every row produced, the result-size bound and the
//!   concurrency limits (shared, and per token) apply alike. A prepared statement is planned on
//!   the shared context when it is parsed (planning reads no rows) and runs like any query when
//!   it is executed.
//! - **Cursors** (`DECLARE c CURSOR FOR <query>`, `FETCH`, `CLOSE`): the query is admitted and run
//!   the same way when the cursor is declared; its bounded answer is kept by the session (at
//!   most [`CURSORS_PER_SESSION`] cursors) and handed out by `FETCH`. Forward-only. A cursor
//!   without `WITH HOLD` closes at the end of its transaction; all close with the connection.
//! - **Session settings** (`SET`/`SHOW`/`RESET` of [`Setting`]s) live in the session's own
//!   metadata; `statement_timeout` shortens the session's own time limit. Nothing a session sets
//!   reaches the shared DataFusion context.
//! - `BEGIN`/`COMMIT`/`ROLLBACK`: everything is read-only, so a transaction only scopes cursors.
//! - Anything else is refused with SQLSTATE 25006 (read-only transaction) and the reason.
//!
//! **Access control**: with tokens (the REST API's), a client logs in with a token as its
//! password (cleartext password authentication: use TLS or loopback, as with any Postgres
//! password; `PGPASSWORD=vf_… psql -U anything`). The token's tenant scopes every query of the
//! session exactly as `POST /sql` does (rows of the tenant's machines, locations and leases only;
//! no archive tables), in either protocol and through cursors. Without tokens
//! (`run --insecure-open-api`) anyone who reaches the port reads everything.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use futures::sink::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::api::{PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
pub use pgwire::tokio::TlsAcceptor;
use pgwire::types::format::FormatOptions;
use tokio::net::TcpListener;
use vendflow_ingest::server::{Server, Shutdown};

use crate::ApiState;
use crate::api::fleet::Fleet;
use crate::auth::{Tenant, Tokens};
use crate::gate::{self, Admitted, Setting};
use crate::sql::{Answer, Caller, QueryError, Sql};

/// Who may connect, and what each caller's queries may see.
#[derive(Clone)]
pub struct Access {
    pub tokens: Arc<Tokens>,
    /// The REST API's registry: a tenant's scope is looked up in it per query, so a new
    /// registration is seen at once.
    pub fleet: Arc<Fleet>,
}

/// Client metadata keys set by authentication (removed from what a client sends at startup).
const TENANT: &str = "vendflow.tenant";
const TOKEN_ID: &str = "vendflow.token";
/// Client metadata key prefix of the session's settings.
const SETTING: &str = "vendflow.set.";

/// Open cursors one session may hold (each bounded by the result-size limit).
pub const CURSORS_PER_SESSION: usize = 8;

fn refusal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message,
    )))
}

fn pg_error(e: QueryError) -> PgWireError {
    let code = match e {
        QueryError::Refused(_) => "25006",  // read_only_sql_transaction
        QueryError::Invalid(_) => "42601",  // syntax_error (or unknown table / column)
        QueryError::Timeout(_) => "57014",  // query_canceled
        QueryError::Busy(_) => "53300",     // too_many_connections
        QueryError::TooLarge(_) => "54000", // program_limit_exceeded
        QueryError::Failed(_) => "XX000",   // internal_error
    };
    refusal(code, e.to_string())
}

/// A prepared statement: what the gate admitted, and for a query (or a cursor's query) its plan,
/// parameters unbound.
#[derive(Clone, Debug)]
pub struct Prepared {
    admitted: Admitted,
    plan: Option<LogicalPlan>,
}

/// A declared cursor: the answer of its query, handed out from `next` on.
struct Cursor {
    answer: Answer,
    /// Rows already fetched.
    next: usize,
    hold: bool,
}

/// The gate keeper of every connection: parses (once, through the gate), then runs.
struct Gatekeeper {
    sql: Arc<Sql>,
    access: Option<Access>,
    /// Open cursors by connection (its peer address) and name; a connection's go when it ends.
    cursors: Mutex<HashMap<SocketAddr, HashMap<String, Cursor>>>,
    parser: Arc<GateParser>,
}

impl Gatekeeper {
    /// The session's caller: its token and tenant scope (everything without access control).
    fn caller(&self, client: &(impl ClientInfo + ?Sized)) -> PgWireResult<Caller> {
        let Some(access) = &self.access else {
            return Ok(Caller::platform());
        };
        let metadata = client.metadata();
        let tenant = metadata
            .get(TENANT)
            .and_then(|t| Tenant::parse(t).ok())
            .ok_or_else(|| refusal("28000", "not authenticated".to_owned()))?;
        Ok(Caller {
            key: metadata.get(TOKEN_ID).cloned().unwrap_or_default(),
            scope: ApiState::scope_of(&access.fleet, &tenant),
        })
    }

    fn setting(client: &(impl ClientInfo + ?Sized), setting: Setting) -> String {
        client
            .metadata()
            .get(&format!("{SETTING}{}", setting.name()))
            .cloned()
            .unwrap_or_else(|| setting.default_value().to_owned())
    }

    fn session_timeout(client: &(impl ClientInfo + ?Sized)) -> Option<Duration> {
        Self::setting(client, Setting::StatementTimeout)
            .parse::<u64>()
            .ok()
            .map(Duration::from_millis)
    }

    /// Runs one admitted statement for the session; `plan` is the prepared plan with its
    /// parameters bound (extended protocol), `format` how to encode rows.
    async fn execute<C>(
        &self,
        client: &mut C,
        admitted: Admitted,
        plan: Option<LogicalPlan>,
        format: &Format,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Send + Sync,
    {
        let caller = self.caller(client)?;
        let timeout = Self::session_timeout(client);
        match admitted {
            Admitted::Query(statement) => {
                let answer = match plan {
                    Some(plan) => self.sql.run(&caller, plan, timeout).await,
                    None => self.sql.run_statement(&caller, &statement, timeout).await,
                }
                .map_err(pg_error)?;
                tracing::debug!(time = answer.time, peer = %client.socket_addr(), "pgwire query");
                let rows = answer.batches.iter().map(RecordBatch::num_rows).sum();
                rows_response(client, &answer.schema, answer.batches, rows, format)
                    .map(Response::Query)
            }
            Admitted::Declare {
                cursor,
                hold,
                query,
            } => {
                let peer = client.socket_addr();
                let taken = {
                    let cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
                    let mine = cursors.get(&peer);
                    if mine.is_some_and(|m| m.contains_key(&cursor)) {
                        Some(format!("cursor \"{cursor}\" already exists"))
                    } else if mine.is_some_and(|m| m.len() >= CURSORS_PER_SESSION) {
                        Some(format!(
                            "a session holds at most {CURSORS_PER_SESSION} cursors: CLOSE one first"
                        ))
                    } else {
                        None
                    }
                };
                if let Some(why) = taken {
                    return Err(refusal("42P03", why));
                }
                let answer = match plan {
                    Some(plan) => self.sql.run(&caller, plan, timeout).await,
                    None => self.sql.run_statement(&caller, &query, timeout).await,
                }
                .map_err(pg_error)?;
                self.cursors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(peer)
                    .or_default()
                    .insert(
                        cursor,
                        Cursor {
                            answer,
                            next: 0,
                            hold,
                        },
                    );
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            Admitted::Fetch { cursor, count } => {
                let peer = client.socket_addr();
                let (schema, batches, rows) = {
                    let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
                    let open = cursors
                        .get_mut(&peer)
                        .and_then(|m| m.get_mut(&cursor))
                        .ok_or_else(|| {
                            refusal("34000", format!("cursor \"{cursor}\" does not exist"))
                        })?;
                    let total: usize = open.answer.batches.iter().map(RecordBatch::num_rows).sum();
                    let want =
                        count.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
                    let take = want.min(total - open.next.min(total));
                    let batches = slice(&open.answer.batches, open.next, take);
                    open.next += take;
                    (open.answer.schema.clone(), batches, take)
                };
                let mut response = rows_response(client, &schema, batches, rows, format)?;
                response.set_command_tag("FETCH");
                Ok(Response::Query(response))
            }
            Admitted::Close(name) => {
                let peer = client.socket_addr();
                let mut cursors = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
                match name {
                    None => {
                        cursors.remove(&peer);
                    }
                    Some(name) => {
                        let closed = cursors.get_mut(&peer).and_then(|m| m.remove(&name));
                        if closed.is_none() {
                            return Err(refusal(
                                "34000",
                                format!("cursor \"{name}\" does not exist"),
                            ));
                        }
                    }
                }
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
            Admitted::Set(setting, value) => {
                if setting == Setting::StatementTimeout {
                    let limit = self.sql.limits().timeout;
                    let ms: u64 = value.parse().unwrap_or(0);
                    if Duration::from_millis(ms) > limit {
                        return Err(refusal(
                            "22023",
                            format!(
                                "statement_timeout can only be shortened: at most {} ms, the engine's limit",
                                limit.as_millis()
                            ),
                        ));
                    }
                }
                client
                    .metadata_mut()
                    .insert(format!("{SETTING}{}", setting.name()), value);
                Ok(Response::Execution(Tag::new("SET")))
            }
            Admitted::Reset(setting) => {
                client
                    .metadata_mut()
                    .remove(&format!("{SETTING}{}", setting.name()));
                Ok(Response::Execution(Tag::new("RESET")))
            }
            Admitted::Show(setting) => {
                let value = Self::setting(client, setting);
                let schema = Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
                    setting.name().to_ascii_lowercase(),
                    arrow_schema::DataType::Utf8,
                    false,
                )]));
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(arrow_array::StringArray::from(vec![value]))],
                )
                .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
                let mut response = rows_response(client, &schema, vec![batch], 1, format)?;
                response.set_command_tag("SHOW");
                Ok(Response::Query(response))
            }
            Admitted::Begin => Ok(Response::TransactionStart(Tag::new("BEGIN"))),
            Admitted::End { commit } => {
                // Cursors without WITH HOLD end with their transaction.
                let peer = client.socket_addr();
                if let Some(mine) = self
                    .cursors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&peer)
                {
                    mine.retain(|_, c| c.hold);
                }
                Ok(Response::TransactionEnd(Tag::new(if commit {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                })))
            }
        }
    }

    /// Forgets a finished connection's cursors.
    fn disconnected(&self, peer: &SocketAddr) {
        self.cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }
}

/// `take` rows of `batches` from row `from` on.
fn slice(batches: &[RecordBatch], mut from: usize, mut take: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for batch in batches {
        if take == 0 {
            break;
        }
        let n = batch.num_rows();
        if from >= n {
            from -= n;
            continue;
        }
        let len = take.min(n - from);
        out.push(batch.slice(from, len));
        take -= len;
        from = 0;
    }
    out
}

/// Rows as a Postgres result in `format` (text in the simple protocol; what the client bound in
/// the extended one).
fn rows_response(
    client: &(impl ClientInfo + ?Sized),
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    rows: usize,
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields = Arc::new(arrow_schema_to_pg_fields(schema, format, Some(options))?);
    let encoded = fields.clone();
    let data = batches
        .into_iter()
        .flat_map(move |batch| encode_recordbatch(encoded.clone(), batch));
    let mut response = QueryResponse::new(fields, futures::stream::iter(data));
    response.set_command_tag(&format!("SELECT {rows}"));
    Ok(response)
}

#[async_trait]
impl SimpleQueryHandler for Gatekeeper {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // The whole text is admitted before any of it runs.
        let statements = gate::admit(query).map_err(|e| pg_error(e.into()))?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        for admitted in statements {
            match self
                .execute(client, admitted, None, &Format::UnifiedText)
                .await
            {
                Ok(r) => responses.push(r),
                Err(PgWireError::UserError(info)) => {
                    responses.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(responses)
    }
}

/// Parses prepared statements through the gate, and plans admitted queries (without running
/// them) so drivers can be told the parameter and result types.
struct GateParser {
    sql: Arc<Sql>,
}

#[async_trait]
impl QueryParser for GateParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = gate::admit(sql).map_err(|e| pg_error(e.into()))?;
        let admitted = match statements.len() {
            0 => return Ok(None),
            1 => statements.remove(0),
            _ => {
                return Err(pg_error(QueryError::Invalid(
                    "a prepared statement holds one statement".into(),
                )));
            }
        };
        let plan = match &admitted {
            Admitted::Query(statement)
            | Admitted::Declare {
                query: statement, ..
            } => Some(self.sql.plan(statement).await.map_err(pg_error)?),
            _ => None,
        };
        Ok(Some(Prepared { admitted, plan }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        parameter_types(stmt.plan.as_ref())?
            .iter()
            .map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type))
            .collect()
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let (Admitted::Query(_), Some(plan)) = (&stmt.admitted, &stmt.plan) else {
            return Ok(vec![]);
        };
        arrow_schema_to_pg_fields(
            plan.schema().as_arrow(),
            column_format.unwrap_or(&Format::UnifiedText),
            None,
        )
    }
}

/// A plan's parameters (`$1`, `$2`, …) in order, with the types DataFusion inferred.
fn parameter_types(
    plan: Option<&LogicalPlan>,
) -> PgWireResult<Vec<Option<arrow_schema::DataType>>> {
    let Some(plan) = plan else {
        return Ok(vec![]);
    };
    let types = plan
        .get_parameter_types()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let mut ordered: Vec<(usize, Option<arrow_schema::DataType>)> = types
        .into_iter()
        .filter_map(|(name, ty)| {
            name.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .map(|n| (n, ty))
        })
        .collect();
    ordered.sort_by_key(|(n, _)| *n);
    Ok(ordered.into_iter().map(|(_, ty)| ty).collect())
}

#[async_trait]
impl ExtendedQueryHandler for Gatekeeper {
    type Statement = Prepared;
    type QueryParser = GateParser;

    fn query_parser(&self) -> Arc<GateParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let plan = match &prepared.plan {
            Some(plan) => {
                let types = parameter_types(Some(plan))?;
                let refs: Vec<Option<&arrow_schema::DataType>> =
                    types.iter().map(Option::as_ref).collect();
                let params = deserialize_parameters(portal, &refs)?;
                Some(
                    plan.clone()
                        .replace_params_with_values(&params)
                        .map_err(|e| pg_error(QueryError::Invalid(e.to_string())))?,
                )
            }
            None => None,
        };
        self.execute(
            client,
            prepared.admitted.clone(),
            plan,
            &portal.result_column_format,
        )
        .await
    }
}

/// Startup: without tokens, straight in; with them, a cleartext password that must be a valid
/// token, whose tenant the session keeps.
struct Startup {
    tokens: Option<Arc<Tokens>>,
    /// With TLS configured, a token is only taken over an encrypted connection.
    require_tls: bool,
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
                // Only authentication sets the tenant and token, and only SET a setting, never
                // a startup parameter.
                client
                    .metadata_mut()
                    .retain(|k, _| !k.starts_with("vendflow."));
                if self.tokens.is_some() && self.require_tls && !client.is_secure() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".to_owned(),
                        "28000".to_owned(),
                        "this server takes tokens over TLS only: connect with sslmode=require (psql's default, prefer, does)".to_owned(),
                    ))));
                }
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
                let metadata = client.metadata_mut();
                metadata.insert(TENANT.to_owned(), who.tenant.as_str().to_owned());
                metadata.insert(TOKEN_ID.to_owned(), who.token_id.clone());
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
    gatekeeper: Arc<Gatekeeper>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.gatekeeper.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.gatekeeper.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
}

/// TLS for the Postgres endpoint from PEM files (the certificate chain, and its private key):
/// clients ask for it with `sslmode=require` (or `verify-full` with the CA), and the token they
/// send as their password then travels encrypted.
pub fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use pgwire::tokio::tokio_rustls::rustls;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, e: &dyn std::fmt::Display| TlsError(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(cert, &e))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    // ring, the one provider built in; installing twice is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| bad(cert, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A certificate or key that cannot serve TLS.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve TLS: {0}")]
pub struct TlsError(String);

/// Serves `sql` over the Postgres protocol on `listener` until `shutdown` (connections already
/// open are served until they end or the server's grace period is over); with `access`, only to
/// holders of a token, each within its tenant; with `tls`, encrypted for clients that ask
/// (`sslmode=require`).
pub async fn serve(
    listener: TcpListener,
    sql: Arc<Sql>,
    access: Option<Access>,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
) {
    let handlers = Arc::new(Handlers {
        gatekeeper: Arc::new(Gatekeeper {
            parser: Arc::new(GateParser { sql: sql.clone() }),
            sql,
            access: access.clone(),
            cursors: Mutex::new(HashMap::new()),
        }),
        startup: Arc::new(Startup {
            tokens: access.map(|a| a.tokens),
            require_tls: tls.is_some(),
            pids: RandomPidSecretKeyGenerator::default(),
            parameters: DefaultServerParameterProvider::default(),
        }),
    });
    let stopping = shutdown.requested();
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopping => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let (handlers, tls) = (handlers.clone(), tls.clone());
                tokio::spawn(async move {
                    if let Err(e) =
                        pgwire::tokio::process_socket(socket, tls, handlers.clone()).await
                    {
                        tracing::debug!(%peer, error = %e, "pgwire connection ended");
                    }
                    handlers.gatekeeper.disconnected(&peer);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "pgwire: cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Binds `addr` and serves on it from a runtime of its own (two workers, so queries over the
/// wire cannot take more than two cores) until the returned [`Server`] is stopped; its
/// [`Server::addr`] is the bound address (port 0 picks one).
pub fn spawn(
    addr: impl Into<vendflow_ingest::server::Listen>,
    sql: Arc<Sql>,
    access: Option<Access>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<Server> {
    Server::spawn("vendflow-pgwire", addr, 2, move |listener, shutdown| {
        serve(listener, sql, access, tls, shutdown)
    })
}
