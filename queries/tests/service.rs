//! The whole service started in-process, as `vendflow demo` starts it (a simulated fleet signing
//! envelopes to an embedded MQTT broker, the MQTT source, the engine, SQL, the REST API, the
//! Postgres endpoint and the archive), on ports 0; driven through its real HTTP and Postgres
//! endpoints with real clients, then stopped in order. (Stopping two workers this early once
//! hung: a fold left records waiting past its last timer when its input closed.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use vendflow_dataflows::Config;
use vendflow_queries::service::{Access, Service, ServiceConfig, Simulation, Source, Tick};
use vendflow_sinks::archive::ArchiveConfig;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// (status, JSON body) of a GET.
fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> (u16, Json) {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().expect("the HTTP server answers");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_json().unwrap_or(Json::Null),
    )
}

/// (status, JSON body) of a POST with a token.
fn post(agent: &ureq::Agent, url: &str, token: &str, body: Json) -> (u16, Json) {
    let mut response = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(body)
        .expect("POST answers");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_json().unwrap_or(Json::Null),
    )
}

#[test]
fn a_service_started_in_process_answers_over_http_and_postgres_and_stops_in_order() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Config {
        workers: 2,
        ..Config::default()
    };
    let config = ServiceConfig {
        http: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()),
        pg: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()),
        access: Access::TokensWithAdmin(dir.path().join("tokens.jsonl")),
        archive: Some(ArchiveConfig::new(dir.path().join("archive"), &engine)),
        snapshot_every: Duration::from_millis(500),
        summary_every: Duration::from_millis(200),
        ..ServiceConfig::new(engine)
    };
    let stop = Arc::new(AtomicBool::new(false));
    let running = Service::start(
        config,
        Source::Simulated(Simulation {
            machines: 6,
            speed: 600.0,
            seed: 11,
            mqtt_port: 0,
            duration: None,
            controllers: false,
        }),
        stop.clone(),
    )
    .expect("the service starts");
    let http = running.http_addr().expect("an HTTP address");
    let pg = running.pg_addr().expect("a Postgres address");
    assert!(http.port() != 0 && pg.port() != 0, "ports 0 resolve");
    let token = running.admin_token().expect("an admin token").to_owned();
    // The ticker runs on its own thread here, as on the binary's main thread.
    let ticks: Arc<Mutex<Vec<Tick>>> = Arc::default();
    let service = {
        let ticks = ticks.clone();
        std::thread::spawn(move || {
            running.run(|tick| ticks.lock().expect("ticks").push(tick.clone()))
        })
    };

    // Over HTTP: the simulated machines' heartbeats reach the dashboard through the broker,
    // the source and the engine.
    let agent = agent();
    let base = format!("http://{http}");
    let started = Instant::now();
    let fleet = loop {
        let (status, body) = get(&agent, &format!("{base}/api/dashboard/fleet"), Some(&token));
        assert_eq!(status, 200, "{body}");
        if body["totals"]["active"].as_u64() == Some(6) {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the six machines never showed as active: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(fleet["totals"]["total"], 6, "{fleet}");
    let (status, _) = get(&agent, &format!("{base}/api/dashboard/fleet"), None);
    assert_eq!(status, 401, "the API needs a token");
    let mut answer = agent
        .post(&format!("{base}/sql"))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(json!({"sql": "SELECT count(*) AS n FROM liveness"}))
        .expect("POST /sql answers");
    assert_eq!(answer.status().as_u16(), 200);
    let body: Json = answer.body_mut().read_json().expect("JSON");
    assert_eq!(body["rows"][0]["n"], 6, "{body}");

    // Over the Postgres protocol: the token is the password, a wrong one is refused.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let count: i64 = runtime.block_on(async {
        let connect = |password: String| {
            let options = format!(
                "host={} port={} user=vendflow password={password} dbname=vendflow",
                pg.ip(),
                pg.port()
            );
            async move { tokio_postgres::connect(&options, tokio_postgres::NoTls).await }
        };
        assert!(
            connect("not-a-token".into()).await.is_err(),
            "a wrong password is refused"
        );
        let (client, connection) = connect(token.clone()).await.expect("psql-like login");
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT count(*) FROM liveness", &[])
            .await
            .expect("a query over pgwire");
        row.get(0)
    });
    assert_eq!(count, 6, "liveness over the Postgres protocol");

    // A machine taken out of service: refused while its lease is in force, deleted once the
    // lease is terminated; it leaves the API and the registry the views join with.
    let machine = "mach_00005";
    let delete = |url: &str| -> (u16, Json) {
        let mut response = agent
            .delete(url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .expect("DELETE answers");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_json().unwrap_or(Json::Null),
        )
    };
    let post = |url: &str, body: Json| post(&agent, url, &token, body);
    let (status, machine_before) = get(
        &agent,
        &format!("{base}/api/machines/{machine}"),
        Some(&token),
    );
    assert_eq!(status, 200, "{machine_before}");
    let location = machine_before["location"]["locationId"]
        .as_str()
        .unwrap_or_else(|| panic!("the machine's location: {machine_before}"))
        .to_owned();
    let (_, leases) = get(
        &agent,
        &format!("{base}/api/leases?machineId={machine}"),
        Some(&token),
    );
    let in_force: Vec<String> = leases["items"]
        .as_array()
        .unwrap_or_else(|| panic!("leases: {leases}"))
        .iter()
        .filter(|l| matches!(l["status"].as_str(), Some("ACTIVE" | "DRAFT")))
        .filter_map(|l| l["leaseId"].as_str().map(str::to_owned))
        .collect();
    if !in_force.is_empty() {
        let (status, body) = delete(&format!("{base}/api/machines/{machine}"));
        assert_eq!(status, 409, "a machine under lease stays: {body}");
        assert!(body.to_string().contains("terminate"), "{body}");
        for lease in &in_force {
            let (status, body) = post(&format!("{base}/api/leases/{lease}/terminate"), json!({}));
            assert_eq!(status, 200, "{body}");
        }
    }
    // `SELECT count(*) AS n …` over HTTP.
    let count = |sql: String| -> i64 {
        let mut answer = agent
            .post(&format!("{base}/sql"))
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(json!({ "sql": sql }))
            .expect("POST /sql answers");
        let body: Json = answer.body_mut().read_json().expect("JSON");
        body["rows"][0]["n"]
            .as_i64()
            .unwrap_or_else(|| panic!("a count: {body}"))
    };
    // Its envelopes are refused once its key is revoked; none were before.
    let refused = || {
        count(format!(
            "SELECT count(*) AS n FROM errors WHERE kind = 'unauthenticated' AND message LIKE '%{machine}%'"
        ))
    };
    assert_eq!(refused(), 0, "the machine is accepted while registered");
    let (status, body) = delete(&format!("{base}/api/machines/{machine}"));
    assert_eq!(status, 204, "{body}");
    let (status, _) = get(
        &agent,
        &format!("{base}/api/machines/{machine}"),
        Some(&token),
    );
    assert_eq!(status, 404, "a deleted machine is gone from the API");
    let (status, _) = delete(&format!("{base}/api/machines/{machine}"));
    assert_eq!(status, 404, "deleted once");
    let (_, list) = get(&agent, &format!("{base}/api/machines"), Some(&token));
    assert_eq!(list["total"], 5, "{list}");
    // The engine has the delete: the machine's rows no longer join with a registered machine.
    let started = Instant::now();
    loop {
        let planned = count(format!(
            "SELECT count(*) AS n FROM inventory WHERE machine_id = '{machine}' AND product_id IS NOT NULL"
        ));
        if planned == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the deleted machine's planogram stayed in inventory: {planned} slots"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The simulated machine goes on publishing: it is now refused at the door, as unknown.
    let started = Instant::now();
    while refused() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a deleted machine's envelopes were still accepted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A location is removed only once no machine is at it.
    let (status, body) = delete(&format!("{base}/api/locations/{location}"));
    let others = body.to_string();
    if status == 409 {
        assert!(others.contains("machine"), "{body}");
    } else {
        assert_eq!(
            status, 204,
            "the deleted machine was its location's only one: {body}"
        );
    }
    let (status, created) = post(
        &format!("{base}/api/locations"),
        json!({"clientId": "acme", "address": "1 Short Lease St", "lat": 1.5, "lng": 2.5}),
    );
    assert_eq!(status, 201, "{created}");
    let new_location = created["locationId"].as_str().expect("an id").to_owned();
    let (status, body) = delete(&format!("{base}/api/locations/{new_location}"));
    assert_eq!(status, 204, "{body}");
    let (_, locations) = get(&agent, &format!("{base}/api/locations"), Some(&token));
    assert!(
        !locations.to_string().contains(&new_location),
        "{locations}"
    );

    // Stopped: every thread joined, the archive closed, nothing listens any more.
    stop.store(true, Ordering::SeqCst);
    let stopped = service
        .join()
        .expect("the service thread")
        .expect("a clean stop");
    assert!(stopped.source.events > 0, "{stopped:?}");
    let (root, line) = stopped.archive.expect("the archive's report");
    assert!(root.join("events").is_dir(), "{line}");
    let ticks = ticks.lock().expect("ticks");
    let last = ticks.last().expect("the ticker ran");
    assert!(last.line().contains("machines"), "{}", last.line());
    for addr in [http, pg] {
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "{addr} still accepts connections after the stop"
        );
    }
}

