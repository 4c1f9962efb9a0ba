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
    let post = |url: &str, body: Json| -> (u16, Json) {
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
    };
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
