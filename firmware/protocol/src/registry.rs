//! What the platform knows about the fleet: locations, machines with their planogram, leases.
//!
//! Registry changes are records like telemetry events: they enter the dataflows as a collection,
//! so every view sees the registry as of the same time as the telemetry. For now they are loaded
//! from a JSON Lines fixture, one record a line:
//! ```json
//! {"type":"location","locationId":"loc_1","clientId":"acme","address":"1 Main St","lat":40.7,"lng":-74.0,"locationType":"office"}
//! {"type":"machine","machineId":"m1","serialNumber":"SN1","model":"VX-30","locationId":"loc_1","status":"active","firmwareVersion":"2.1.0","slots":[{"slotNumber":1,"productId":"cola","maxCapacity":10,"price":2.50}]}
//! {"type":"lease","leaseId":"l1","clientId":"acme","machineId":"m1","start":"2024-01-01","end":"2024-12-31","monthlyRate":300,"revenueSharePercent":10,"status":"ACTIVE","autoRenew":true}
//! {"type":"lease_event","leaseId":"l1","clientId":"acme","machineId":"m1","at":"2024-01-01T00:00:00Z","event":"ACTIVATED"}
//! ```
//! A record is identified by its [`RegistryRecord::key`]; a later record with the same key
//! replaces the earlier one (an upsert), which is how a machine's status or a lease's lifecycle
//! changes. Lease events are never replaced: each has a key of its own.

use serde::{Deserialize, Serialize};

use crate::units::{Cents, MachineId, Micro, ParseError, Timestamp};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RegistryRecord {
    Location(Location),
    Machine(Machine),
    Lease(Lease),
    LeaseEvent(LeaseEvent),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Location {
    pub location_id: String,
    pub client_id: String,
    pub address: String,
    pub lat: Micro,
    pub lng: Micro,
    pub location_type: LocationType,
    /// The operations region the location belongs to (dashboards filter by it).
    pub region: Option<String>,
    /// The location's IANA time zone (`Asia/Tokyo`): its days and months follow this calendar.
    /// `None` is UTC.
    pub time_zone: Option<String>,
}

impl Location {
    /// The location's time zone (UTC when it names none).
    pub fn zone(&self) -> chrono_tz::Tz {
        self.time_zone
            .as_deref()
            .and_then(|z| z.parse().ok())
            .unwrap_or(chrono_tz::UTC)
    }
}

/// An IANA time zone name, checked (`Europe/Paris`, `UTC`).
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, ParseError> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        ParseError::new(format!(
            "unknown time zone {name:?}; expected an IANA name such as Asia/Tokyo or Europe/Paris"
        ))
    })
}

/// The local calendar day of the instant `ms` in the zone named `zone` (UTC if it is not one).
pub fn local_day_in(ms: i64, zone: &str) -> i64 {
    local_day(ms, zone.parse().unwrap_or(chrono_tz::UTC))
}

