//! Leases: signing with validation, the lifecycle DRAFT → ACTIVE → RENEWED / EXPIRED /
//! TERMINATED with every step recorded as a lease event, and monthly invoices.
//!
//! The lifecycle's clock is the API's ([`ApiState::now`]: the engine's ingestion frontier), so
//! a replay or a simulation renews and expires leases as it goes. [`sweep`] runs before every
//! lease request and periodically from the binary: an ACTIVE lease gets its renewal notice 30
//! days before its end; at its end it is RENEWED (with auto-renew: the next term, as long as
//! the last, starts where it ended) or EXPIRED. Lifecycle records carry the instant they
//! describe (the end, the notice date), not the instant the sweep noticed, so two instances
//! sweeping the same registry write the same records.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{Months, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use vendflow_protocol::units::{MS_PER_DAY, Rounding, parse_decimal};
use vendflow_protocol::{
    Cents, Lease, LeaseEvent, LeaseEventKind, LeaseStatus, RegistryRecord, Timestamp,
};

use super::fleet::{Fleet, Registry};
use super::machines::{Problems, price};
use utoipa::{IntoParams, IntoResponses, ToSchema};

use super::{
    ApiError, ApiJson, ApiQuery, ApiState, Auth, ErrorBody, Invalid, RoleOrTenantRefused,
    RoleRefused, TooLarge, Unauthenticated,
};
use crate::auth::Role;

/// Days before a lease's end that its renewal notice is due.
pub const NOTICE_DAYS: i64 = 30;
/// The shortest term a lease may have.
pub const MIN_TERM_MONTHS: u32 = 3;

fn date_of(t: Timestamp) -> Option<NaiveDate> {
    chrono::DateTime::from_timestamp_millis(t.0).map(|d| d.date_naive())
}

fn midnight(d: NaiveDate) -> Timestamp {
    Timestamp(
        d.and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_millis()),
    )
}

/// A lease.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LeaseBody {
    lease_id: String,
    client_id: String,
    machine_id: String,
    /// YYYY-MM-DD
    start: Option<String>,
    /// YYYY-MM-DD
    end: Option<String>,
    /// Exact decimal, e.g. "450.00"
    monthly_rate: String,
    /// Exact decimal, e.g. "12.5"
    revenue_share_percent: String,
    /// DRAFT, ACTIVE, RENEWED, EXPIRED or TERMINATED
    status: &'static str,
    auto_renew: bool,
    /// Its lifecycle, oldest first (only in `GET /api/leases/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<LeaseEventBody>>,
}

impl LeaseBody {
    fn of(l: &Lease) -> LeaseBody {
        LeaseBody {
            lease_id: l.lease_id.clone(),
            client_id: l.client_id.clone(),
            machine_id: l.machine_id.as_str().to_owned(),
            start: date_of(l.start).map(|d| d.to_string()),
            end: date_of(l.end).map(|d| d.to_string()),
            monthly_rate: l.monthly_rate.to_string(),
            revenue_share_percent: vendflow_protocol::units::trim_decimal(
                l.revenue_share_basis_points,
                2,
            ),
            status: l.status.as_str(),
            auto_renew: l.auto_renew,
            events: None,
        }
    }
}

/// A step of a lease's lifecycle.
#[derive(Serialize, ToSchema)]
pub(super) struct LeaseEventBody {
    /// RFC 3339
    at: String,
    /// CREATED, ACTIVATED, RENEWAL_NOTICE, RENEWED, EXPIRED or TERMINATED
    event: &'static str,
    note: Option<String>,
}

impl LeaseEventBody {
    fn of(e: &LeaseEvent) -> LeaseEventBody {
        LeaseEventBody {
            at: e.at.to_rfc3339(),
            event: e.kind.as_str(),
            note: e.note.clone(),
        }
    }
}

