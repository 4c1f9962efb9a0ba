//! The options of `vendflow run` and `vendflow demo`, declared beside the service they start:
//! each turns into a [`ServiceConfig`] and a [`Source`], and the two commands differ only there.

use std::path::PathBuf;
use std::time::Duration;

use vendflow_dataflows::Config;
use vendflow_sinks::archive::ArchiveConfig;

use vendflow_ingest::kafka::TELEMETRY_TOPIC;

use vendflow_ingest::server::Listen;

use super::{Access, Running, ServiceConfig, ServiceError, Simulation, Source};

/// TLS and the API's rate limit, for both commands.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeOptions {
    /// Serve --http as HTTPS and --pg with TLS with this certificate chain (PEM). Logins over
    /// the Postgres protocol then need TLS (`sslmode=require`; psql's default `prefer` uses it),
    /// so tokens never cross the network in clear.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Requests per second one token may make to the HTTP API (bursts of twice as many); past
    /// it, 429 with Retry-After.
    #[arg(long, default_value_t = crate::api::limits::Rate::PER_SECOND)]
    pub api_rate: u32,
}

impl ServeOptions {
    /// (certificate, key) when given.
    pub fn tls_files(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_cert.clone().zip(self.tls_key.clone())
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// The Parquet archive of a running service.
#[derive(clap::Args, Clone, Debug)]
pub struct ArchiveOptions {
    /// Write the Parquet archive into this directory: raw events and rejected records by event
    /// date and hour, snapshots of every view, and the closed days of the revenue and window
    /// views; SQL then also has `events`, `rejected` and `<view>_history` (the demo defaults to
    /// a new temporary directory).
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Seconds between archive flushes (each writes one file per hour partition it touches).
    #[arg(long, default_value_t = 10.0)]
    pub archive_flush_secs: f64,
    /// Seconds between snapshots of the views into the archive (and history updates).
    #[arg(long, default_value_t = 60.0)]
    pub archive_snapshot_secs: f64,
    /// Compact an hour partition once it holds this many files.
    #[arg(long, default_value_t = 16)]
    pub archive_compact_files: usize,
    /// Days of raw events and rejected records kept.
    #[arg(long, default_value_t = 90)]
    pub raw_retention_days: i64,
    /// Days of per-day history kept.
    #[arg(long, default_value_t = 730)]
    pub history_retention_days: i64,
}

impl ArchiveOptions {
    /// The archive's settings, at `root` or --archive (None: no archive).
    pub fn config(&self, root: Option<PathBuf>, engine: &Config) -> Option<ArchiveConfig> {
        let root = root.or_else(|| self.archive.clone())?;
        Some(ArchiveConfig {
            flush_every: Duration::from_secs_f64(self.archive_flush_secs.max(0.05)),
            compact_min_files: self.archive_compact_files,
            raw_retention_days: self.raw_retention_days,
            history_retention_days: self.history_retention_days,
            ..ArchiveConfig::new(&root, engine)
        })
    }

    pub fn snapshot_every(&self) -> Duration {
        Duration::from_secs_f64(self.archive_snapshot_secs.max(0.1))
    }
}

/// Restock routes, for both commands.
#[derive(clap::Args, Clone, Debug)]
pub struct RouteOptions {
    /// Restock crews in the whole fleet, shared among the regions by how many machines each
    /// needs visited. Each region's crews start and end at its depot: its location of type
    /// `warehouse` (without one, the middle of its machines).
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    pub crews: usize,
    /// The most machines one crew restocks in a shift.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    pub stops_per_crew: usize,
    /// The hour (UTC, 0 to 23) the crews' shift starts.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..24))]
    pub shift_start_hour: u32,
    /// Hours from leaving the depot to being back.
    #[arg(long, default_value_t = 8.0, value_parser = shift_hours)]
    pub shift_hours: f64,
    /// Seconds between restock plans (`restock_routes`, `GET /api/routes`): before the shift
    /// each plan is made afresh, during it the crews' routes are re-planned around what they
    /// have done. 0 turns the planner off.
    #[arg(long, default_value_t = 300.0)]
    pub replan_secs: f64,
    /// Seconds the routing solver may take for the whole fleet (more: shorter routes).
    #[arg(long, default_value_t = 30)]
    pub routing_secs: usize,
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of 1 or more")),
    }
}

fn shift_hours(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(h) if h > 0.0 && h <= 24.0 => Ok(h),
        _ => Err(format!(
            "{text:?}: a shift lasts more than 0 and at most 24 hours"
        )),
    }
}