/// The route planner inside a running service: a plan appears in `GET /api/routes`, in the views
/// `restock_routes` / `restock_loads` over SQL, as a crew's CSV sheet and printable page; every
/// crew keeps within its stops, the shift and the fleet's crews; a warehouse registered through
/// the API becomes its region's depot; a tenant's token sees only its machines' stops.
#[test]
fn restock_routes_are_planned_served_as_views_and_sheets_and_scoped_to_tenants() {
    use vendflow_queries::auth::{Role, Tenant, Tokens};
    use vendflow_queries::service::planner::RouteConfig;
    let dir = tempfile::tempdir().expect("temporary directory");
    let tokens_file = dir.path().join("tokens.jsonl");
    let tokens = Tokens::open(&tokens_file).expect("a tokens file");
    let admin = tokens
        .issue(Role::Admin, Tenant::All, None)
        .expect("an admin token");
    let tenant = tokens
        .issue(
            Role::Viewer,
            Tenant::parse("client_00").expect("a tenant"),
            None,
        )
        .expect("a tenant token");
    drop(tokens);
    let config = ServiceConfig {
        http: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()),
        access: Access::Tokens(tokens_file),
        summary_every: Duration::from_millis(500),
        routes: Some(RouteConfig {
            options: vendflow_routes::Options {
                crews: 6,
                stops_per_crew: 8,
                time_limit_secs: 2,
                ..vendflow_routes::Options::default()
            },
            shift_start_hour: 8,
            // One plan for the whole test once there is something to plan (an empty one is
            // tried again within 10 s), so every read below sees the same plan.
            every: Duration::from_secs(3600),
        }),
        ..ServiceConfig::new(Config::default())
    };
    let stop = Arc::new(AtomicBool::new(false));
    let running = Service::start(
        config,
        Source::Simulated(Simulation {
            machines: 150,
            speed: 3600.0,
            seed: 5,
            mqtt_port: 0,
            duration: None,
            controllers: false,
        }),
        stop.clone(),
    )
    .expect("the service starts");
    let base = format!("http://{}", running.http_addr().expect("an HTTP address"));
    let registry = running.registry().clone();
    let service = std::thread::spawn(move || running.run(|_| {}));
    let agent = agent();
    let post = |url: &str, token: &str, body: Json| post(&agent, url, token, body);
    // The north region's depot, before the first plan.
    let (status, body) = post(
        &format!("{base}/api/locations"),
        &admin,
        json!({"locationId": "depot_north", "clientId": "ops", "address": "1 Depot Rd",
               "lat": 40.75, "lng": -73.95, "type": "warehouse", "region": "north"}),
    );
    assert_eq!(status, 201, "{body}");

    let started = Instant::now();
    let plan = loop {
        let (status, body) = get(&agent, &format!("{base}/api/routes"), Some(&admin));
        if status == 200 && body["crews"].as_array().is_some_and(|c| !c.is_empty()) {
            break body;
        }
        assert_eq!(status, 200, "GET /api/routes: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no restock plan with a crew: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let crews = plan["crews"].as_array().expect("crews");
    assert!(crews.len() <= 6, "{} crews of 6", crews.len());
    let shift_end = plan["shiftEnd"]
        .as_str()
        .expect("the shift's end")
        .to_owned();
    let mut machines = std::collections::HashSet::new();
    let (mut stops, mut units) = (0, 0);
    for crew in crews {
        let visits = crew["stops"].as_array().expect("stops");
        assert!(!visits.is_empty() && visits.len() <= 8, "{crew}");
        assert!(
            crew["back"].as_str().expect("back") <= shift_end.as_str(),
            "{crew}"
        );
        if crew["region"] == "north" {
            assert_eq!(
                (crew["depotLat"].as_f64(), crew["depotLng"].as_f64()),
                (Some(40.75), Some(-73.95)),
                "{crew}"
            );
        }
        let mut last = String::new();
        for v in visits {
            let machine = v["machineId"].as_str().expect("a machine").to_owned();
            assert!(
                registry.read().machines.contains_key(&machine),
                "{machine} is registered"
            );
            assert!(machines.insert(machine.clone()), "{machine} visited twice");
            let arrive = v["arrive"].as_str().expect("arrive").to_owned();
            assert!(arrive > last, "arrivals in order: {crew}");
            last = arrive;
            units += v["loads"]
                .as_array()
                .expect("loads")
                .iter()
                .map(|l| l["units"].as_i64().expect("units"))
                .sum::<i64>();
            stops += 1;
        }
        let kit: i64 = crew["kit"]
            .as_array()
            .expect("kit")
            .iter()
            .map(|k| k["units"].as_i64().expect("units"))
            .sum();
        let loads: i64 = visits
            .iter()
            .flat_map(|v| v["loads"].as_array().expect("loads"))
            .map(|l| l["units"].as_i64().expect("units"))
            .sum();
        assert_eq!(kit, loads, "the van's kit is its stops' loads: {crew}");
    }

    // The same plan in the views, over SQL.
    let sql = |token: &str, sql: &str| -> Json {
        let (status, body) = post(&format!("{base}/sql"), token, json!({ "sql": sql }));
        assert_eq!(status, 200, "{sql}: {body}");
        body["rows"][0].clone()
    };
    let row = sql(
        &admin,
        "SELECT count(*) AS n FROM restock_routes WHERE crew IS NOT NULL",
    );
    assert_eq!(row["n"], stops, "{row}");
    let row = sql(&admin, "SELECT sum(units) AS n FROM restock_loads");
    assert_eq!(row["n"].as_i64().unwrap_or(0), units, "{row}");

    // A crew's sheet, as CSV and as a page.
    let crew = crews[0]["crew"].as_str().expect("a crew name");
    let mut response = agent
        .get(&format!("{base}/api/routes/{crew}/sheet.csv"))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .expect("the sheet");
    assert_eq!(response.status().as_u16(), 200);
    let csv = response.body_mut().read_to_string().expect("text");
    let n = crews[0]["stops"].as_array().map_or(0, Vec::len);
    assert_eq!(
        csv.lines().count(),
        n + 3,
        "a header, the depot twice and each stop:\n{csv}"
    );
    assert!(csv.starts_with("stop,machine_id,"), "{csv}");
    let mut response = agent
        .get(&format!("{base}/api/routes/{crew}/sheet"))
        .header("Authorization", &format!("Bearer {admin}"))
        .call()
        .expect("the page");
    let page = response.body_mut().read_to_string().expect("HTML");
    assert!(
        page.contains(&format!("Route {crew}")) && page.contains("Load at the depot"),
        "{page}"
    );
    let (status, _) = get(
        &agent,
        &format!("{base}/api/routes/nobody-99/sheet.csv"),
        Some(&admin),
    );
    assert_eq!(status, 404);
    let (status, _) = get(
        &agent,
        &format!("{base}/api/routes?date=tomorrow"),
        Some(&admin),
    );
    assert_eq!(status, 400);

    // What the planner did, in /metrics.
    let mut response = agent
        .get(&format!("{base}/metrics"))
        .call()
        .expect("metrics");
    let metrics = response.body_mut().read_to_string().expect("text");
    assert!(
        metrics.contains(&format!("vendflow_routes_visits {stops}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("vendflow_routes_failed_total 0\n"),
        "{metrics}"
    );
    // What the engine's operators hold: the inventory fold has a key per machine it was told of.
    let keys = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vendflow_operator_state_keys{operator=\"Inventory\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(keys.is_some_and(|k| k > 0), "{metrics}");
    let bytes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vendflow_operator_state_bytes{operator=\"Inventory\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(bytes.is_some_and(|b| b > 0), "{metrics}");
    // And the sales dedup holds the fingerprints of the lines its horizon has not passed.
    let lines = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vendflow_operator_state_keys{operator=\"Sales: dedup\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(lines.is_some_and(|k| k > 0), "{metrics}");

    // A tenant sees its machines' stops only, in the API and in the views.
    let (status, mine) = get(&agent, &format!("{base}/api/routes"), Some(&tenant));
    assert_eq!(status, 200, "{mine}");
    let mut own = 0;
    for crew in mine["crews"].as_array().expect("crews") {
        for v in crew["stops"].as_array().expect("stops") {
            let machine = v["machineId"].as_str().expect("a machine");
            assert_eq!(
                registry.read().machine_client(machine),
                Some("client_00"),
                "{machine} is another client's"
            );
            own += 1;
        }
    }
    let row = sql(
        &tenant,
        "SELECT count(*) AS n FROM restock_routes WHERE crew IS NOT NULL",
    );
    assert_eq!(row["n"], own, "{row}");
    assert!(
        own < stops,
        "the tenant sees fewer stops ({own}) than the fleet ({stops})"
    );

    stop.store(true, Ordering::SeqCst);
    service
        .join()
        .expect("the service thread")
        .expect("an orderly stop");
}