/// Leases the caller sees.
#[derive(Serialize, ToSchema)]
pub(super) struct LeaseList {
    items: Vec<LeaseBody>,
    total: usize,
}

/// A signed lease.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LeaseCreated {
    lease_id: String,
    /// DRAFT
    status: &'static str,
}

fn event(
    lease: &Lease,
    at: Timestamp,
    kind: LeaseEventKind,
    note: Option<String>,
) -> RegistryRecord {
    RegistryRecord::LeaseEvent(LeaseEvent {
        lease_id: lease.lease_id.clone(),
        client_id: lease.client_id.clone(),
        machine_id: lease.machine_id.clone(),
        at,
        kind,
        note,
    })
}

fn overlaps(a: &Lease, start: Timestamp, end: Timestamp) -> bool {
    a.start < end && start < a.end
}

/// The active lease of `lease`'s machine that overlaps `[start, end)`, other than `lease`.
fn active_overlap<'a>(
    registry: &'a Registry,
    lease: &Lease,
    start: Timestamp,
    end: Timestamp,
) -> Option<&'a Lease> {
    overlap_among(registry.leases.values(), lease, start, end)
}

/// [`active_overlap`] among `candidates` (a sweep passes the machine's leases from an index:
/// scanning every lease for every lease is quadratic at fleet scale).
fn overlap_among<'a>(
    candidates: impl IntoIterator<Item = &'a Lease>,
    lease: &Lease,
    start: Timestamp,
    end: Timestamp,
) -> Option<&'a Lease> {
    candidates.into_iter().find(|other| {
        other.lease_id != lease.lease_id
            && other.machine_id == lease.machine_id
            && other.status == LeaseStatus::Active
            && overlaps(other, start, end)
    })
}

/// The id of the term after `id`: `L` → `L-t2` → `L-t3`.
fn next_term_id(id: &str) -> String {
    if let Some((root, n)) = id.rsplit_once("-t")
        && let Ok(n) = n.parse::<u32>()
    {
        return format!("{root}-t{}", n + 1);
    }
    format!("{id}-t2")
}