impl RouteOptions {
    /// The planner's settings (None with --replan-secs 0).
    pub fn config(&self) -> Option<super::planner::RouteConfig> {
        (self.replan_secs > 0.0).then(|| super::planner::RouteConfig {
            options: vendflow_routes::Options {
                crews: self.crews,
                stops_per_crew: self.stops_per_crew,
                shift_minutes: (self.shift_hours * 60.0).round().max(1.0) as u32,
                time_limit_secs: self.routing_secs.max(1),
                ..vendflow_routes::Options::default()
            },
            shift_start_hour: self.shift_start_hour,
            every: Duration::from_secs_f64(self.replan_secs.max(1.0)),
        })
    }
}

/// `vendflow run`: the dataflows on the Kafka log.
#[derive(clap::Args, Clone, Debug)]
pub struct RunOptions {
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub kafka: String,
    /// Write every view as CSV (and status.json) into this directory at each summary.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Write only the status (frontier, lagMs, consumed offsets) as JSON to this file at
    /// each summary.
    #[arg(long)]
    pub status: Option<PathBuf>,
    /// Serve the views over HTTP on this address: `GET /views`, `/views/<name>`, live changes
    /// as Server-Sent Events at `/views/<name>/subscribe`, and SQL at `POST /sql`.
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
    /// Serve SQL over the Postgres wire protocol on this address (`psql -h HOST -p PORT`).
    #[arg(long)]
    pub pg: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub serve: ServeOptions,
    /// Tokens file (`vendflow token create`): every HTTP request but /health, /metrics and
    /// /api/openapi.json needs one of its tokens.
    #[arg(long, required_unless_present = "insecure_open_api")]
    pub tokens: Option<PathBuf>,
    /// Serve HTTP without access control (trusted networks and tests only).
    #[arg(long)]
    pub insecure_open_api: bool,
    /// Machine credentials file: `POST /api/machines` stores each new machine's public key
    /// here (the file the bridge's --credentials reads).
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    #[command(flatten)]
    pub archive: ArchiveOptions,
    #[command(flatten)]
    pub routes: RouteOptions,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 2.0)]
    pub every: f64,
    /// Partitions of `machine-telemetry` if it has to be created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Granularity of the ingestion clock in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub tick_ms: i64,
    /// Keep the engine's state in this directory: a checkpoint (every view and operator's state
    /// with the Kafka offsets that produced it) every --checkpoint-secs, and at start the newest
    /// whole one is loaded and each partition continues from its offset instead of from the
    /// log's beginning. Without it, every start re-reads the whole log. In a cluster give every
    /// process its own directory: they checkpoint at one frontier and, at start, agree on the
    /// newest one they all have.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Seconds between checkpoints (with --state). A restart re-reads at most about this much
    /// of the log; the log's retention must be longer.
    #[arg(long, default_value_t = 60.0, requires = "state")]
    pub checkpoint_secs: f64,
    /// Run as one of this many processes of a timely cluster (each with --workers threads):
    /// the partitions of `machine-telemetry` are spread over every worker of every process,
    /// and the views are gathered on process 0, which serves them (--http, --pg, --out).
    /// Every process is started with the same --processes and --peers, and its own --process;
    /// each keeps its own --state and --archive (its own partitions).
    #[arg(long, default_value_t = 1, requires = "process")]
    pub processes: usize,
    /// This process's index in the cluster, 0 to --processes - 1.
    #[arg(long)]
    pub process: Option<usize>,
    /// Every process's HOST:PORT for the cluster's own connections, in process order,
    /// comma-separated (or --hostfile).
    #[arg(long, value_delimiter = ',', conflicts_with = "hostfile")]
    pub peers: Vec<String>,
    /// A file with one HOST:PORT per line, in process order (timely's hostfile).
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,
}

