//! The REST API against a real engine, through the router (no port): every route, each
//! validation error, each role and tenant refusal, the lease lifecycle on the views' clock, and
//! invoices from the revenue views.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value as Json, json};
use tower::ServiceExt;
use vendflow_dataflows::{Batch, Config, Engine, Feeders};
use vendflow_ingest::auth::{Credentials, KeyStore};
use vendflow_ingest::registry::RegistryLog;
use vendflow_protocol::decode::decode_line;
use vendflow_protocol::units::MS_PER_DAY;
use vendflow_protocol::{Event, Timestamp};
use vendflow_queries::api::fleet::Fleet;
use vendflow_queries::auth::{Role, Tenant, Tokens};
use vendflow_queries::sql::{Limits, Sql};
use vendflow_queries::{ApiState, app};

/// 2024-03-01T00:00:00Z.
const T0: i64 = 1_709_251_200_000;

struct Harness {
    engine: Option<Engine>,
    feeders: Feeders,
    /// The ingestion time the inputs are at.
    now: Timestamp,
    state: ApiState,
    clock: Arc<AtomicI64>,
    admin: String,
    operator: String,
    viewer: String,
    acme_admin: String,
    acme_viewer: String,
    globex_viewer: String,
    /// Where the machines' keys go (`run --credentials`).
    credentials: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            let _ = e.shutdown();
        }
    }
}

fn event(line: &str) -> Event {
    match decode_line(line.as_bytes()).pop() {
        Some(Ok(e)) => e,
        other => panic!("{line}: {other:?}"),
    }
}

impl Harness {
    fn new() -> Harness {
        let mut engine = Engine::start(Config::default()).unwrap_or_else(|e| panic!("{e}"));
        let store = engine.store();
        let feeders = engine.feeders().unwrap_or_else(|| panic!("feeders taken"));
        let fleet = Arc::new(Fleet::new(Arc::new(RegistryLog::embedded(
            feeders.feeder(0),
        ))));
        let sql =
            Sql::open(store.clone(), None, Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        let tokens = Arc::new(Tokens::in_memory());
        let issue = |role, tenant: &str| {
            tokens
                .issue(
                    role,
                    Tenant::parse(tenant).unwrap_or_else(|e| panic!("{e}")),
                    None,
                )
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (admin, operator, viewer) = (
            issue(Role::Admin, "*"),
            issue(Role::Operator, "*"),
            issue(Role::Viewer, "*"),
        );
        let (acme_admin, acme_viewer) = (issue(Role::Admin, "acme"), issue(Role::Viewer, "acme"));
        let globex_viewer = issue(Role::Viewer, "globex");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let credentials = dir.path().join("credentials.jsonl");
        let clock = Arc::new(AtomicI64::new(T0));
        let c = clock.clone();
        let state = ApiState::new(store, sql, fleet)
            .with_tokens(tokens)
            .with_clock(Arc::new(move || Timestamp(c.load(Ordering::SeqCst))))
            .with_keys(KeyStore::File(credentials.clone()));
        Harness {
            engine: Some(engine),
            feeders,
            now: Timestamp::EPOCH,
            state,
            clock,
            admin,
            operator,
            viewer,
            acme_admin,
            acme_viewer,
            globex_viewer,
            credentials,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Json>,
    ) -> (StatusCode, Json) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let response = app(self.state.clone())
            .oneshot(req.body(body).unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap_or_else(|e| match e {});
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, json)
    }

    async fn get(&self, uri: &str, token: &str) -> (StatusCode, Json) {
        self.call(Method::GET, uri, Some(token), None).await
    }

    async fn post(&self, uri: &str, token: &str, body: Json) -> (StatusCode, Json) {
        self.call(Method::POST, uri, Some(token), Some(body)).await
    }

    /// Ingests events at ingestion time `at` and waits until the views reflect them.
    fn ingest(&mut self, at: i64, events: Vec<Event>) {
        let at = Timestamp(at).max(self.now);
        self.feeders
            .send(
                at,
                Batch {
                    events,
                    ..Batch::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}"));
        self.settle(at + 1);
    }

    fn settle(&mut self, to: Timestamp) {
        let to = to.max(self.now + 1);
        self.now = to;
        self.feeders
            .advance_all(to)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            self.state.store.wait_for(to, Duration::from_secs(20)),
            "views did not reach {to}"
        );
    }

    /// A location of `client` and a machine there with two slots; returns the machine id.
    async fn machine(&self, client: &str, location: &str, serial: &str) -> String {
        let (s, b) = self
            .post(
                "/api/locations",
                &self.admin,
                json!({"locationId": location, "clientId": client, "address": "1 Main St", "lat": 40.7, "lng": -74.0, "type": "office", "region": "north"}),
            )
            .await;
        assert!(
            s == StatusCode::CREATED || s == StatusCode::CONFLICT,
            "{s} {b}"
        );
        let (s, b) = self
            .post("/api/machines", &self.admin, new_machine(serial, location))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b["machineId"].as_str().unwrap_or_default().to_owned()
    }
}

fn new_machine(serial: &str, location: &str) -> Json {
    json!({
        "serialNumber": serial, "model": "VX-30", "locationId": location,
        "slots": [
            {"slotNumber": 1, "productId": "cola", "maxCapacity": 10, "price": 2.50},
            {"slotNumber": 2, "productId": "chips", "maxCapacity": 8, "price": 1.75},
        ],
    })
}

fn error_code(body: &Json) -> &str {
    assert_eq!(body["success"], json!(false), "{body}");
    assert!(body["error"]["requestId"].is_string(), "{body}");
    assert!(body["error"]["timestamp"].is_string(), "{body}");
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_registration_validates_every_field_and_refuses_conflicts() {
    let h = Harness::new();
    // A location's time zone is an IANA name, checked; it is answered back (UTC by default).
    let (s, b) = h
        .post(
            "/api/locations",
            &h.admin,
            json!({"clientId": "acme", "address": "x", "lat": 1, "lng": 1, "timeZone": "Mars/Olympus"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["error"]["details"].to_string().contains("timeZone"),
        "{b}"
    );
    let (s, b) = h
        .post(
            "/api/locations",
            &h.admin,
            json!({"locationId": "loc-tokyo", "clientId": "acme", "address": "Haneda", "lat": 35.5, "lng": 139.8, "timeZone": "Asia/Tokyo"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["timeZone"], json!("Asia/Tokyo"), "{b}");
    let (s, b) = h.post("/api/machines", &h.admin, json!({})).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "validation_failed")
    );
    let fields: Vec<&str> = b["error"]["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|p| p["field"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        ["serialNumber", "model", "locationId", "slots"],
        "{b}"
    );

    let mut bad = new_machine("SN-1", "loc-1");
    bad["slots"][1]["price"] = json!(1.755);
    bad["slots"][0]["maxCapacity"] = json!(0);
    bad["slots"][1]["slotNumber"] = json!(1);
    let (s, b) = h.post("/api/machines", &h.admin, bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let details = b["error"]["details"].to_string();
    for field in [
        "slots[0].maxCapacity",
        "slots[1].slotNumber",
        "slots[1].price",
    ] {
        assert!(details.contains(field), "{field} missing in {details}");
    }
    let (s, b) = h
        .post(
            "/api/machines",
            &h.admin,
            json!({"serialNumber": "x", "color": "red"}),
        )
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::BAD_REQUEST, "invalid_json"),
        "{b}"
    );
    let (s, b) = h
        .post("/api/machines", &h.admin, new_machine("SN-1", "nowhere"))
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::NOT_FOUND, "not_found"),
        "{b}"
    );

    let id = h.machine("acme", "loc-1", "SN-1").await;
    assert!(id.starts_with("mach_"), "{id}");
    let (s, b) = h
        .post("/api/machines", &h.admin, new_machine("SN-1", "loc-1"))
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::CONFLICT, "conflict"),
        "{b}"
    );
    let mut same_id = new_machine("SN-2", "loc-1");
    same_id["machineId"] = json!(id);
    let (s, b) = h.post("/api/machines", &h.admin, same_id).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");