/// Moves every lease along its lifecycle up to `now`; returns how many records it wrote.
pub fn sweep(
    fleet: &Fleet,
    now: Timestamp,
) -> Result<usize, vendflow_ingest::registry::RegistryLogError> {
    let mut registry = fleet.write();
    let mut written = 0;
    // A renewed term may itself be over already (a clock that jumped): go round until still.
    for _ in 0..64 {
        let mut records = Vec::new();
        let mut by_machine: HashMap<&str, Vec<&Lease>> = HashMap::new();
        for lease in registry.leases.values() {
            if lease.status == LeaseStatus::Active {
                by_machine
                    .entry(lease.machine_id.as_str())
                    .or_default()
                    .push(lease);
            }
        }
        for lease in registry.leases.values() {
            let events = registry.lease_events.get(&lease.lease_id);
            let has = |kind| events.is_some_and(|e| e.iter().any(|e| e.kind == kind));
            match lease.status {
                LeaseStatus::Active if now >= lease.end => {
                    let next_id = next_term_id(&lease.lease_id);
                    let term = lease.end.0 - lease.start.0;
                    let next_end = Timestamp(lease.end.0.saturating_add(term));
                    let candidates = by_machine
                        .get(lease.machine_id.as_str())
                        .into_iter()
                        .flatten()
                        .copied();
                    let blocked = overlap_among(candidates, lease, lease.end, next_end)
                        .filter(|o| o.lease_id != next_id);
                    let mut ended = lease.clone();
                    if lease.auto_renew && blocked.is_none() {
                        ended.status = LeaseStatus::Renewed;
                        let next = Lease {
                            lease_id: next_id.clone(),
                            start: lease.end,
                            end: next_end,
                            status: LeaseStatus::Active,
                            ..lease.clone()
                        };
                        records.push(event(
                            lease,
                            lease.end,
                            LeaseEventKind::Renewed,
                            Some(format!("next term {next_id}")),
                        ));
                        records.push(event(
                            &next,
                            lease.end,
                            LeaseEventKind::Created,
                            Some(format!("renewal of {}", lease.lease_id)),
                        ));
                        records.push(event(&next, lease.end, LeaseEventKind::Activated, None));
                        records.push(RegistryRecord::Lease(next));
                    } else {
                        ended.status = LeaseStatus::Expired;
                        let note = blocked
                            .map(|o| format!("not renewed: lease {} is active then", o.lease_id));
                        records.push(event(lease, lease.end, LeaseEventKind::Expired, note));
                    }
                    records.push(RegistryRecord::Lease(ended));
                }
                LeaseStatus::Active
                    if now.0 >= lease.end.0 - NOTICE_DAYS * MS_PER_DAY
                        && !has(LeaseEventKind::RenewalNotice) =>
                {
                    let note = format!(
                        "ends on {}; {}",
                        date_of(lease.end)
                            .map(|d| d.to_string())
                            .unwrap_or_default(),
                        if lease.auto_renew {
                            "renews automatically"
                        } else {
                            "expires unless renewed"
                        }
                    );
                    let at = Timestamp(lease.end.0 - NOTICE_DAYS * MS_PER_DAY);
                    records.push(event(lease, at, LeaseEventKind::RenewalNotice, Some(note)));
                }
                LeaseStatus::Draft if now >= lease.end => {
                    let mut ended = lease.clone();
                    ended.status = LeaseStatus::Expired;
                    records.push(event(
                        lease,
                        lease.end,
                        LeaseEventKind::Expired,
                        Some("never activated".into()),
                    ));
                    records.push(RegistryRecord::Lease(ended));
                }
                _ => {}
            }
        }
        if records.is_empty() {
            break;
        }
        written += records.len();
        fleet.commit(&mut registry, records)?;
    }
    Ok(written)
}

fn swept(state: &ApiState) -> Result<(), ApiError> {
    sweep(&state.fleet, state.now())
        .map(|_| ())
        .map_err(ApiError::from)
}

/// A lease to sign.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewLease {
    /// Chosen by the server when absent.
    lease_id: Option<String>,
    #[schema(required = true)]
    machine_id: Option<String>,
    /// The machine's location's client (the default).
    client_id: Option<String>,
    /// YYYY-MM-DD
    #[schema(required = true, format = Date)]
    start: Option<String>,
    /// YYYY-MM-DD, at least 3 months after start
    #[schema(required = true, format = Date)]
    end: Option<String>,
    /// A JSON number with at most 2 decimals.
    #[schema(value_type = f64, required = true)]
    monthly_rate: Option<Box<RawValue>>,
    /// 0 to 100, at most 2 decimals.
    #[schema(value_type = f64, required = true)]
    revenue_share_percent: Option<Box<RawValue>>,
    #[serde(default)]
    auto_renew: bool,
}

