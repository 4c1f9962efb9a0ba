//! Machines and locations: register, read (registry + live views), list, maintenance.

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value as Json, json};
use vendflow_dataflows::row::Named;
use vendflow_dataflows::{Snapshot, Value};
use vendflow_ingest::auth::CredentialsError;
use vendflow_protocol::units::{Micro, ParseError};
use vendflow_protocol::{
    Cents, LeaseStatus, Location, LocationType, Machine, MachineId, MachineStatus, RegistryRecord,
    Slot,
};

use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, ApiJson, ApiQuery, ApiState, Auth, ErrorBody, Invalid, Page, RoleOrTenantRefused,
    RoleRefused, TooLarge, Unauthenticated,
};
use crate::auth::{Role, Tenant};
use crate::cell;

/// The views a machine's page reads, at one frontier.
/// The views a machine's page reads; each has the machine id as its first column.
pub(super) const MACHINE_VIEWS: [&str; 4] = ["liveness", "inventory", "anomaly_windows", "health"];

/// A machine to register.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewMachine {
    /// Chosen by the server (`mach_…`) when absent.
    machine_id: Option<String>,
    #[schema(required = true)]
    serial_number: Option<String>,
    #[schema(required = true)]
    model: Option<String>,
    /// A location registered first (`POST /api/locations`).
    #[schema(required = true)]
    location_id: Option<String>,
    firmware_version: Option<String>,
    /// At least one.
    #[serde(default)]
    #[schema(required = true)]
    slots: Vec<NewSlot>,
}

/// A slot of a new machine's planogram.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewSlot {
    slot_number: u32,
    product_id: String,
    /// 1 to 1000.
    max_capacity: u32,
    /// A JSON number with at most 2 decimals, e.g. 2.50.
    #[schema(value_type = f64)]
    price: Box<RawValue>,
    /// Below maxCapacity.
    low_stock_threshold: Option<u32>,
}

/// A registered machine, with its secret (shown once).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MachineCreated {
    machine_id: String,
    status: &'static str,
    /// RFC 3339
    registered_at: String,
    /// The machine's key for signing its envelopes; not shown again.
    machine_secret: String,
}

/// Collects field problems, to refuse a request once with all of them.
#[derive(Default)]
pub(super) struct Problems(Vec<Json>);

impl Problems {
    pub(super) fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .push(json!({"field": field, "message": message.into()}));
    }

    pub(super) fn check(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let first = self.0[0]["message"].as_str().unwrap_or_default().to_owned();
        let message = if self.0.len() == 1 {
            first
        } else {
            format!("{first} (and {} more problems)", self.0.len() - 1)
        };
        Err(ApiError::invalid(message).with_details(Json::Array(self.0)))
    }
}

/// An exact price from a JSON number: `2.50`, at most two decimals, positive.
pub(super) fn price(raw: &RawValue) -> Result<Cents, ParseError> {
    let text = raw.get();
    if text.starts_with('"') {
        return Err(ParseError::new(
            "must be a JSON number like 2.50, not a string",
        ));
    }
    let cents = Cents::parse(text)?;
    if cents.0 <= 0 {
        return Err(ParseError::new(format!("must be positive, got {cents}")));
    }
    Ok(cents)
}

fn new_id(prefix: &str) -> Result<String, ApiError> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 5];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ApiError::internal(format!("random source: {e}")))?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