    // Too large, not JSON, no JSON content type.
    let huge = json!({"serialNumber": "x".repeat(300_000)});
    let (s, b) = h.post("/api/machines", &h.admin, huge).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let req = Request::post("/api/machines")
        .header("authorization", format!("Bearer {}", h.admin))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = app(h.state.clone())
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let req = Request::post("/api/machines")
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::from("{}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let r = app(h.state.clone())
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // The registered machine is in the views: registered, not yet heard from.
    let (s, b) = h.get(&format!("/api/machines/{id}"), &h.viewer).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["location"]["clientId"], "acme");
    assert_eq!(b["status"], "offline", "{b}");

    // Its key is in the credentials file the bridge follows; deleting the machine revokes it.
    let keys = || Credentials::load(&h.credentials).unwrap_or_else(|e| panic!("{e}"));
    assert!(keys().get(&id).is_some(), "the new machine's key is stored");
    let (s, b) = h
        .call(
            Method::DELETE,
            &format!("/api/machines/{id}"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert!(
        keys().get(&id).is_none(),
        "a deleted machine's key is revoked"
    );
    assert_eq!(keys().len(), 0, "{:?}", keys());

    // An id that already has device credentials (`vendflow device register`) is a conflict,
    // not a server error, and registers once they are revoked.
    Credentials::register(&h.credentials, "mach_keyed").unwrap_or_else(|e| panic!("{e}"));
    let mut keyed = new_machine("SN-3", "loc-1");
    keyed["machineId"] = json!("mach_keyed");
    let (s, b) = h.post("/api/machines", &h.admin, keyed.clone()).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::CONFLICT, "conflict"),
        "{b}"
    );
    assert!(b.to_string().contains("revoke"), "{b}");
    assert!(Credentials::revoke(&h.credentials, "mach_keyed").unwrap_or_else(|e| panic!("{e}")));
    let (s, b) = h.post("/api/machines", &h.admin, keyed).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_show_live_state_and_maintenance_is_for_operators() {
    let mut h = Harness::new();
    let id = h.machine("acme", "loc-1", "SN-1").await;
    h.ingest(
        T0,
        vec![
            event(&format!(r#"{{"machineId":"{id}","type":"heartbeat","timestamp":{T0},"payload":{{"temperature":9.5,"doorStatus":"closed","networkSignal":-80}}}}"#)),
            event(&format!(r#"{{"machineId":"{id}","type":"sale","timestamp":{T0},"payload":{{"slotNumber":1,"productId":"cola","amount":2.50,"paymentMethod":"card","transactionId":"t1"}}}}"#)),
        ],
    );
    let (s, b) = h.get(&format!("/api/machines/{id}"), &h.viewer).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["status"], "active", "{b}");
    assert_eq!(b["temperature"], "9.5", "{b}");
    // One element per alert (the health view joins its reasons into one cell).
    assert_eq!(
        b["alerts"],
        json!(["temperature critical", "network warning"]),
        "{b}"
    );
    assert_eq!(b["alertCount"], 2, "{b}");
    let slot1 = &b["inventory"][0];
    assert_eq!(
        (slot1["slotNumber"].as_i64(), slot1["units"].as_i64()),
        (Some(1), Some(9)),
        "{b}"
    );
    assert_eq!(slot1["price"], "2.50");

    let uri = format!("/api/machines/{id}");
    let (s, b) = h
        .call(
            Method::PATCH,
            &uri,
            Some(&h.viewer),
            Some(json!({"status": "maintenance"})),
        )
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{b}"
    );
    let (s, b) = h
        .call(
            Method::PATCH,
            &uri,
            Some(&h.operator),
            Some(json!({"status": "offline"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = h
        .call(
            Method::PATCH,
            &uri,
            Some(&h.operator),
            Some(json!({"status": "broken"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = h
        .call(Method::PATCH, &uri, Some(&h.operator), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = h
        .call(
            Method::PATCH,
            "/api/machines/nope",
            Some(&h.operator),
            Some(json!({"status": "maintenance"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = h
        .call(
            Method::PATCH,
            &uri,
            Some(&h.operator),
            Some(json!({"status": "maintenance"})),
        )
        .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::OK, Some("maintenance")),
        "{b}"
    );
    // The change went into the dataflows: the liveness view says so too.
    h.settle(Timestamp(T0 + 10));
    let (_, b) = h.get("/views/liveness", &h.viewer).await;
    assert!(b["rows"].to_string().contains("maintenance"), "{b}");
    let (_, b) = h.get("/api/machines?status=maintenance", &h.viewer).await;
    assert_eq!(b["total"], 1, "{b}");

    // Lists: filters, pagination, refusals.
    for n in 2..=4 {
        h.machine("acme", "loc-1", &format!("SN-{n}")).await;
    }
    let (_, b) = h.get("/api/machines?page=2&pageSize=3", &h.viewer).await;
    assert_eq!(
        (b["total"].as_u64(), b["items"].as_array().map(Vec::len)),
        (Some(4), Some(1)),
        "{b}"
    );
    let (_, b) = h.get("/api/machines?region=south", &h.viewer).await;
    assert_eq!(b["total"], 0, "{b}");
    for bad in [
        "/api/machines?pageSize=501",
        "/api/machines?page=0",
        "/api/machines?status=on",
        "/api/machines?page=x",
    ] {
        let (s, b) = h.get(bad, &h.viewer).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
        error_code(&b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_tenants_are_enforced_everywhere() {
    let mut h = Harness::new();
    let acme = h.machine("acme", "loc-a", "SN-A").await;
    let globex = h.machine("globex", "loc-g", "SN-G").await;
    h.ingest(
        T0,
        [&acme, &globex]
            .iter()
            .map(|m| event(&format!(r#"{{"machineId":"{m}","type":"heartbeat","timestamp":{T0},"payload":{{"temperature":4.0}}}}"#)))
            .collect(),
    );
    // No token, a wrong one.
    let (s, b) = h.call(Method::GET, "/api/machines", None, None).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
    let (s, b) = h.get("/api/machines", "vf_00000000_nope").await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::UNAUTHORIZED, "invalid_token")
    );
    // Open routes need none.
    for open in ["/health", "/metrics", "/api/openapi.json"] {
        let (s, _) = h.call(Method::GET, open, None, None).await;
        assert_eq!(s, StatusCode::OK, "{open}");
    }
    // A viewer cannot write anything.
    let (s, _) = h
        .post("/api/machines", &h.viewer, new_machine("SN-V", "loc-a"))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .post(
            "/api/locations",
            &h.acme_viewer,
            json!({"address": "x", "lat": 1, "lng": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h.post("/api/leases", &h.viewer, json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Another tenant's machine is as missing as an unknown one; lists hold only one's own.
    let (s, b) = h
        .get(&format!("/api/machines/{globex}"), &h.acme_viewer)
        .await;
    assert_eq!((s, error_code(&b)), (StatusCode::NOT_FOUND, "not_found"));
    let (_, b) = h.get("/api/machines", &h.acme_viewer).await;
    assert_eq!(b["total"], 1, "{b}");
    assert_eq!(b["items"][0]["machineId"], json!(acme));
    let (_, b) = h.get("/api/locations", &h.acme_viewer).await;
    assert_eq!(b["total"], 1, "{b}");
    // An acme admin cannot register at globex's location, nor add locations for globex.
    let (s, _) = h
        .post("/api/machines", &h.acme_admin, new_machine("SN-X", "loc-g"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h
        .post(
            "/api/locations",
            &h.acme_admin,
            json!({"clientId": "globex", "address": "x", "lat": 1, "lng": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Views and SQL: only acme's rows; fleet-wide views and the archive are refused.
    let (_, b) = h.get("/views/liveness", &h.acme_viewer).await;
    assert_eq!(b["rows"].as_array().map(Vec::len), Some(1), "{b}");
    let (s, _) = h.get("/views/revenue_fleet_today", &h.acme_viewer).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = h
        .call(
            Method::POST,
            "/sql",
            Some(&h.acme_viewer),
            Some(json!({"sql": "SELECT machine_id FROM liveness ORDER BY 1"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["rows"], json!([{"machine_id": acme}]), "{b}");
    let (_, b) = h
        .call(
            Method::POST,
            "/sql",
            Some(&h.viewer),
            Some(json!({"sql": "SELECT count(*) AS n FROM liveness"})),
        )
        .await;
    assert_eq!(b["rows"][0]["n"], 2, "{b}");
    let (s, _) = h
        .call(
            Method::POST,
            "/sql",
            Some(&h.acme_viewer),
            Some(json!({"sql": "SELECT * FROM revenue_fleet_today"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "fleet-wide views read as empty for a tenant"
    );
    let (_, b) = h
        .call(
            Method::POST,
            "/sql",
            Some(&h.acme_viewer),
            Some(json!({"sql": "SELECT count(*) AS n FROM revenue_fleet_today"})),
        )
        .await;
    assert_eq!(b["rows"][0]["n"], 0, "{b}");
    let (_, b) = h.get("/api/dashboard/fleet", &h.acme_viewer).await;
    assert_eq!(b["totals"]["total"], 1, "{b}");
    let (_, b) = h.get("/api/whoami", &h.acme_viewer).await;
    assert_eq!(
        (b["role"].as_str(), b["tenant"].as_str()),
        (Some("viewer"), Some("acme"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_validate_move_through_their_lifecycle_and_invoice_from_revenue() {
    let mut h = Harness::new();
    let m = h.machine("acme", "loc-1", "SN-1").await;
    let other = h.machine("globex", "loc-2", "SN-2").await;
    let lease = |start: &str, end: &str| json!({"machineId": m, "start": start, "end": end, "monthlyRate": 300, "revenueSharePercent": 12.5, "autoRenew": true});
    for (body, field) in [
        (lease("2024-03-01", "2024-03-01"), "end"),
        (lease("2024-03-01", "2024-05-31"), "end"),
        (
            json!({"machineId": m, "start": "03/01/2024", "end": "2024-09-01", "monthlyRate": 300, "revenueSharePercent": 10}),
            "start",
        ),
        (
            json!({"machineId": m, "start": "2024-03-01", "end": "2024-09-01", "monthlyRate": -1, "revenueSharePercent": 10}),
            "monthlyRate",
        ),
        (
            json!({"machineId": m, "start": "2024-03-01", "end": "2024-09-01", "monthlyRate": 300, "revenueSharePercent": 101}),
            "revenueSharePercent",
        ),
    ] {
        let (s, b) = h.post("/api/leases", &h.admin, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
        assert!(
            b["error"]["details"].to_string().contains(field),
            "{field}: {b}"
        );
    }
    let (s, b) = h.post("/api/leases", &h.admin, json!({"machineId": "ghost", "start": "2024-03-01", "end": "2024-09-01", "monthlyRate": 1, "revenueSharePercent": 1})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let mut wrong_client = lease("2024-03-01", "2024-09-01");
    wrong_client["clientId"] = json!("globex");
    let (s, b) = h.post("/api/leases", &h.admin, wrong_client).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, _) = h.post("/api/leases", &h.acme_admin, json!({"machineId": other, "start": "2024-03-01", "end": "2024-09-01", "monthlyRate": 1, "revenueSharePercent": 1})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's machine");

    // 2024-03-01 .. 2024-06-01: three months, auto-renew.
    let (s, b) = h
        .post(
            "/api/leases",
            &h.acme_admin,
            lease("2024-03-01", "2024-06-01"),
        )
        .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::CREATED, Some("DRAFT")),
        "{b}"
    );
    let id = b["leaseId"].as_str().unwrap_or_default().to_owned();
    let (s, _) = h
        .post(&format!("/api/leases/{id}/renew"), &h.admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a draft cannot be renewed");
    let (s, _) = h
        .post(
            &format!("/api/leases/{id}/activate"),
            &h.acme_viewer,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = h
        .post(
            &format!("/api/leases/{id}/activate"),
            &h.acme_admin,
            json!({}),
        )
        .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::OK, Some("ACTIVE")),
        "{b}"
    );
    // Overlapping a lease that is active is refused, at signing and at activation.
    let (s, b) = h
        .post("/api/leases", &h.admin, lease("2024-05-01", "2024-09-01"))
        .await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::CONFLICT, "conflict"),
        "{b}"
    );
    let (s, b) = h
        .post("/api/leases", &h.admin, lease("2025-01-01", "2025-06-01"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let later = b["leaseId"].as_str().unwrap_or_default().to_owned();

    // Revenue in March: two sales and a duplicate delivery; one in April.
    let sale = |txn: &str, ts: i64, amount: &str| {
        event(&format!(
            r#"{{"machineId":"{m}","type":"sale","timestamp":{ts},"payload":{{"slotNumber":1,"productId":"cola","amount":{amount},"paymentMethod":"card","transactionId":"{txn}"}}}}"#
        ))
    };
    let march = T0 + 10 * MS_PER_DAY;
    h.ingest(
        march,
        vec![
            sale("a", march, "10.00"),
            sale("b", march, "5.55"),
            sale("a", march, "10.00"),
        ],
    );
    let april = T0 + 40 * MS_PER_DAY;
    h.ingest(april, vec![sale("c", april, "2.50")]);
    let (s, b) = h
        .get(
            &format!("/api/leases/{id}/invoices?month=2024-03"),
            &h.acme_viewer,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // 300 + 15.55 × 12.5 % = 300 + 1.94375 → 301.94 (half up to the cent).
    assert_eq!(
        (
            b["machineRevenue"].as_str(),
            b["revenueShare"].as_str(),
            b["total"].as_str()
        ),
        (Some("15.55"), Some("1.94"), Some("301.94")),
        "{b}"
    );
    let (_, b) = h
        .get(
            &format!("/api/leases/{id}/invoices?month=2024-04"),
            &h.acme_viewer,
        )
        .await;
    assert_eq!(b["total"].as_str(), Some("300.31"), "{b}");
    // SQL says the same amounts: the invoice reads this view.
    let (s, b) = h
        .call(
            Method::POST,
            "/sql",
            Some(&h.acme_viewer),
            Some(json!({"sql": format!(
                "SELECT CAST(month AS VARCHAR) AS month, revenue_share_basis_points AS bp, \
                        CAST(revenue_share AS VARCHAR) AS share, CAST(amount_due AS VARCHAR) AS due \
                 FROM lease_revenue_share_monthly WHERE lease_id = '{id}' ORDER BY month"
            )})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["rows"],
        json!([
            {"month": "2024-03-01", "bp": 1250, "share": "1.94", "due": "301.94"},
            {"month": "2024-04-01", "bp": 1250, "share": "0.31", "due": "300.31"},
        ]),
        "{b}"
    );
    for bad in ["", "?month=2024-13", "?month=2023-12"] {
        let (s, b) = h
            .get(&format!("/api/leases/{id}/invoices{bad}"), &h.acme_viewer)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {b}");
    }
    let (s, _) = h
        .get(
            &format!("/api/leases/{id}/invoices?month=2024-03"),
            &h.viewer,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the platform's viewer sees every client");

    // 30 days before the end: the renewal notice; at the end: renewed into a next term.
    h.clock.store(T0 + 63 * MS_PER_DAY, Ordering::SeqCst);
    let (_, b) = h.get(&format!("/api/leases/{id}"), &h.acme_viewer).await;
    let events: Vec<&str> = b["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["event"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(events, ["CREATED", "ACTIVATED", "RENEWAL_NOTICE"], "{b}");
    h.clock.store(T0 + 93 * MS_PER_DAY, Ordering::SeqCst);
    let (_, b) = h.get(&format!("/api/leases/{id}"), &h.acme_viewer).await;
    assert_eq!(b["status"], "RENEWED", "{b}");
    let next = format!("{id}-t2");
    let (_, b) = h.get(&format!("/api/leases/{next}"), &h.acme_viewer).await;
    assert_eq!(
        (b["status"].as_str(), b["start"].as_str(), b["end"].as_str()),
        (Some("ACTIVE"), Some("2024-06-01"), Some("2024-09-01")),
        "{b}"
    );
    // The lifecycle is in the dataflows: the lease_events view has it.
    h.settle(Timestamp(april + 10));
    let (_, b) = h.call(Method::POST, "/sql", Some(&h.acme_viewer), Some(json!({"sql": format!("SELECT event FROM lease_events WHERE lease_id = '{id}' ORDER BY event")}))).await;
    assert_eq!(
        b["rows"],
        json!([{"event": "ACTIVATED"}, {"event": "CREATED"}, {"event": "RENEWAL_NOTICE"}, {"event": "RENEWED"}]),
        "{b}"
    );
    // Terminate the next term; a terminated lease cannot be terminated again.
    let (s, b) = h
        .post(
            &format!("/api/leases/{next}/terminate"),
            &h.acme_admin,
            json!({"reason": "client moved"}),
        )
        .await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::OK, Some("TERMINATED")),
        "{b}"
    );
    let (s, _) = h
        .post(
            &format!("/api/leases/{next}/terminate"),
            &h.acme_admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The later draft never activated: it expires at its end.
    h.clock.store(T0 + 500 * MS_PER_DAY, Ordering::SeqCst);
    let (_, b) = h.get("/api/leases?status=EXPIRED", &h.acme_viewer).await;
    assert!(b["items"].to_string().contains(&later), "{b}");
    let (_, b) = h.get("/api/leases", &h.acme_viewer).await;
    assert_eq!(b["total"], 3, "{b}");
    let (s, _) = h.get("/api/leases?status=GONE", &h.acme_viewer).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// A machine in Tokyo: its invoice months and the dashboard's "today" follow Tokyo's calendar.
/// A sale at 20:00 UTC on March 31 is April 1 in Tokyo: April's invoice and Tokyo's today.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_and_todays_revenue_follow_the_machines_own_calendar() {
    let mut h = Harness::new();
    let (s, b) = h
        .post(
            "/api/locations",
            &h.admin,
            json!({"locationId": "loc-hnd", "clientId": "acme", "address": "Haneda T3", "lat": 35.55, "lng": 139.78, "type": "airport", "region": "east", "timeZone": "Asia/Tokyo"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = h
        .post("/api/machines", &h.admin, new_machine("SN-T", "loc-hnd"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let m = b["machineId"].as_str().unwrap_or_default().to_owned();
    let (s, b) = h
        .post(
            "/api/leases",
            &h.acme_admin,
            json!({"machineId": m, "start": "2024-03-01", "end": "2024-06-01", "monthlyRate": 100, "revenueSharePercent": 10}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let id = b["leaseId"].as_str().unwrap_or_default().to_owned();
    let (s, b) = h
        .post(
            &format!("/api/leases/{id}/activate"),
            &h.acme_admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    h.settle(Timestamp(T0));
    let sale = |txn: &str, ts: i64, amount: &str| {
        event(&format!(
            r#"{{"machineId":"{m}","type":"sale","timestamp":{ts},"payload":{{"slotNumber":1,"productId":"cola","amount":{amount},"paymentMethod":"card","transactionId":"{txn}"}}}}"#
        ))
    };
    // March 31, 19:00 and April 1, 05:00 in Tokyo.
    let evening = T0 + 30 * MS_PER_DAY + 10 * 3_600_000;
    let night = T0 + 30 * MS_PER_DAY + 20 * 3_600_000;
    h.ingest(
        night,
        vec![sale("e", evening, "4.00"), sale("n", night, "8.00")],
    );
    for (month, revenue) in [("2024-03", "4.00"), ("2024-04", "8.00")] {
        let (s, b) = h
            .get(
                &format!("/api/leases/{id}/invoices?month={month}"),
                &h.acme_viewer,
            )
            .await;
        assert_eq!(
            (s, b["machineRevenue"].as_str()),
            (StatusCode::OK, Some(revenue)),
            "{month}: {b}"
        );
    }
    // Tokyo's today is April 1: only the night's sale (UTC's today would hold both).
    let (s, b) = h.get("/api/dashboard/fleet", &h.acme_viewer).await;
    assert_eq!(
        (s, b["todayRevenue"].as_str()),
        (StatusCode::OK, Some("8.00")),
        "{b}"
    );
    assert_eq!(b["topPerforming"][0]["revenue"], json!("8.00"), "{b}");
    let (s, b) = h
        .call(
            Method::POST,
            "/sql",
            Some(&h.acme_viewer),
            Some(json!({"sql": "SELECT CAST(day AS VARCHAR) AS day, time_zone, CAST(revenue AS VARCHAR) AS revenue FROM revenue_by_machine_local_day ORDER BY day"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        b["rows"],
        json!([
            {"day": "2024-03-31", "time_zone": "Asia/Tokyo", "revenue": "4.00"},
            {"day": "2024-04-01", "time_zone": "Asia/Tokyo", "revenue": "8.00"},
        ]),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_in_the_openapi_document_and_answers() {
    let h = Harness::new();
    let m = h.machine("acme", "loc-1", "SN-1").await;
    let doc = vendflow_queries::api::openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    // Every route of the API is documented (the router and the document are built from one
    // list of handlers; this list is the API's contract as the dashboard and clients use it)...
    let routes = [
        ("/api/machines", &["get", "post"][..]),
        ("/api/machines/{id}", &["delete", "get", "patch"]),
        ("/api/locations", &["get", "post"]),
        ("/api/locations/{id}", &["delete"]),
        ("/api/leases", &["get", "post"]),
        ("/api/leases/{id}", &["get"]),
        ("/api/leases/{id}/activate", &["post"]),
        ("/api/leases/{id}/renew", &["post"]),
        ("/api/leases/{id}/terminate", &["post"]),
        ("/api/leases/{id}/invoices", &["get"]),
        ("/api/dashboard/fleet", &["get"]),
        ("/api/dashboard/map", &["get"]),
        ("/api/dashboard/stream", &["get"]),
        ("/api/whoami", &["get"]),
        ("/api/receipts/{machine_id}/{transaction_id}", &["get"]),
        ("/api/routes", &["get"]),
        ("/api/routes/{crew}/sheet.csv", &["get"]),
        ("/api/routes/{crew}/sheet", &["get"]),
        ("/health", &["get"]),
        ("/metrics", &["get"]),
        ("/api/openapi.json", &["get"]),
        ("/views", &["get"]),
        ("/views/{name}", &["get"]),
        ("/views/{name}/subscribe", &["get"]),
        ("/sql", &["post"]),
    ];
    let declared: Vec<&str> = routes.iter().map(|(path, _)| *path).collect();
    for (route, methods) in routes {
        let documented: Vec<String> = paths
            .get(route)
            .and_then(|p| p.as_object())
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            documented, methods,
            "{route}'s operations in the OpenAPI document"
        );
    }
    // Each operation has its own id, says what it answers, and every refusal has the error
    // shape.
    let mut ids = std::collections::BTreeSet::new();
    for (path, ops) in &paths {
        for (method, op) in ops.as_object().into_iter().flatten() {
            let id = op["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "{method} {path}: operationId {id:?} twice"
            );
            let responses = op["responses"].as_object().cloned().unwrap_or_default();
            assert!(
                responses.keys().any(|code| code.starts_with('2')),
                "{method} {path} documents no success: {op}"
            );
            for (code, response) in &responses {
                if code.starts_with('4') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
    // The three open routes need no token; every other one the bearer scheme.
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    for open in ["/health", "/metrics", "/api/openapi.json"] {
        assert_eq!(paths[open]["get"]["security"], json!([{}]), "{open}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // ...and every documented operation answers (not the fallback, not 405).
    for (path, ops) in &paths {
        assert!(
            declared.contains(&path.as_str()),
            "{path} is documented but not routed"
        );
        for method in ops
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let uri = path
                .replace("{id}", if path.contains("leases") { "nope" } else { &m })
                .replace("{name}", "liveness")
                .replace("{machine_id}", &m)
                .replace("{transaction_id}", "txn_1_1")
                .replace("{crew}", "north-01");
            if uri.ends_with("subscribe") || uri.ends_with("stream") {
                continue; // streams never end; tested elsewhere
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            let (s, b) = h
                .call(method.clone(), &uri, Some(&h.admin), Some(json!({})))
                .await;
            assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(b["error"]["code"] != "no_route", "{method} {uri}: {b}");
        }
    }
    let (s, b) = h.get("/api/nothing", &h.admin).await;
    assert_eq!((s, error_code(&b)), (StatusCode::NOT_FOUND, "no_route"));
    // Receipts come from the archive: a server without one says so; a bad code is refused
    // before any query.
    let (s, b) = h.get(&format!("/api/receipts/{m}/txn_1_1"), &h.admin).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::SERVICE_UNAVAILABLE, "no_archive")
    );
    let (s, _) = h.get(&format!("/api/receipts/{m}/a%20b"), &h.admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Routes come from the service's planner: an API without one says so (an empty plan with
    // the reason; a crew's sheet is unavailable).
    let (s, b) = h.get("/api/routes", &h.admin).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["crews"], json!([]), "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--replan-secs 0"),
        "{b}"
    );
    let (s, b) = h.get("/api/routes/north-01/sheet.csv", &h.admin).await;
    assert_eq!(
        (s, error_code(&b)),
        (StatusCode::SERVICE_UNAVAILABLE, "no_planner")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sums_the_fleet_and_streams_alerts_and_sales_live() {
    let mut h = Harness::new();
    let m = h.machine("acme", "loc-1", "SN-1").await;
    h.ingest(T0, vec![event(&format!(r#"{{"machineId":"{m}","type":"heartbeat","timestamp":{T0},"payload":{{"temperature":4.0}}}}"#))]);
    let req = Request::get(format!(
        "/api/dashboard/stream?access_token={}",
        h.acme_viewer
    ))
    .body(Body::empty())
    .unwrap_or_else(|e| panic!("{e}"));
    let response = app(h.state.clone())
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Overheating, then a sale.
    let t1 = T0 + 60_000;
    h.ingest(t1, vec![
        event(&format!(r#"{{"machineId":"{m}","type":"heartbeat","timestamp":{t1},"payload":{{"temperature":11.0}}}}"#)),
        event(&format!(r#"{{"machineId":"{m}","type":"sale","timestamp":{t1},"payload":{{"slotNumber":1,"productId":"cola","amount":2.50,"paymentMethod":"card","transactionId":"z"}}}}"#)),
    ]);
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(seen.contains("event: alert") && seen.contains("event: revenue")) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no alert and revenue events; got {seen}"));
        if let Some(Ok(f)) = frame
            && let Ok(data) = f.into_data()
        {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(seen.contains("temperature critical"), "{seen}");
    assert!(seen.contains(r#""todayRevenue":"2.50""#), "{seen}");
    let (s, b) = h.get("/api/dashboard/fleet", &h.acme_viewer).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["totals"]["active"].as_u64(), b["todayRevenue"].as_str()),
        (Some(1), Some("2.50")),
        "{b}"
    );
    assert!(b["alertCount"].as_u64() >= Some(1), "{b}");
    assert_eq!(b["topPerforming"][0]["machineId"], json!(m), "{b}");
    let (_, b) = h
        .get("/api/dashboard/fleet?region=south", &h.acme_viewer)
        .await;
    assert_eq!(b["totals"]["total"], 0, "{b}");
    // The map: the machine at its location's coordinates, live status and alert count; the
    // alerting machines listed; nothing of acme's for another tenant.
    let (s, b) = h.get("/api/dashboard/map", &h.acme_viewer).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let row = &b["machines"][0];
    assert_eq!(
        (&row[0], &row[2], &row[3], &row[4]),
        (&json!(m), &json!(40.7), &json!(-74.0), &json!("active")),
        "{b}"
    );
    assert!(row[5].as_u64() >= Some(1), "{b}");
    assert_eq!(b["alerts"][0]["machineId"], json!(m), "{b}");
    let (_, b) = h.get("/api/dashboard/map", &h.globex_viewer).await;
    assert_eq!(b["machines"], json!([]), "{b}");
    let (_, b) = h.get("/api/dashboard/map?region=south", &h.admin).await;
    assert_eq!(b["machines"], json!([]), "{b}");
    let (s, _) = h.call(Method::GET, "/api/dashboard/map", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = h.call(Method::GET, "/health", None, None).await;
    assert_eq!(
        (
            s,
            b["devices"]["online"].as_u64(),
            b["devices"]["total"].as_u64()
        ),
        (StatusCode::OK, Some(1), Some(1)),
        "{b}"
    );
    let (_, text) = h.call(Method::GET, "/metrics", None, None).await;
    let text = text.as_str().unwrap_or_default().to_owned();
    for metric in [
        "vendflow_view_freshness_seconds{view=\"inventory\"}",
        "vendflow_query_duration_seconds_count",
        "vendflow_devices{status=\"active\"} 1",
    ] {
        assert!(text.contains(metric), "{metric} missing:\n{text}");
    }
    // The frontier is a gauge in epoch milliseconds (a number Prometheus can read), one per view.
    let frontiers: Vec<i64> = text
        .lines()
        .filter(|l| l.starts_with("vendflow_view_frontier_ms{"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("not a number: {l}"))
        })
        .collect();
    assert_eq!(frontiers.len(), vendflow_dataflows::CATALOG.len(), "{text}");
    assert!(frontiers.iter().all(|f| *f >= h.now.ms()), "{frontiers:?}");
    // A live engine keeps old rows of these views on disk, and says how many (none yet).
    let mut on_disk: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("vendflow_view_rows_on_disk{view=\""))
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        [
            "anomaly_windows\"} 0",
            "revenue_machine_daily\"} 0",
            "revenue_machine_local_daily\"} 0"
        ],
        "{text}"
    );
}

/// The dashboard page and every file of its build are served, without a token (they hold no
/// data), with their content types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_and_assets_are_embedded_and_served() {
    let h = Harness::new();
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    let mut built: Vec<String> = Vec::new();
    for dir in [dist.clone(), dist.join("assets")] {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_file() {
                let rel = path.strip_prefix(&dist).unwrap_or(&path);
                built.push(format!("/{}", rel.display()).replace("/index.html", "/"));
            }
        }
    }
    built.sort();
    let mut embedded: Vec<String> = vendflow_queries::api::web::FILES
        .iter()
        .map(|(p, _, _)| (*p).to_owned())
        .collect();
    embedded.sort();
    assert_eq!(
        built, embedded,
        "every built file is embedded, and only those"
    );
    for (path, content_type, bytes) in vendflow_queries::api::web::FILES {
        let response = app(h.state.clone())
            .oneshot(
                Request::get(*path)
                    .body(Body::empty())
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .await
            .unwrap_or_else(|e| match e {});
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()["content-type"].to_str().ok(),
            Some(*content_type),
            "{path}"
        );
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .to_bytes();
        assert_eq!(body.len(), bytes.len(), "{path}");
    }
    let page = String::from_utf8_lossy(vendflow_queries::api::web::FILES[0].2);
    assert!(page.contains("/assets/app.js") && page.contains("/assets/index.css"));
    let (s, b) = h.call(Method::GET, "/assets/nope.js", None, None).await;
    assert_eq!((s, error_code(&b)), (StatusCode::NOT_FOUND, "no_route"));
}

/// Equalities on text columns are pushed into the live tables' scans (rows are picked before they
/// become Arrow); the answers must not change: either way round, on a join, none, and an `OR`
/// (not pushed down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_equalities_pushed_into_live_scans_keep_the_answers() {
    let mut h = Harness::new();
    let a = h.machine("acme", "loc-1", "SN-A").await;
    let b = h.machine("acme", "loc-1", "SN-B").await;
    h.ingest(
        T0,
        vec![
            event(&format!(r#"{{"machineId":"{a}","type":"heartbeat","timestamp":{T0},"payload":{{"temperature":4.0}}}}"#)),
            event(&format!(r#"{{"machineId":"{b}","type":"heartbeat","timestamp":{T0},"payload":{{"temperature":4.0}}}}"#)),
        ],
    );
    let rows = |b: &Json| -> Vec<String> {
        let mut out: Vec<String> = b["rows"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| format!("{}/{}", r["machine_id"], r["slot_number"]))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    let sql = |text: String| {
        let h = &h;
        async move {
            let (s, b) = h.post("/sql", &h.admin, json!({"sql": text})).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b
        }
    };
    let all = rows(&sql("SELECT machine_id, slot_number FROM inventory".into()).await);
    let of_a: Vec<String> = all.iter().filter(|r| r.contains(&a)).cloned().collect();
    assert!(!of_a.is_empty() && of_a.len() < all.len(), "{all:?}");
    for text in [
        format!("SELECT machine_id, slot_number FROM inventory WHERE machine_id = '{a}'"),
        format!("SELECT machine_id, slot_number FROM inventory WHERE '{a}' = machine_id"),
        format!(
            "SELECT i.machine_id, i.slot_number FROM inventory i JOIN liveness l \
             ON l.machine_id = i.machine_id WHERE l.machine_id = '{a}'"
        ),
    ] {
        assert_eq!(rows(&sql(text.clone()).await), of_a, "{text}");
    }
    let none =
        sql("SELECT machine_id, slot_number FROM inventory WHERE machine_id = 'nope'".into()).await;
    assert!(rows(&none).is_empty());
    let either = sql(format!(
        "SELECT machine_id, slot_number FROM inventory WHERE machine_id = '{a}' OR machine_id = '{b}'"
    ))
    .await;
    assert_eq!(rows(&either), all);
}