/// `POST /api/leases` (admin): a DRAFT lease, once it passes every check.
#[utoipa::path(
    post,
    path = "/api/leases",
    operation_id = "createLease",
    tag = "leases",
    summary = "Sign a lease (DRAFT): machine exists, no overlapping active lease, start < end, term of at least 3 months",
    description = "Needs a token with role admin or above.",
    request_body = NewLease,
    responses(
        (status = 201, description = "signed", body = LeaseCreated),
        Invalid,
        Unauthenticated,
        RoleOrTenantRefused,
        (status = 404, description = "no such machine (or another tenant's)", body = ErrorBody),
        (status = 409, description = "an active lease overlaps it, or the id is taken", body = ErrorBody),
        TooLarge,
    ),
)]
pub(super) async fn create(
    State(state): State<ApiState>,
    auth: Auth,
    ApiJson(body): ApiJson<NewLease>,
) -> Result<Response, ApiError> {
    auth.require(Role::Admin, "signing a lease")?;
    swept(&state)?;
    let mut problems = Problems::default();
    let date = |field: &str, v: &Option<String>, problems: &mut Problems| match v.as_deref() {
        None => {
            problems.add(field, format!("{field} is required (YYYY-MM-DD)"));
            None
        }
        Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                problems.add(field, format!("{field} {s:?} is not a date (YYYY-MM-DD)"));
                None
            }
        },
    };
    let start = date("start", &body.start, &mut problems);
    let end = date("end", &body.end, &mut problems);
    if let (Some(s), Some(e)) = (start, end) {
        if s >= e {
            problems.add("end", format!("end {e} must be after start {s}"));
        } else if s
            .checked_add_months(Months::new(MIN_TERM_MONTHS))
            .is_some_and(|min| e < min)
        {
            problems.add(
                "end",
                format!("the term {s} to {e} is shorter than {MIN_TERM_MONTHS} months"),
            );
        }
    }
    let monthly_rate = match body.monthly_rate.as_deref().map(price) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            problems.add("monthlyRate", format!("monthlyRate {e}"));
            Cents(0)
        }
        None => {
            problems.add("monthlyRate", "monthlyRate is required");
            Cents(0)
        }
    };
    let share = match body.revenue_share_percent.as_deref() {
        None => {
            problems.add("revenueSharePercent", "revenueSharePercent is required");
            0
        }
        Some(raw) => match parse_decimal(raw.get(), 2, Rounding::Exact) {
            Ok(bp) if (0..=10_000).contains(&bp) => bp,
            Ok(_) => {
                problems.add(
                    "revenueSharePercent",
                    "revenueSharePercent must be 0 to 100",
                );
                0
            }
            Err(e) => {
                problems.add("revenueSharePercent", format!("revenueSharePercent: {e}"));
                0
            }
        },
    };
    let machine_id = body.machine_id.clone().unwrap_or_default();
    if machine_id.is_empty() {
        problems.add("machineId", "machineId is required");
    }
    if let Some(id) = &body.lease_id
        && (id.is_empty() || id.len() > 64 || id.contains('/'))
    {
        problems.add("leaseId", "leaseId must be 1 to 64 characters, without /");
    }
    problems.check()?;
    let (Some(start), Some(end)) = (start, end) else {
        return Err(ApiError::invalid("start and end are required"));
    };

    let fleet = state.fleet.clone();
    let mut registry = fleet.write();
    let machine = registry
        .machines
        .get(&machine_id)
        .filter(|_| auth.sees(registry.machine_client(&machine_id)))
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found("machine", &machine_id).with_details(
                json!([{"field": "machineId", "message": "the machine must be registered first"}]),
            )
        })?;
    let Some(owner) = registry.machine_client(&machine_id).map(str::to_owned) else {
        return Err(ApiError::invalid(format!(
            "machine {machine_id} has no location, so no client to lease it"
        )));
    };
    let client = body.client_id.clone().unwrap_or_else(|| owner.clone());
    if client != owner {
        return Err(ApiError::invalid(format!(
            "machine {machine_id} stands at a location of client {owner}, not {client}"
        ))
        .with_details(json!([{"field": "clientId", "message": format!("expected {owner}")}])));
    }
    let lease_id = match body.lease_id {
        Some(id) if registry.leases.contains_key(&id) => {
            return Err(ApiError::conflict(format!("lease {id} already exists")));
        }
        Some(id) => id,
        None => {
            let n = registry.leases.len();
            format!("lease_{}_{n}", machine_id.replace([':', '.'], "_"))
        }
    };
    let lease = Lease {
        lease_id: lease_id.clone(),
        client_id: client,
        machine_id: machine.machine_id.clone(),
        start: midnight(start),
        end: midnight(end),
        monthly_rate,
        revenue_share_basis_points: share,
        status: LeaseStatus::Draft,
        auto_renew: body.auto_renew,
    };
    if let Some(other) = active_overlap(&registry, &lease, lease.start, lease.end) {
        return Err(ApiError::conflict(format!(
            "machine {machine_id} has active lease {} from {} to {}, overlapping this term",
            other.lease_id,
            date_of(other.start)
                .map(|d| d.to_string())
                .unwrap_or_default(),
            date_of(other.end)
                .map(|d| d.to_string())
                .unwrap_or_default(),
        ))
        .with_details(json!({"leaseId": other.lease_id})));
    }
    let now = state.now();
    fleet
        .commit(
            &mut registry,
            vec![
                RegistryRecord::Lease(lease.clone()),
                event(&lease, now, LeaseEventKind::Created, None),
            ],
        )
        .map_err(ApiError::from)?;
    tracing::info!(lease_id = %lease_id, machine_id = %machine_id, token = %auth.0.token_id, "lease signed");
    Ok((
        StatusCode::CREATED,
        axum::Json(LeaseCreated {
            lease_id,
            status: LeaseStatus::Draft.as_str(),
        }),
    )
        .into_response())
}