/// `POST /api/machines` (admin): validates, registers, issues the machine's secret.
#[utoipa::path(
    post,
    path = "/api/machines",
    operation_id = "registerMachine",
    tag = "machines",
    summary = "Register a machine at a location; answers its secret, shown once",
    description = "Needs a token with role admin or above.",
    request_body = NewMachine,
    responses(
        (status = 201, description = "registered", body = MachineCreated),
        Invalid,
        Unauthenticated,
        RoleOrTenantRefused,
        (status = 404, description = "no such location (or another tenant's)", body = ErrorBody),
        (status = 409, description = "the serial number or machine id is taken", body = ErrorBody),
        TooLarge,
    ),
)]
pub(super) async fn register(
    State(state): State<ApiState>,
    auth: Auth,
    ApiJson(body): ApiJson<NewMachine>,
) -> Result<Response, ApiError> {
    auth.require(Role::Admin, "registering a machine")?;
    let mut problems = Problems::default();
    let text = |field: &str, v: &Option<String>, problems: &mut Problems| -> String {
        match v.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() && s.len() <= 128 => s.to_owned(),
            _ => {
                problems.add(field, format!("{field} is required (1 to 128 characters)"));
                String::new()
            }
        }
    };
    let serial = text("serialNumber", &body.serial_number, &mut problems);
    let model = text("model", &body.model, &mut problems);
    let location = text("locationId", &body.location_id, &mut problems);
    let machine_id = match &body.machine_id {
        Some(id) => match MachineId::parse(id) {
            Ok(id) => Some(id),
            Err(e) => {
                problems.add("machineId", e);
                None
            }
        },
        None => None,
    };
    if body.slots.is_empty() {
        problems.add("slots", "a machine needs at least one slot");
    }
    let mut numbers = BTreeSet::new();
    let mut slots = Vec::with_capacity(body.slots.len());
    for (i, s) in body.slots.iter().enumerate() {
        let field = |name: &str| format!("slots[{i}].{name}");
        if !numbers.insert(s.slot_number) {
            problems.add(
                &field("slotNumber"),
                format!("slot {} appears twice", s.slot_number),
            );
        }
        if s.product_id.trim().is_empty() {
            problems.add(&field("productId"), "productId is required");
        }
        if !(1..=1000).contains(&s.max_capacity) {
            problems.add(
                &field("maxCapacity"),
                format!("maxCapacity must be 1 to 1000, got {}", s.max_capacity),
            );
        }
        if s.low_stock_threshold.is_some_and(|t| t >= s.max_capacity) {
            problems.add(
                &field("lowStockThreshold"),
                "lowStockThreshold must be below maxCapacity",
            );
        }
        match price(&s.price) {
            Ok(price) => slots.push(Slot {
                slot_number: s.slot_number,
                product_id: s.product_id.trim().to_owned(),
                max_capacity: s.max_capacity,
                price,
                low_stock_threshold: s.low_stock_threshold,
            }),
            Err(e) => problems.add(&field("price"), format!("price {e}")),
        }
    }
    problems.check()?;

    let fleet = state.fleet.clone();
    let mut registry = fleet.write();
    let Some(loc) = registry.locations.get(&location) else {
        return Err(ApiError::not_found("location", &location)
            .with_details(json!([{"field": "locationId", "message": "register the location first (POST /api/locations)"}])));
    };
    if !auth.sees(Some(&loc.client_id)) {
        return Err(ApiError::not_found("location", &location));
    }
    if let Some(other) = registry.serials.get(&serial) {
        return Err(ApiError::conflict(format!(
            "serial number {serial} is already machine {other}"
        )));
    }
    let machine_id = match machine_id {
        Some(id) if registry.machines.contains_key(id.as_str()) => {
            return Err(ApiError::conflict(format!(
                "machine {} is already registered",
                id.as_str()
            )));
        }
        Some(id) => id,
        None => MachineId::parse(&new_id("mach")?).map_err(ApiError::internal)?,
    };
    let secret = match &state.keys {
        Some(keys) => keys.issue(machine_id.as_str()).map_err(|e| match e {
            CredentialsError::Exists(_) => ApiError::conflict(format!(
                "machine {} already has device credentials; revoke them first (vendflow device revoke)",
                machine_id.as_str()
            )),
            e => ApiError::internal(format!("cannot store the machine's credentials: {e}")),
        })?,
        None => {
            return Err(ApiError::unavailable(
                "this server has no machine credentials store (run with --credentials)",
            ));
        }
    };
    let registered_at = state.now();
    let machine = Machine {
        machine_id: machine_id.clone(),
        serial_number: serial,
        model,
        location_id: Some(location),
        status: MachineStatus::Active,
        firmware_version: body.firmware_version.clone(),
        slots,
        registered_at: Some(registered_at),
    };
    fleet
        .commit(&mut registry, vec![RegistryRecord::Machine(machine)])
        .map_err(ApiError::from)?;
    tracing::info!(machine_id = %machine_id.as_str(), token = %auth.0.token_id, "machine registered");
    Ok((
        StatusCode::CREATED,
        axum::Json(MachineCreated {
            machine_id: machine_id.as_str().to_owned(),
            status: "active",
            registered_at: registered_at.to_rfc3339(),
            machine_secret: secret,
        }),
    )
        .into_response())
}