impl RunOptions {
    /// The cluster this process is part of (--processes, --process, --peers or --hostfile);
    /// None alone.
    pub fn cluster(&self) -> Result<Option<vendflow_dataflows::config::Cluster>, ServiceError> {
        let Some(process) = self.process.filter(|_| self.processes > 1) else {
            return Ok(None);
        };
        let addresses: Vec<String> = match &self.hostfile {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| ServiceError::Io {
                    what: format!("cannot read the hostfile {}", path.display()),
                    source,
                })?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
            None => self.peers.iter().map(|p| p.trim().to_owned()).collect(),
        };
        if addresses.len() != self.processes {
            return Err(ServiceError::Config(format!(
                "--processes {} needs one address per process (--peers or --hostfile), got {}",
                self.processes,
                addresses.len()
            )));
        }
        if process >= self.processes {
            return Err(ServiceError::Config(format!(
                "--process {process} is not one of 0..{}",
                self.processes
            )));
        }
        Ok(Some(vendflow_dataflows::config::Cluster {
            process,
            addresses,
        }))
    }

    /// The service and its Kafka source. Without --tokens (clap requires
    /// --insecure-open-api then) anyone who reaches the ports may use them.
    pub fn service(&self, engine: Config) -> (ServiceConfig, Source) {
        let service = ServiceConfig {
            http: self.http.map(Listen::from),
            pg: self.pg.map(Listen::from),
            tls: self.serve.tls_files(),
            api_rate: self.serve.api_rate,
            access: self.tokens.clone().map_or(Access::Open, Access::Tokens),
            credentials: self.credentials.clone(),
            archive: self.archive.config(None, &engine),
            snapshot_every: self.archive.snapshot_every(),
            summary_every: Duration::from_secs_f64(self.every.max(0.1)),
            out: self.out.clone(),
            status: self.status.clone(),
            checkpoints: self
                .state
                .clone()
                .map(|dir| super::checkpoints::CheckpointConfig {
                    dir,
                    every: Duration::from_secs_f64(self.checkpoint_secs.max(0.1)),
                }),
            routes: self.routes.config(),
            ..ServiceConfig::new(engine)
        };
        let source = Source::Kafka {
            brokers: self.kafka.clone(),
            partitions: self.partitions,
            tick_ms: self.tick_ms,
        };
        (service, source)
    }

    /// What `vendflow run` tells its operator once started (stderr): where the API, the views,
    /// SQL and the archive are, and a warning for each open port when the API is open.
    pub fn banner(&self, running: &Running) -> Vec<String> {
        let open = self.tokens.is_none();
        let scheme = self.serve.scheme();
        let mut lines = Vec::new();
        if let Some(addr) = running.http_addr() {
            if open {
                lines.push(format!("run: WARNING: --insecure-open-api: anyone who reaches {addr} can read and change the fleet"));
            }
            lines.push(format!("run: REST API on {scheme}://{addr}/api (see /api/openapi.json), views on {scheme}://{addr}/views, SQL at POST {scheme}://{addr}/sql"));
        }
        if let Some(addr) = running.pg_addr() {
            if open {
                lines.push(format!("run: WARNING: --insecure-open-api: anyone who reaches {addr} can query every view"));
            }
            lines.push(format!(
                "run: SQL over the Postgres protocol: PGPASSWORD=<token> psql -h {} -p {} -U vendflow",
                addr.ip(),
                addr.port()
            ));
        }
        if let Some(root) = running.archive_root() {
            lines.push(format!("run: archiving to {}", root.display()));
        }
        if let (Some(dir), Some(c)) = (&self.state, running.checkpoints()) {
            lines.push(match c.restored() {
                Some(r) => format!(
                    "run: started from checkpoint {} (frontier {}, offsets {}); a checkpoint every {} s into {}",
                    r.path.display(),
                    r.frontier,
                    r.positions,
                    self.checkpoint_secs,
                    dir.display()
                ),
                None => format!(
                    "run: no checkpoint in {}: reading the log from its beginning; a checkpoint every {} s",
                    dir.display(),
                    self.checkpoint_secs
                ),
            });
            let skipped = c
                .skipped_at_start
                .load(std::sync::atomic::Ordering::Relaxed);
            if skipped > 0 {
                lines.push(format!(
                    "run: WARNING: skipped {skipped} damaged checkpoint(s) in {} (see the log); used the one before",
                    dir.display()
                ));
            }
        }
        if let Some(process) = self.process.filter(|_| self.processes > 1) {
            lines.push(format!(
                "run: process {process} of a cluster of {}; the views are gathered on process 0{}",
                self.processes,
                if process == 0 { " (this one)" } else { "" }
            ));
        }
        lines.push(format!(
            "run: consuming {TELEMETRY_TOPIC} and fleet-commands from {}; Ctrl-C to stop",
            self.kafka
        ));
        lines
    }
}