/// The lease `id` as the caller may see it.
fn visible(registry: &Registry, auth: &Auth, id: &str) -> Result<Lease, ApiError> {
    registry
        .leases
        .get(id)
        .filter(|l| auth.sees(Some(&l.client_id)))
        .cloned()
        .ok_or_else(|| ApiError::not_found("lease", id))
}

/// `GET /api/leases/{id}`: a lease and its lifecycle events.
#[utoipa::path(
    get,
    path = "/api/leases/{id}",
    operation_id = "getLease",
    tag = "leases",
    summary = "A lease and its lifecycle events",
    params(("id" = String, Path, description = "lease id")),
    responses(
        (status = 200, description = "ok", body = LeaseBody),
        Unauthenticated,
        (status = 404, description = "no such lease (or another tenant's)", body = ErrorBody),
    ),
)]
pub(super) async fn detail(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    swept(&state)?;
    let registry = state.fleet.read();
    let lease = visible(&registry, &auth, &id)?;
    let mut body = LeaseBody::of(&lease);
    body.events = Some(
        registry
            .lease_events
            .get(&id)
            .map(|e| e.iter().map(LeaseEventBody::of).collect())
            .unwrap_or_default(),
    );
    Ok(axum::Json(body).into_response())
}

/// The filters of the lease list.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct LeaseFilter {
    /// a machine
    machine_id: Option<String>,
    /// DRAFT, ACTIVE, RENEWED, EXPIRED or TERMINATED
    status: Option<String>,
}

/// `GET /api/leases?machineId=&status=`: the caller's leases.
#[utoipa::path(
    get,
    path = "/api/leases",
    operation_id = "listLeases",
    tag = "leases",
    summary = "List leases",
    params(LeaseFilter),
    responses(
        (status = 200, description = "ok", body = LeaseList),
        (status = 400, description = "invalid filter", body = ErrorBody),
        Unauthenticated,
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    auth: Auth,
    ApiQuery(filter): ApiQuery<LeaseFilter>,
) -> Result<Response, ApiError> {
    swept(&state)?;
    let status = match filter.status.as_deref() {
        None => None,
        Some(s) => Some(LeaseStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(format!(
                "status {s:?}; expected DRAFT, ACTIVE, RENEWED, EXPIRED or TERMINATED"
            ))
        })?),
    };
    let registry = state.fleet.read();
    let items: Vec<LeaseBody> = registry
        .leases
        .values()
        .filter(|l| auth.sees(Some(&l.client_id)))
        .filter(|l| status.is_none_or(|s| l.status == s))
        .filter(|l| {
            filter
                .machine_id
                .as_ref()
                .is_none_or(|m| l.machine_id.as_str() == m)
        })
        .map(LeaseBody::of)
        .collect();
    let total = items.len();
    Ok(axum::Json(LeaseList { items, total }).into_response())
}