/// The rows of a view with one row per machine (`liveness`, `health`), by machine id.
pub(super) fn by_machine<'a>(snapshot: &'a Snapshot, view: &str) -> HashMap<String, Named<'a>> {
    snapshot
        .named(view)
        .map(|rows| {
            rows.filter_map(|r| r.text("machine_id").map(|m| (m, r)))
                .collect()
        })
        .unwrap_or_default()
}

/// Rows of `view` (a view with a `machine_id` column) about `machine`.
fn rows_for<'a>(snapshot: &'a Snapshot, view: &str, machine: &str) -> Vec<Named<'a>> {
    snapshot
        .named(view)
        .map(|rows| {
            rows.filter(|r| r.text("machine_id").as_deref() == Some(machine))
                .collect()
        })
        .unwrap_or_default()
}

/// A client's site.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LocationBody {
    location_id: String,
    client_id: String,
    address: String,
    lat: f64,
    lng: f64,
    /// office, hospital, airport, gym, warehouse (a depot) or other
    #[serde(rename = "type")]
    location_type: &'static str,
    region: Option<String>,
    /// An IANA zone; the machines' local days follow it.
    time_zone: String,
}

impl LocationBody {
    fn of(l: &Location) -> LocationBody {
        LocationBody {
            location_id: l.location_id.clone(),
            client_id: l.client_id.clone(),
            address: l.address.clone(),
            lat: micro(l.lat),
            lng: micro(l.lng),
            location_type: l.location_type.as_str(),
            region: l.region.clone(),
            time_zone: l.time_zone.as_deref().unwrap_or("UTC").to_owned(),
        }
    }
}

/// The caller's locations.
#[derive(Serialize, ToSchema)]
pub(super) struct LocationList {
    items: Vec<LocationBody>,
    total: usize,
}

fn micro(m: Micro) -> f64 {
    m.0 as f64 / 1e6
}

/// The status an operator sees: maintenance as registered, else the live one.
pub(super) fn live_status(registered: MachineStatus, liveness: Option<&str>) -> String {
    match (registered, liveness) {
        (MachineStatus::Maintenance, _) => "maintenance".into(),
        (_, Some(s)) => s.into(),
        (_, None) => "offline".into(),
    }
}

/// The alerts of a `health` row: its reasons, one per alert.
pub(super) fn alerts_of(health: Option<Named<'_>>) -> Vec<String> {
    health
        .map(|h| vendflow_dataflows::health::reasons(h.row()))
        .unwrap_or_default()
}

/// A machine's page: registry, live status, latest temperature, inventory, alerts, at one
/// frontier of the views.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MachineDetail {
    machine_id: String,
    serial_number: String,
    model: String,
    firmware_version: Option<String>,
    /// RFC 3339
    registered_at: Option<String>,
    /// active, offline (no heartbeat lately) or maintenance
    status: String,
    /// active or maintenance, as registered
    registered_status: &'static str,
    /// From `liveness`; null before the first heartbeat.
    #[schema(value_type = Option<String>)]
    last_heartbeat: Json,
    /// The highest reading (°C, exact decimal, e.g. "4.2") of the latest anomaly window that
    /// had one.
    #[schema(value_type = Option<String>)]
    temperature: Json,
    /// That window's start.
    #[schema(value_type = Option<String>)]
    temperature_at: Json,
    location: Option<LocationBody>,
    inventory: Vec<SlotStock>,
    health: Option<HealthScore>,
    alert_count: usize,
    /// One entry per reason of `health`.
    alerts: Vec<String>,
    /// The views' frontier the page was read at (epoch ms).
    time: i64,
}

/// A slot's stock, from `inventory`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct SlotStock {
    slot_number: i64,
    #[schema(value_type = Option<String>)]
    product_id: Json,
    #[schema(value_type = Option<i64>)]
    units: Json,
    #[schema(value_type = Option<i64>)]
    capacity: Json,
    #[schema(value_type = Option<i64>)]
    low_stock_threshold: Json,
    #[schema(value_type = Option<bool>)]
    low_stock: Json,
    #[schema(value_type = Option<bool>)]
    sold_out: Json,
    /// The slot's price in the registry, e.g. "2.50".
    price: Option<String>,
}