/// `vendflow demo`: a simulated fleet through the whole service.
#[derive(clap::Args, Clone, Debug)]
pub struct DemoOptions {
    /// Simulated machines.
    #[arg(long, default_value_t = 1000)]
    pub machines: usize,
    /// Simulated seconds per wall-clock second.
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// Seed of the simulation (same seed, same fleet, same events).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Seconds between summaries.
    #[arg(long, default_value_t = 2.0)]
    pub every: f64,
    /// Stop after this many wall-clock seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Port of the embedded MQTT broker on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub mqtt_port: u16,
    /// Run the event simulator instead of the real controller. By default every simulated
    /// machine runs the real controller (`vendflow-controller`: the vend cycle, offline
    /// payments, the outbox that keeps each event until the platform's delivery receipt), as
    /// `publish` does: customers fill carts and pay, cards are declined, units
    /// jam and are refunded, and the fleet's faults (a failing compressor, a wearing motor,
    /// a failing card reader) show in the machines' readings. The demo's MQTT source sends the
    /// receipts once an envelope is in the engine's input. The event simulator emits events
    /// without a controller (and re-delivers buffers after outages, twice at times).
    #[arg(long)]
    pub event_simulator: bool,
    /// The default (the real controller on every machine); kept so that earlier command lines
    /// still run.
    #[arg(long, hide = true, conflicts_with = "event_simulator")]
    pub controllers: bool,
    /// HTTP address: the views, live subscriptions and `POST /sql`, and telemetry over HTTP
    /// (`POST /api/telemetry`, the simulated machines' credentials) into the embedded broker.
    /// If the port is taken, any free port is used and printed.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
    /// Postgres wire protocol address for SQL (`psql`); any free port if taken.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pub pg: std::net::SocketAddr,
    #[command(flatten)]
    pub serve: ServeOptions,
    #[command(flatten)]
    pub archive: ArchiveOptions,
    #[command(flatten)]
    pub routes: RouteOptions,
}