/// Applies a lifecycle step to lease `id`: `change` checks the lease and returns the records.
fn step(
    state: &ApiState,
    auth: &Auth,
    id: &str,
    change: impl FnOnce(&Registry, &Lease, Timestamp) -> Result<Vec<RegistryRecord>, ApiError>,
) -> Result<Response, ApiError> {
    auth.require(Role::Admin, "changing a lease")?;
    swept(state)?;
    let fleet = state.fleet.clone();
    let mut registry = fleet.write();
    let lease = visible(&registry, auth, id)?;
    let records = change(&registry, &lease, state.now())?;
    fleet
        .commit(&mut registry, records)
        .map_err(ApiError::from)?;
    let lease = visible(&registry, auth, id)?;
    tracing::info!(lease_id = %id, status = lease.status.as_str(), token = %auth.0.token_id, "lease changed");
    Ok(axum::Json(LeaseBody::of(&lease)).into_response())
}

/// What a lifecycle step (activate, renew) refuses besides the token, for the OpenAPI
/// operations.
#[derive(IntoResponses)]
#[allow(dead_code)] // describes what `step` answers
enum StepRefusals {
    #[response(status = 404, description = "no such lease (or another tenant's)")]
    NotFound(ErrorBody),
    #[response(
        status = 409,
        description = "the lease is not in a state this step applies to"
    )]
    WrongState(ErrorBody),
}

fn wrong_state(lease: &Lease, action: &str, allowed: &str) -> ApiError {
    ApiError::conflict(format!(
        "lease {} is {}; only a {allowed} lease can be {action}",
        lease.lease_id,
        lease.status.as_str()
    ))
}

/// `POST /api/leases/{id}/activate`: DRAFT → ACTIVE, if no other active lease overlaps it.
#[utoipa::path(
    post,
    path = "/api/leases/{id}/activate",
    operation_id = "activateLease",
    tag = "leases",
    summary = "DRAFT to ACTIVE",
    description = "Needs a token with role admin or above.",
    params(("id" = String, Path, description = "lease id")),
    responses(
        (status = 200, description = "the lease as changed", body = LeaseBody),
        Unauthenticated,
        RoleRefused,
        StepRefusals,
    ),
)]
pub(super) async fn activate(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    step(&state, &auth, &id, |registry, lease, now| {
        if lease.status != LeaseStatus::Draft {
            return Err(wrong_state(lease, "activated", "DRAFT"));
        }
        if now >= lease.end {
            return Err(ApiError::conflict(format!(
                "lease {} ended already; it cannot be activated",
                lease.lease_id
            )));
        }
        if let Some(other) = active_overlap(registry, lease, lease.start, lease.end) {
            return Err(ApiError::conflict(format!(
                "machine {} has active lease {} overlapping this term",
                lease.machine_id.as_str(),
                other.lease_id
            )));
        }
        let mut active = lease.clone();
        active.status = LeaseStatus::Active;
        Ok(vec![
            event(lease, now, LeaseEventKind::Activated, None),
            RegistryRecord::Lease(active),
        ])
    })
}