/// A machine's health score and grade, from `health`.
#[derive(Serialize, ToSchema)]
pub(super) struct HealthScore {
    #[schema(value_type = Option<i64>)]
    score: Json,
    #[schema(value_type = Option<String>)]
    grade: Json,
}

impl HealthScore {
    pub(super) fn of(row: &Named<'_>) -> HealthScore {
        HealthScore {
            score: cell(&row.get("score")),
            grade: cell(&row.get("grade")),
        }
    }
}

impl MachineDetail {
    fn of(machine: &Machine, location: Option<&Location>, snapshot: &Snapshot) -> MachineDetail {
        let id = machine.machine_id.as_str();
        let liveness = rows_for(snapshot, "liveness", id).into_iter().next();
        let health = rows_for(snapshot, "health", id).into_iter().next();
        let windows = rows_for(snapshot, "anomaly_windows", id);
        // The latest window (by its start) that had a reading.
        let latest = windows
            .iter()
            .filter(|w| w.get("max_temperature") != Value::Null)
            .max_by_key(|w| w.time("window_start").unwrap_or(i64::MIN));
        let prices: HashMap<u32, Cents> = machine
            .slots
            .iter()
            .map(|s| (s.slot_number, s.price))
            .collect();
        let mut slots = rows_for(snapshot, "inventory", id);
        slots.sort_by_key(|r| r.int("slot_number").unwrap_or(i64::MAX));
        let inventory = slots
            .into_iter()
            .map(|r| {
                let slot = r.int("slot_number").unwrap_or(-1);
                SlotStock {
                    slot_number: slot,
                    product_id: cell(&r.get("product_id")),
                    units: cell(&r.get("units")),
                    capacity: cell(&r.get("capacity")),
                    low_stock_threshold: cell(&r.get("low_stock_threshold")),
                    low_stock: cell(&r.get("low_stock")),
                    sold_out: cell(&r.get("sold_out")),
                    price: u32::try_from(slot)
                        .ok()
                        .and_then(|s| prices.get(&s))
                        .map(ToString::to_string),
                }
            })
            .collect();
        let alerts = alerts_of(health);
        MachineDetail {
            machine_id: id.to_owned(),
            serial_number: machine.serial_number.clone(),
            model: machine.model.clone(),
            firmware_version: machine.firmware_version.clone(),
            registered_at: machine.registered_at.map(|t| t.to_rfc3339()),
            status: live_status(
                machine.status,
                liveness.and_then(|r| r.text("status")).as_deref(),
            ),
            registered_status: machine.status.as_str(),
            last_heartbeat: liveness.map_or(Json::Null, |r| cell(&r.get("last_heartbeat"))),
            temperature: latest.map_or(Json::Null, |w| cell(&w.get("max_temperature"))),
            temperature_at: latest.map_or(Json::Null, |w| cell(&w.get("window_start"))),
            location: location.map(LocationBody::of),
            inventory,
            health: health.as_ref().map(HealthScore::of),
            alert_count: alerts.len(),
            alerts,
            time: snapshot.frontier.ms(),
        }
    }
}

/// `GET /api/machines/{id}`: another tenant's machine is as missing as an unknown one.
#[utoipa::path(
    get,
    path = "/api/machines/{id}",
    operation_id = "getMachine",
    tag = "machines",
    summary = "A machine: status, last heartbeat, temperature, location, inventory, alerts",
    params(("id" = String, Path, description = "machine id")),
    responses(
        (status = 200, description = "ok", body = MachineDetail),
        Unauthenticated,
        (status = 404, description = "no such machine (or another tenant's)", body = ErrorBody),
    ),
)]
pub(super) async fn detail(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (machine, location) = {
        let registry = state.fleet.read();
        let machine = registry
            .machines
            .get(&id)
            .filter(|_| auth.sees(registry.machine_client(&id)))
            .cloned()
            .ok_or_else(|| ApiError::not_found("machine", &id))?;
        let location = machine
            .location_id
            .as_ref()
            .and_then(|l| registry.locations.get(l))
            .cloned();
        (machine, location)
    };
    let snapshot = state
        .store
        .snapshot_of_key(&MACHINE_VIEWS, machine.machine_id.as_str());
    Ok(axum::Json(MachineDetail::of(&machine, location.as_ref(), &snapshot)).into_response())
}