impl DemoOptions {
    /// The service and its simulated source. The archive defaults to a new directory in the
    /// system's temporary one, where the admin token's file goes too; a taken HTTP or Postgres
    /// port is replaced by any free one when the service binds it ([`DemoOptions::banner`]
    /// says which).
    pub fn service(&self, engine: Config) -> (ServiceConfig, Source) {
        let default_root =
            std::env::temp_dir().join(format!("vendflow-demo-{}", std::process::id()));
        let archive = self.archive.config(
            Some(self.archive.archive.clone().unwrap_or(default_root)),
            &engine,
        );
        let token_dir = archive
            .as_ref()
            .map(|a| a.root.clone())
            .unwrap_or_else(std::env::temp_dir);
        let service = ServiceConfig {
            http: Some(Listen::or_any_port(self.http)),
            pg: Some(Listen::or_any_port(self.pg)),
            tls: self.serve.tls_files(),
            api_rate: self.serve.api_rate,
            access: Access::TokensWithAdmin(token_dir.join("tokens.jsonl")),
            archive,
            snapshot_every: self.archive.snapshot_every(),
            summary_every: Duration::from_secs_f64(self.every.max(0.1)),
            routes: self.routes.config(),
            ..ServiceConfig::new(engine)
        };
        let source = Source::Simulated(Simulation {
            machines: self.machines,
            speed: self.speed,
            seed: self.seed,
            mqtt_port: self.mqtt_port,
            duration: self.duration.map(|d| Duration::from_secs_f64(d.max(0.0))),
            controllers: !self.event_simulator,
        });
        (service, source)
    }