/// `POST /api/leases/{id}/renew`: ACTIVE → RENEWED now, with the next term of the same length
/// starting at this one's end.
#[utoipa::path(
    post,
    path = "/api/leases/{id}/renew",
    operation_id = "renewLease",
    tag = "leases",
    summary = "ACTIVE to RENEWED, creating the next term",
    description = "Needs a token with role admin or above.",
    params(("id" = String, Path, description = "lease id")),
    responses(
        (status = 200, description = "the lease as changed", body = LeaseBody),
        Unauthenticated,
        RoleRefused,
        StepRefusals,
    ),
)]
pub(super) async fn renew(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    step(&state, &auth, &id, |registry, lease, now| {
        if lease.status != LeaseStatus::Active {
            return Err(wrong_state(lease, "renewed", "ACTIVE"));
        }
        let next_id = next_term_id(&lease.lease_id);
        if registry.leases.contains_key(&next_id) {
            return Err(ApiError::conflict(format!(
                "lease {} was renewed already ({next_id})",
                lease.lease_id
            )));
        }
        let next = Lease {
            lease_id: next_id.clone(),
            start: lease.end,
            end: Timestamp(lease.end.0 + (lease.end.0 - lease.start.0)),
            status: LeaseStatus::Active,
            ..lease.clone()
        };
        if let Some(other) = active_overlap(registry, &next, next.start, next.end)
            .filter(|o| o.lease_id != lease.lease_id)
        {
            return Err(ApiError::conflict(format!(
                "the next term would overlap active lease {}",
                other.lease_id
            )));
        }
        let mut renewed = lease.clone();
        renewed.status = LeaseStatus::Renewed;
        Ok(vec![
            event(
                lease,
                now,
                LeaseEventKind::Renewed,
                Some(format!("next term {next_id}")),
            ),
            event(
                &next,
                now,
                LeaseEventKind::Created,
                Some(format!("renewal of {}", lease.lease_id)),
            ),
            event(&next, now, LeaseEventKind::Activated, None),
            RegistryRecord::Lease(renewed),
            RegistryRecord::Lease(next),
        ])
    })
}

/// Why a lease ends early (the body is optional).
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Termination {
    reason: Option<String>,
}

/// `POST /api/leases/{id}/terminate` (`{"reason": …}` optional): DRAFT or ACTIVE → TERMINATED.
#[utoipa::path(
    post,
    path = "/api/leases/{id}/terminate",
    operation_id = "terminateLease",
    tag = "leases",
    summary = "DRAFT or ACTIVE to TERMINATED",
    description = "Needs a token with role admin or above.",
    params(("id" = String, Path, description = "lease id")),
    request_body(content = Option<Termination>, description = "optional: the reason, kept in the lease's events"),
    responses(
        (status = 200, description = "the lease as changed", body = LeaseBody),
        (status = 400, description = "the body is not a termination", body = ErrorBody),
        Unauthenticated,
        RoleRefused,
        (status = 404, description = "no such lease (or another tenant's)", body = ErrorBody),
        (status = 409, description = "the lease is neither DRAFT nor ACTIVE", body = ErrorBody),
    ),
)]
pub(super) async fn terminate(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: no body, no reason.
    let reason = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Termination>(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
            .reason
    };
    step(&state, &auth, &id, |_, lease, now| {
        if !matches!(lease.status, LeaseStatus::Draft | LeaseStatus::Active) {
            return Err(wrong_state(lease, "terminated", "DRAFT or ACTIVE"));
        }
        let mut ended = lease.clone();
        ended.status = LeaseStatus::Terminated;
        Ok(vec![
            event(lease, now, LeaseEventKind::Terminated, reason),
            RegistryRecord::Lease(ended),
        ])
    })
}

/// The invoice's month.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct Month {
    /// YYYY-MM (required)
    month: Option<String>,
}

/// A month's invoice of a lease.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Invoice {
    lease_id: String,
    client_id: String,
    machine_id: String,
    /// YYYY-MM
    month: String,
    /// The part of the month within the lease's term, YYYY-MM-DD.
    period_start: String,
    period_end: String,
    /// Exact decimals, e.g. "450.00".
    monthly_rate: String,
    machine_revenue: String,
    revenue_share_percent: String,
    /// machineRevenue × revenueSharePercent / 100, rounded half up to the cent.
    revenue_share: String,
    total: String,
    status: &'static str,
    /// The views' frontier the revenue was read at (epoch ms).
    time: i64,
}