/// What an operator may change of a machine; at least one of the two.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct MachinePatch {
    /// active or maintenance (offline follows the heartbeats, it is not set by hand)
    status: Option<String>,
    firmware_version: Option<String>,
}

/// `PATCH /api/machines/{id}` (operator): maintenance on and off; the firmware version.
#[utoipa::path(
    patch,
    path = "/api/machines/{id}",
    operation_id = "updateMachine",
    tag = "machines",
    summary = "Put a machine into maintenance or back; set its firmware version",
    description = "Needs a token with role operator or above.",
    params(("id" = String, Path, description = "machine id")),
    request_body = MachinePatch,
    responses(
        (status = 200, description = "the machine as changed", body = MachineDetail),
        Invalid,
        Unauthenticated,
        RoleRefused,
        (status = 404, description = "no such machine (or another tenant's)", body = ErrorBody),
        TooLarge,
    ),
)]
pub(super) async fn update(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<MachinePatch>,
) -> Result<Response, ApiError> {
    auth.require(Role::Operator, "changing a machine")?;
    let status = match patch.status.as_deref() {
        None => None,
        Some(s @ ("active" | "maintenance")) => MachineStatus::parse(s),
        Some("offline") => {
            return Err(ApiError::invalid(
                "offline is not set by hand: a machine is offline when its heartbeats stop",
            )
            .with_details(
                json!([{"field": "status", "message": "expected active or maintenance"}]),
            ));
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "status {other:?}; expected active or maintenance"
            ))
            .with_details(
                json!([{"field": "status", "message": "expected active or maintenance"}]),
            ));
        }
    };
    if status.is_none() && patch.firmware_version.is_none() {
        return Err(ApiError::invalid(
            "nothing to change: send status and/or firmwareVersion",
        ));
    }
    let fleet = state.fleet.clone();
    let mut registry = fleet.write();
    let mut machine = registry
        .machines
        .get(&id)
        .filter(|_| auth.sees(registry.machine_client(&id)))
        .cloned()
        .ok_or_else(|| ApiError::not_found("machine", &id))?;
    if let Some(s) = status {
        machine.status = s;
    }
    if let Some(v) = patch.firmware_version {
        machine.firmware_version = Some(v);
    }
    let location = machine
        .location_id
        .as_ref()
        .and_then(|l| registry.locations.get(l))
        .cloned();
    fleet
        .commit(
            &mut registry,
            vec![RegistryRecord::Machine(machine.clone())],
        )
        .map_err(ApiError::from)?;
    drop(registry);
    tracing::info!(machine_id = %id, status = machine.status.as_str(), token = %auth.0.token_id, "machine changed");
    let snapshot = state
        .store
        .snapshot_of_key(&MACHINE_VIEWS, machine.machine_id.as_str());
    let mut body = MachineDetail::of(&machine, location.as_ref(), &snapshot);
    // The views catch up with the change a moment later; the answer shows it already.
    if machine.status == MachineStatus::Maintenance {
        body.status = "maintenance".to_owned();
    }
    Ok(axum::Json(body).into_response())
}

