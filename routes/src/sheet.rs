//! A crew's route sheet: one CSV row per stop, in order, with the arrival time, what to load
//! there, and the depot at both ends; the van's kit (units per product) is [`crate::Route::kit`].

use crate::Route;

/// `2024-03-09 08:14` (UTC) for epoch milliseconds.
pub fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// What each stop needs, as `slot 3: cola x 7; slot 9: chips x 2`.
pub fn loads_text(loads: &[crate::Load]) -> String {
    loads
        .iter()
        .map(|l| format!("slot {}: {} x {}", l.slot_number, l.product_id, l.units))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The route as CSV: `stop,machine_id,lat,lng,arrive,depart,leg_km,urgent,hours_to_empty,units,loads`.
pub fn csv(route: &Route) -> Result<String, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record([
        "stop",
        "machine_id",
        "lat",
        "lng",
        "arrive",
        "depart",
        "leg_km",
        "urgent",
        "hours_to_empty",
        "units",
        "loads",
    ])?;
    let depot = |out: &mut csv::Writer<Vec<u8>>, what: &str, at: i64| {
        out.write_record([
            what.to_owned(),
            format!("depot {}", route.region),
            format!("{:.6}", route.depot.lat),
            format!("{:.6}", route.depot.lng),
            clock(at),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ])
    };
    depot(&mut out, "start", route.start_ms)?;
    for (i, v) in route.visits.iter().enumerate() {
        out.write_record([
            (i + 1).to_string(),
            v.machine_id.clone(),
            format!("{:.6}", v.lat),
            format!("{:.6}", v.lng),
            clock(v.arrive_ms),
            clock(v.depart_ms),
            format!("{:.1}", v.leg_m / 1000.0),
            v.urgent.to_string(),
            format!("{:.1}", v.hours_to_empty),
            v.loads.iter().map(|l| l.units).sum::<i64>().to_string(),
            loads_text(&v.loads),
        ])?;
    }
    depot(&mut out, "end", route.back_ms)?;
    let bytes = out
        .into_inner()
        .map_err(|e| csv::Error::from(std::io::Error::other(e.to_string())))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