/// `GET /api/leases/{id}/invoices?month=YYYY-MM`: monthly rate + the machine's revenue in that
/// month (within the lease's term) × revenue share, read from the SQL view
/// `lease_revenue_share_monthly` (live days, and archived days when there is an archive). The
/// share rounds half up to the cent.
#[utoipa::path(
    get,
    path = "/api/leases/{id}/invoices",
    operation_id = "getInvoice",
    tag = "leases",
    summary = "The invoice of a month: monthlyRate + machine revenue in the month x revenueSharePercent / 100",
    params(("id" = String, Path, description = "lease id"), Month),
    responses(
        (status = 200, description = "ok", body = Invoice),
        (status = 400, description = "no month, or a month outside the lease's term", body = ErrorBody),
        Unauthenticated,
        (status = 404, description = "no such lease (or another tenant's)", body = ErrorBody),
    ),
)]
pub(super) async fn invoice(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiQuery(Month { month }): ApiQuery<Month>,
) -> Result<Response, ApiError> {
    swept(&state)?;
    let lease = visible(&state.fleet.read(), &auth, &id)?;
    let text = month.ok_or_else(|| ApiError::invalid("month is required (?month=YYYY-MM)"))?;
    let first = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
        .map_err(|_| ApiError::invalid(format!("month {text:?} is not YYYY-MM")))?;
    let next = first
        .checked_add_months(Months::new(1))
        .ok_or_else(|| ApiError::invalid("month out of range"))?;
    let (Some(start), Some(end)) = (date_of(lease.start), date_of(lease.end)) else {
        return Err(ApiError::internal("lease dates out of range"));
    };
    if next <= start || first > end {
        return Err(ApiError::invalid(format!(
            "{text} is outside lease {id}'s term ({start} to {end})"
        )));
    }
    let (from, to) = (first.max(start), next.min(end.succ_opt().unwrap_or(end)));
    // The amounts are the SQL view's, so the invoice and `lease_revenue_share_monthly` agree to
    // the cent (one definition of the share and its rounding). A month without revenue has no
    // row there: nothing shared, the monthly rate due.
    let sql = format!(
        "SELECT CAST(machine_revenue AS VARCHAR), CAST(revenue_share AS VARCHAR), \
                CAST(amount_due AS VARCHAR) \
         FROM lease_revenue_share_monthly WHERE lease_id = '{}' AND month = DATE '{first}'",
        lease.lease_id.replace('\'', "''")
    );
    let answer = state
        .sql
        .query(&sql)
        .await
        .map_err(|e| ApiError::internal(format!("lease revenue query: {e}")))?;
    let cents = |column: usize| -> Result<Option<Cents>, ApiError> {
        answer
            .batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .map(|b| b.column(column))
            .filter(|c| !arrow_array::Array::is_null(c.as_ref(), 0))
            .and_then(|c| datafusion::arrow::util::display::array_value_to_string(c, 0).ok())
            .map(|t| Cents::parse(&t).map_err(|e| ApiError::internal(format!("amount {t:?}: {e}"))))
            .transpose()
    };
    let revenue = cents(0)?.unwrap_or(Cents(0));
    let share = cents(1)?.unwrap_or(Cents(0));
    let total = cents(2)?.unwrap_or(lease.monthly_rate);
    Ok(axum::Json(Invoice {
        lease_id: lease.lease_id.clone(),
        client_id: lease.client_id.clone(),
        machine_id: lease.machine_id.as_str().to_owned(),
        month: text,
        period_start: from.to_string(),
        period_end: (to.pred_opt().unwrap_or(to)).to_string(),
        monthly_rate: lease.monthly_rate.to_string(),
        machine_revenue: revenue.to_string(),
        revenue_share_percent: vendflow_protocol::units::trim_decimal(
            lease.revenue_share_basis_points,
            2,
        ),
        revenue_share: share.to_string(),
        total: total.to_string(),
        status: lease.status.as_str(),
        time: answer.time,
    })
    .into_response())
}