/// `DELETE /api/machines/{id}`: takes a machine out of the registry (decommissioned) and
/// revokes its device key, so its envelopes are refused from then on (the bridge follows the
/// credentials file). Its planogram leaves `inventory`. Refused while a lease on it is in force
/// (terminate the lease first), so no invoice loses its machine.
#[utoipa::path(
    delete,
    path = "/api/machines/{id}",
    operation_id = "deleteMachine",
    tag = "machines",
    summary = "Take a machine out of the registry (decommissioned); refused while a lease on it is in force",
    description = "Needs a token with role admin or above.",
    params(("id" = String, Path, description = "machine id")),
    responses(
        (status = 204, description = "deleted; its key is revoked"),
        Unauthenticated,
        RoleRefused,
        (status = 404, description = "no such machine (or another tenant's)", body = ErrorBody),
        (status = 409, description = "a lease on it is in force", body = ErrorBody),
    ),
)]
pub(super) async fn delete(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Role::Admin, "deleting a machine")?;
    let fleet = state.fleet.clone();
    let mut registry = fleet.write();
    let machine = registry
        .machines
        .get(&id)
        .filter(|_| auth.sees(registry.machine_client(&id)))
        .cloned()
        .ok_or_else(|| ApiError::not_found("machine", &id))?;
    if let Some(lease) = registry.leases.values().find(|l| {
        l.machine_id == machine.machine_id
            && matches!(l.status, LeaseStatus::Draft | LeaseStatus::Active)
    }) {
        return Err(ApiError::conflict(format!(
            "machine {id} is under lease {} ({}); terminate it first (POST /api/leases/{}/terminate)",
            lease.lease_id,
            lease.status.as_str(),
            lease.lease_id
        )));
    }
    // The key first: a machine that cannot be revoked stays registered (and the call can be
    // repeated), rather than leaving the registry while it can still publish.
    let revoked = match &state.keys {
        Some(keys) => keys.revoke(&id).map_err(|e| {
            ApiError::internal(format!("cannot revoke the machine's credentials: {e}"))
        })?,
        None => false,
    };
    fleet
        .delete(&mut registry, vec![RegistryRecord::Machine(machine).key()])
        .map_err(ApiError::from)?;
    tracing::info!(machine_id = %id, token = %auth.0.token_id, revoked, "machine deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/locations/{id}`: removes a location that no machine is at any more.
#[utoipa::path(
    delete,
    path = "/api/locations/{id}",
    operation_id = "deleteLocation",
    tag = "machines",
    summary = "Remove a location no machine is at",
    description = "Needs a token with role admin or above.",
    params(("id" = String, Path, description = "location id")),
    responses(
        (status = 204, description = "deleted"),
        Unauthenticated,
        RoleRefused,
        (status = 404, description = "no such location (or another tenant's)", body = ErrorBody),
        (status = 409, description = "a machine is still at it", body = ErrorBody),
    ),
)]
pub(super) async fn delete_location(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Role::Admin, "deleting a location")?;
    let fleet = state.fleet.clone();
    let mut registry = fleet.write();
    let location = registry
        .locations
        .get(&id)
        .filter(|l| auth.sees(Some(&l.client_id)))
        .cloned()
        .ok_or_else(|| ApiError::not_found("location", &id))?;
    let at: Vec<&str> = registry
        .machines
        .values()
        .filter(|m| m.location_id.as_deref() == Some(id.as_str()))
        .map(|m| m.machine_id.as_str())
        .collect();
    if !at.is_empty() {
        return Err(ApiError::conflict(format!(
            "location {id} still has {} machine(s) ({}); move or delete them first",
            at.len(),
            at.join(", ")
        )));
    }
    fleet
        .delete(
            &mut registry,
            vec![RegistryRecord::Location(location).key()],
        )
        .map_err(ApiError::from)?;
    tracing::info!(location_id = %id, token = %auth.0.token_id, "location deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The filters and page of the machine list.
#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// active, maintenance or offline
    status: Option<String>,
    /// a location
    location_id: Option<String>,
    /// a region
    region: Option<String>,
    /// a client
    client_id: Option<String>,
    /// 1-based page
    page: Option<usize>,
    /// 1 to 500, default 50
    page_size: Option<usize>,
}

/// A machine in the list.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MachineSummary {
    machine_id: String,
    serial_number: String,
    model: String,
    location_id: Option<String>,
    client_id: Option<String>,
    region: Option<String>,
    /// active, offline or maintenance
    status: String,
    #[schema(value_type = Option<String>)]
    last_heartbeat: Json,
    alert_count: usize,
}

/// A page of machines.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct MachineList {
    items: Vec<MachineSummary>,
    page: usize,
    page_size: usize,
    /// Machines matching the filters, over all pages.
    total: usize,
    /// The views' frontier (epoch ms).
    time: i64,
}