/// The local calendar day (days since the epoch) of the instant `ms` in `zone`.
pub fn local_day(ms: i64, zone: chrono_tz::Tz) -> i64 {
    use chrono::{Datelike, TimeZone};
    if zone == chrono_tz::UTC {
        return ms.div_euclid(86_400_000);
    }
    match zone.timestamp_millis_opt(ms).single() {
        Some(t) => i64::from(t.date_naive().num_days_from_ce()) - 719_163,
        None => ms.div_euclid(86_400_000),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LocationType {
    Office,
    Hospital,
    Airport,
    Gym,
    /// A depot: where restock crews load, and start and end their shift (one per region).
    Warehouse,
    Other,
}

impl LocationType {
    pub fn parse(s: &str) -> LocationType {
        match s {
            "office" => LocationType::Office,
            "hospital" => LocationType::Hospital,
            "airport" => LocationType::Airport,
            "gym" => LocationType::Gym,
            "warehouse" => LocationType::Warehouse,
            _ => LocationType::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LocationType::Office => "office",
            LocationType::Hospital => "hospital",
            LocationType::Airport => "airport",
            LocationType::Gym => "gym",
            LocationType::Warehouse => "warehouse",
            LocationType::Other => "other",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Machine {
    pub machine_id: MachineId,
    pub serial_number: String,
    pub model: String,
    pub location_id: Option<String>,
    pub status: MachineStatus,
    pub firmware_version: Option<String>,
    pub slots: Vec<Slot>,
    /// When the platform registered the machine (absent for records loaded from older files).
    pub registered_at: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MachineStatus {
    Active,
    Maintenance,
    Offline,
}

impl MachineStatus {
    pub fn parse(s: &str) -> Option<MachineStatus> {
        Some(match s {
            "active" => MachineStatus::Active,
            "maintenance" => MachineStatus::Maintenance,
            "offline" => MachineStatus::Offline,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MachineStatus::Active => "active",
            MachineStatus::Maintenance => "maintenance",
            MachineStatus::Offline => "offline",
        }
    }
}

/// One slot of a machine's planogram.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub slot_number: u32,
    pub product_id: String,
    pub max_capacity: u32,
    pub price: Cents,
    /// Units at or below which the slot is low on stock (default: 20 % of capacity).
    pub low_stock_threshold: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: String,
    pub client_id: String,
    pub machine_id: MachineId,
    pub start: Timestamp,
    pub end: Timestamp,
    pub monthly_rate: Cents,
    /// Percent of the machine's revenue owed, in hundredths of a percent (10 % is 1000).
    pub revenue_share_basis_points: i64,
    pub status: LeaseStatus,
    /// Whether a new term of the same length starts when this one ends.
    pub auto_renew: bool,
}

/// Something that happened in a lease's life: the record kept of each lifecycle step.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseEvent {
    pub lease_id: String,
    pub client_id: String,
    pub machine_id: MachineId,
    pub at: Timestamp,
    pub kind: LeaseEventKind,
    /// A detail: the next term's lease id on renewal, a termination's reason.
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LeaseEventKind {
    Created,
    Activated,
    RenewalNotice,
    Renewed,
    Expired,
    Terminated,
}

impl LeaseEventKind {
    pub const ALL: [LeaseEventKind; 6] = [
        LeaseEventKind::Created,
        LeaseEventKind::Activated,
        LeaseEventKind::RenewalNotice,
        LeaseEventKind::Renewed,
        LeaseEventKind::Expired,
        LeaseEventKind::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEventKind::Created => "CREATED",
            LeaseEventKind::Activated => "ACTIVATED",
            LeaseEventKind::RenewalNotice => "RENEWAL_NOTICE",
            LeaseEventKind::Renewed => "RENEWED",
            LeaseEventKind::Expired => "EXPIRED",
            LeaseEventKind::Terminated => "TERMINATED",
        }
    }

    pub fn parse(s: &str) -> Option<LeaseEventKind> {
        LeaseEventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LeaseStatus {
    Draft,
    Active,
    Renewed,
    Expired,
    Terminated,
}

impl LeaseStatus {
    pub fn parse(s: &str) -> Option<LeaseStatus> {
        Some(match s {
            "DRAFT" => LeaseStatus::Draft,
            "ACTIVE" => LeaseStatus::Active,
            "RENEWED" => LeaseStatus::Renewed,
            "EXPIRED" => LeaseStatus::Expired,
            "TERMINATED" => LeaseStatus::Terminated,
            _ => return None,
        })
    }
}

impl RegistryRecord {
    /// What the record describes: a later record with the same key replaces this one.
    pub fn key(&self) -> String {
        match self {
            RegistryRecord::Location(l) => format!("location/{}", l.location_id),
            RegistryRecord::Machine(m) => format!("machine/{}", m.machine_id.as_str()),
            RegistryRecord::Lease(l) => format!("lease/{}", l.lease_id),
            RegistryRecord::LeaseEvent(e) => {
                format!("lease_event/{}/{}/{}", e.lease_id, e.at.0, e.kind.as_str())
            }
        }
    }

    /// The record's wire form: one line of a registry JSON Lines file.
    pub fn to_json_line(&self) -> String {
        use serde_json::{Value, json};
        let decimal = |text: String| serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);
        let value = match self {
            RegistryRecord::Location(l) => json!({
                "type": "location", "locationId": l.location_id, "clientId": l.client_id,
                "address": l.address, "lat": decimal(crate::units::trim_decimal(l.lat.0, 6)),
                "lng": decimal(crate::units::trim_decimal(l.lng.0, 6)), "locationType": l.location_type.as_str(),
                "region": l.region, "timeZone": l.time_zone,
            }),
            RegistryRecord::Machine(m) => json!({
                "type": "machine", "machineId": m.machine_id.as_str(), "serialNumber": m.serial_number,
                "model": m.model, "locationId": m.location_id, "status": m.status.as_str(),
                "firmwareVersion": m.firmware_version,
                "registeredAt": m.registered_at.map(|t| t.to_rfc3339()),
                "slots": m.slots.iter().map(|s| {
                    let mut slot = json!({"slotNumber": s.slot_number, "productId": s.product_id,
                        "maxCapacity": s.max_capacity, "price": decimal(s.price.to_string())});
                    if let (Some(t), Value::Object(map)) = (s.low_stock_threshold, &mut slot) {
                        map.insert("lowStockThreshold".into(), t.into());
                    }
                    slot
                }).collect::<Vec<_>>(),
            }),
            RegistryRecord::Lease(l) => json!({
                "type": "lease", "leaseId": l.lease_id, "clientId": l.client_id,
                "machineId": l.machine_id.as_str(), "start": l.start.to_rfc3339(), "end": l.end.to_rfc3339(),
                "monthlyRate": decimal(l.monthly_rate.to_string()),
                "revenueSharePercent": decimal(crate::units::trim_decimal(l.revenue_share_basis_points, 2)),
                "status": l.status.as_str(), "autoRenew": l.auto_renew,
            }),
            RegistryRecord::LeaseEvent(e) => json!({
                "type": "lease_event", "leaseId": e.lease_id, "clientId": e.client_id,
                "machineId": e.machine_id.as_str(), "at": e.at.to_rfc3339(),
                "event": e.kind.as_str(), "note": e.note,
            }),
        };
        let mut line = Vec::new();
        let mut writer = serde_json::Serializer::with_formatter(&mut line, PlainDecimals);
        match serde::Serialize::serialize(&value, &mut writer) {
            Ok(()) => String::from_utf8(line).unwrap_or_else(|_| value.to_string()),
            Err(_) => value.to_string(),
        }
    }
}

/// Writes a fractional number as plain decimal text (`-0.000008`, never `-8e-6`): the decoder reads
/// decimals exactly and refuses exponents, so a record must read back as it was written (found by
/// fuzzing: a latitude of -0.0000082). Every decimal here is small enough (coordinates, prices
/// below [`crate::command::MAX_PRICE`], percents) that the float's shortest text is the decimal's.
struct PlainDecimals;

impl serde_json::ser::Formatter for PlainDecimals {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        write!(writer, "{value}")
    }
}

impl LeaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseStatus::Draft => "DRAFT",
            LeaseStatus::Active => "ACTIVE",
            LeaseStatus::Renewed => "RENEWED",
            LeaseStatus::Expired => "EXPIRED",
            LeaseStatus::Terminated => "TERMINATED",
        }
    }
}