    /// What `vendflow demo` prints once started: every endpoint, the admin token, and commands
    /// to try. An error if the demo came up without one of its endpoints.
    pub fn banner(&self, running: &Running) -> Result<Vec<String>, ServiceError> {
        let scheme = self.serve.scheme();
        let (Some(addr), Some(pg), Some(mqtt), Some(token)) = (
            running.http_addr(),
            running.pg_addr(),
            running.mqtt_addr(),
            running.admin_token(),
        ) else {
            return Err(ServiceError::Config(
                "the demo started without its HTTP, Postgres or MQTT endpoint".into(),
            ));
        };
        let from = running.simulated_from().unwrap_or_default();
        let mut lines: Vec<String> = [(self.http, addr), (self.pg, pg)]
            .into_iter()
            .filter(|(asked, got)| asked.port() != 0 && asked != got)
            .map(|(asked, got)| format!("{asked} is in use; using {got} instead"))
            .collect();
        lines.extend([
            format!(
                "{} simulated machines at {}x from {from}, publishing to the embedded MQTT broker on {mqtt} (Ctrl-C to stop)",
                self.machines, self.speed
            ),
            format!(
                "views on {scheme}://{addr}/views, live: {scheme}://{addr}/views/<name>/subscribe, SQL: POST {scheme}://{addr}/sql; telemetry over HTTP on {scheme}://{addr}/api/telemetry"
            ),
            format!(
                "REST API on {scheme}://{addr}/api (documented at {scheme}://{addr}/api/openapi.json); admin token (tenant *): {token}"
            ),
            format!("dashboard: {scheme}://{addr}/#token={token}"),
            format!(
                "try: curl -H 'Authorization: Bearer {token}' {scheme}://{addr}/api/dashboard/fleet"
            ),
            format!(
                "SQL for psql and BI tools (a token is the password): PGPASSWORD={token} psql -h {} -p {} -U vendflow -c 'SELECT * FROM revenue_by_location_day'",
                pg.ip(),
                pg.port()
            ),
        ]);
        if let Some(root) = running.archive_root() {
            lines.push(format!(
                "Parquet archive in {} (export: vendflow export --archive {} --from DAY --to DAY --out DIR)",
                root.display(),
                root.display()
            ));
        }
        Ok(lines
            .into_iter()
            .map(|l| format!("vendflow demo: {l}"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand)]
    enum Command {
        Run(RunOptions),
        Demo(DemoOptions),
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("vendflow").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn run_needs_tokens_or_an_explicitly_open_api() {
        assert!(parse(&["run", "--kafka", "k:9092"]).is_err());
        let Ok(Command::Run(open)) = parse(&["run", "--kafka", "k:9092", "--insecure-open-api"])
        else {
            panic!("run with an open API parses");
        };
        let (service, source) = open.service(Config::default());
        assert!(matches!(service.access, Access::Open));
        assert!(matches!(source, Source::Kafka { ref brokers, .. } if brokers == "k:9092"));
        let Ok(Command::Run(tokens)) = parse(&[
            "run",
            "--kafka",
            "k:9092",
            "--tokens",
            "t.jsonl",
            "--archive",
            "a",
        ]) else {
            panic!("run with tokens parses");
        };
        let (service, _) = tokens.service(Config::default());
        assert!(matches!(service.access, Access::Tokens(ref p) if p == &PathBuf::from("t.jsonl")));
        assert_eq!(service.archive.map(|a| a.root), Some(PathBuf::from("a")));
    }

    /// A demo's port that another process holds is replaced when the demo binds it (not by a
    /// check beforehand, which a second demo starting at the same moment could overtake); a
    /// `run`'s port never is.
    #[test]
    fn a_taken_demo_port_is_replaced_at_the_bind() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let Ok(Command::Demo(demo)) = parse(&[
            "demo",
            "--http",
            &addr.to_string(),
            "--pg",
            "127.0.0.1:0",
            "--archive",
            "demo-archive",
        ]) else {
            panic!("demo parses");
        };
        let (service, _) = demo.service(Config::default());
        let http = service.http.expect("http");
        assert_eq!(http, Listen::or_any_port(addr));
        let bound = http.bind().expect("any free port instead");
        assert_ne!(bound.local_addr().expect("addr"), addr);
        assert!(
            matches!(service.access, Access::TokensWithAdmin(ref p) if p == &PathBuf::from("demo-archive/tokens.jsonl"))
        );
        let Ok(Command::Run(run)) = parse(&[
            "run",
            "--kafka",
            "k:9092",
            "--insecure-open-api",
            "--http",
            &addr.to_string(),
        ]) else {
            panic!("run parses");
        };
        let (service, _) = run.service(Config::default());
        let http = service.http.expect("http");
        assert!(!http.any_port_if_taken);
        assert!(http.bind().is_err(), "a run's taken port is an error");
    }

    #[test]
    fn a_cluster_needs_one_address_per_process_and_a_process_among_them() {
        let run = |extra: &[&str]| {
            let mut args = vec!["run", "--kafka", "k:9092", "--insecure-open-api"];
            args.extend(extra);
            match parse(&args) {
                Ok(Command::Run(r)) => r.cluster().map_err(|e| e.to_string()),
                _ => Err("does not parse".into()),
            }
        };
        assert_eq!(run(&[]), Ok(None), "alone");
        let two = run(&["--processes", "2", "--process", "1", "--peers", "a:1,b:2"]);
        assert_eq!(
            two,
            Ok(Some(vendflow_dataflows::config::Cluster {
                process: 1,
                addresses: vec!["a:1".into(), "b:2".into()],
            }))
        );
        let short = run(&["--processes", "3", "--process", "0", "--peers", "a:1,b:2"]);
        assert!(short.is_err_and(|e| e.contains("one address per process")));
        let outside = run(&["--processes", "2", "--process", "2", "--peers", "a:1,b:2"]);
        assert!(outside.is_err_and(|e| e.contains("--process 2")));
        assert!(
            parse(&[
                "run",
                "--kafka",
                "k",
                "--insecure-open-api",
                "--processes",
                "2"
            ])
            .is_err(),
            "--processes needs --process"
        );
        let dir = tempfile::tempdir().expect("dir");
        let hostfile = dir.path().join("hosts");
        std::fs::write(&hostfile, "# the cluster\nh0:2101\n\nh1:2101\n").expect("write");
        let hosts = hostfile.display().to_string();
        let from_file = run(&["--processes", "2", "--process", "0", "--hostfile", &hosts]);
        assert_eq!(
            from_file.map(|c| c.map(|c| c.addresses)),
            Ok(Some(vec!["h0:2101".into(), "h1:2101".into()]))
        );
    }
}