/// `GET /api/machines?status=&locationId=&region=&clientId=&page=&pageSize=`.
#[utoipa::path(
    get,
    path = "/api/machines",
    operation_id = "listMachines",
    tag = "machines",
    summary = "List machines, filtered and paginated",
    params(ListParams),
    responses(
        (status = 200, description = "ok", body = MachineList),
        (status = 400, description = "invalid filter or page", body = ErrorBody),
        Unauthenticated,
    ),
)]
pub(super) async fn list(
    State(state): State<ApiState>,
    auth: Auth,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let (page, size, offset) = Page {
        page: params.page,
        page_size: params.page_size,
    }
    .resolve()?;
    if let Some(s) = &params.status
        && !matches!(s.as_str(), "active" | "maintenance" | "offline")
    {
        return Err(ApiError::invalid(format!(
            "status {s:?}; expected active, maintenance or offline"
        )));
    }
    let snapshot = state.store.snapshot_of(&["liveness", "health"]);
    let (liveness, health) = (
        by_machine(&snapshot, "liveness"),
        by_machine(&snapshot, "health"),
    );
    let registry = state.fleet.read();
    let mut items = Vec::new();
    let mut total = 0usize;
    for (id, m) in &registry.machines {
        let location = m
            .location_id
            .as_ref()
            .and_then(|l| registry.locations.get(l));
        let client = location.map(|l| l.client_id.as_str());
        if !auth.sees(client)
            || params
                .client_id
                .as_ref()
                .is_some_and(|c| Some(c.as_str()) != client)
            || params
                .location_id
                .as_ref()
                .is_some_and(|l| m.location_id.as_ref() != Some(l))
            || params
                .region
                .as_ref()
                .is_some_and(|r| location.and_then(|l| l.region.as_ref()) != Some(r))
        {
            continue;
        }
        let live = liveness.get(id.as_str());
        let status = live_status(m.status, live.and_then(|r| r.text("status")).as_deref());
        if params.status.as_deref().is_some_and(|s| s != status) {
            continue;
        }
        total += 1;
        if total <= offset || items.len() >= size {
            continue;
        }
        let alerts = alerts_of(health.get(id.as_str()).copied());
        items.push(MachineSummary {
            machine_id: id.clone(),
            serial_number: m.serial_number.clone(),
            model: m.model.clone(),
            location_id: m.location_id.clone(),
            client_id: client.map(str::to_owned),
            region: location.and_then(|l| l.region.clone()),
            status,
            last_heartbeat: live.map_or(Json::Null, |r| cell(&r.get("last_heartbeat"))),
            alert_count: alerts.len(),
        });
    }
    Ok(axum::Json(MachineList {
        items,
        page,
        page_size: size,
        total,
        time: snapshot.frontier.ms(),
    })
    .into_response())
}

/// A client's site to add.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NewLocation {
    /// Chosen by the server (`loc_…`) when absent; 1 to 64 characters.
    location_id: Option<String>,
    /// Required of the platform; a client's token adds to its own client.
    client_id: Option<String>,
    #[schema(required = true)]
    address: Option<String>,
    /// Degrees, within ±90.
    #[schema(value_type = f64, required = true)]
    lat: Option<Box<RawValue>>,
    /// Degrees, within ±180.
    #[schema(value_type = f64, required = true)]
    lng: Option<Box<RawValue>>,
    /// office, hospital, airport, gym, warehouse (a depot) or other (the default)
    #[serde(rename = "type")]
    location_type: Option<String>,
    region: Option<String>,
    /// An IANA zone, e.g. Europe/Paris; UTC when absent.
    time_zone: Option<String>,
}

fn coordinate(raw: Option<&RawValue>, limit: i64, field: &str, problems: &mut Problems) -> Micro {
    let parsed = raw
        .ok_or_else(|| format!("{field} is required"))
        .and_then(|r| {
            vendflow_protocol::units::parse_decimal(
                r.get(),
                6,
                vendflow_protocol::units::Rounding::HalfAwayFromZero,
            )
            .map_err(String::from)
        });
    match parsed {
        Ok(v) if v.abs() <= limit * 1_000_000 => Micro(v),
        Ok(_) => {
            problems.add(field, format!("{field} must be within ±{limit}"));
            Micro(0)
        }
        Err(e) => {
            problems.add(field, format!("{field}: {e}"));
            Micro(0)
        }
    }
}

/// `POST /api/locations` (admin): a client's site; machines are registered at one.
#[utoipa::path(
    post,
    path = "/api/locations",
    operation_id = "addLocation",
    tag = "machines",
    summary = "Add a client's location",
    description = "Needs a token with role admin or above.",
    request_body = NewLocation,
    responses(
        (status = 201, description = "added", body = LocationBody),
        Invalid,
        Unauthenticated,
        RoleOrTenantRefused,
        (status = 409, description = "the location id is taken", body = ErrorBody),
        TooLarge,
    ),
)]
pub(super) async fn add_location(
    State(state): State<ApiState>,
    auth: Auth,
    ApiJson(body): ApiJson<NewLocation>,
) -> Result<Response, ApiError> {
    auth.require(Role::Admin, "adding a location")?;
    let mut problems = Problems::default();
    let client = match (&auth.0.tenant, body.client_id.as_deref().map(str::trim)) {
        (Tenant::Client(own), None) => own.clone(),
        (_, Some(c)) if !c.is_empty() => c.to_owned(),
        _ => {
            problems.add("clientId", "clientId is required");
            String::new()
        }
    };
    if !client.is_empty() && !auth.sees(Some(&client)) {
        return Err(ApiError::forbidden(format!(
            "this token is scoped to client {}; it cannot add locations for {client}",
            auth.0.tenant.as_str()
        )));
    }
    let address = body.address.as_deref().map(str::trim).unwrap_or_default();
    if address.is_empty() {
        problems.add("address", "address is required");
    }
    let lat = coordinate(body.lat.as_deref(), 90, "lat", &mut problems);
    let lng = coordinate(body.lng.as_deref(), 180, "lng", &mut problems);
    let kind = match body.location_type.as_deref() {
        None => LocationType::Other,
        Some(t @ ("office" | "hospital" | "airport" | "gym" | "warehouse" | "other")) => {
            LocationType::parse(t)
        }
        Some(other) => {
            problems.add(
                "type",
                format!("type {other:?}; expected office, hospital, airport, gym, warehouse (a depot) or other"),
            );
            LocationType::Other
        }
    };
    let time_zone = match body.time_zone.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(z) => match vendflow_protocol::registry::parse_time_zone(z) {
            Ok(tz) => Some(tz.name().to_owned()),
            Err(m) => {
                problems.add("timeZone", m.to_string());
                None
            }
        },
    };
    if let Some(id) = &body.location_id
        && (id.is_empty() || id.len() > 64)
    {
        problems.add("locationId", "locationId must be 1 to 64 characters");
    }
    problems.check()?;
    let fleet = state.fleet.clone();
    let mut registry = fleet.write();
    let location_id = match body.location_id {
        Some(id) if registry.locations.contains_key(&id) => {
            return Err(ApiError::conflict(format!("location {id} already exists")));
        }
        Some(id) => id,
        None => new_id("loc")?,
    };
    let location = Location {
        location_id: location_id.clone(),
        client_id: client,
        address: address.to_owned(),
        lat,
        lng,
        location_type: kind,
        region: body.region.filter(|r| !r.trim().is_empty()),
        time_zone,
    };
    fleet
        .commit(
            &mut registry,
            vec![RegistryRecord::Location(location.clone())],
        )
        .map_err(ApiError::from)?;
    Ok((StatusCode::CREATED, axum::Json(LocationBody::of(&location))).into_response())
}

/// `GET /api/locations`: the caller's locations.
#[utoipa::path(
    get,
    path = "/api/locations",
    operation_id = "listLocations",
    tag = "machines",
    summary = "The caller's locations",
    responses(
        (status = 200, description = "ok", body = LocationList),
        Unauthenticated,
    ),
)]
pub(super) async fn locations(State(state): State<ApiState>, auth: Auth) -> Response {
    let registry = state.fleet.read();
    let items: Vec<LocationBody> = registry
        .locations
        .values()
        .filter(|l| auth.sees(Some(&l.client_id)))
        .map(LocationBody::of)
        .collect();
    let total = items.len();
    axum::Json(LocationList { items, total }).into_response()
}
