//! The API fuzzer: generated requests for every served kind sent through the in-process
//! router, each answer checked against the oracles (no panic, no 5xx but a bounded timeout,
//! a Status for every error, an answer within a deadline, nothing stored by an error or a dry
//! run, bounded answers and memory). One seeded RNG drives a run: a failure prints the seed and
//! the whole request, which reproduces it alone; the seed replays the run, as far as the server
//! answers alike (what it answered feeds later inputs, so a timing-dependent answer can make a
//! replay diverge).

pub mod protobuf;
pub mod requests;
pub mod templates;
pub mod values;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use skiff_control::apiserver::auth::rbac::{aggregation, bootstrap};
use skiff_control::apiserver::{app, ApiState};
use skiff_control::store::RedbStore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use requests::{Category, Input, Kind, Known, World};
use values::Gen;

pub const TOKEN: &str = "fuzz-token";

/// Every answer must come within this, or the server hangs.
const DEADLINE: Duration = Duration::from_secs(10);
/// The largest answer: a list of every object the run can have made (a few hundred objects of
/// at most 1.5 MiB... in practice far less) stays under it.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// How long a watch is read before it is dropped, when its timeout is not the point.
const WATCH_READ: Duration = Duration::from_millis(50);
/// A fresh server after this many inputs, so the store stays small and a long run does not
/// slow down (the seed still replays the whole run).
const INPUTS_PER_SERVER: u64 = 3000;

/// A fuzzing run's settings, from the environment.
pub struct Settings {
    pub seed: u64,
    pub duration: Duration,
    /// Stop after this many inputs (to replay a failure up to its input).
    pub max_inputs: Option<u64>,
    /// The resident set the test process must stay under.
    pub max_rss: u64,
    /// Print every input and its answer (`SKIFF_FUZZ_TRACE=1`).
    pub trace: bool,
}

impl Settings {
    pub fn from_env(default_seconds: u64) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seed = var("SKIFF_FUZZ_SEED").map_or_else(
            || {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            },
            |s| s.parse().expect("SKIFF_FUZZ_SEED is a u64"),
        );
        let seconds = var("SKIFF_FUZZ_SECONDS").map_or(default_seconds, |s| {
            s.parse().expect("SKIFF_FUZZ_SECONDS is seconds")
        });
        let max_rss_mib: u64 = var("SKIFF_FUZZ_MAX_RSS_MIB")
            .map_or(1024, |s| s.parse().expect("SKIFF_FUZZ_MAX_RSS_MIB is MiB"));
        Self {
            seed,
            duration: Duration::from_secs(seconds),
            max_inputs: var("SKIFF_FUZZ_INPUTS")
                .map(|s| s.parse().expect("SKIFF_FUZZ_INPUTS is a count")),
            max_rss: max_rss_mib * 1024 * 1024,
            trace: var("SKIFF_FUZZ_TRACE").is_some(),
        }
    }
}

/// A server for the fuzzer: redb in a tempdir, the bootstrap RBAC policy, no controllers and
/// no background writers, so the store's revision moves only when a request writes.
pub struct Server {
    pub router: Router,
    pub state: Arc<ApiState>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&dir.path().join("store.redb")).expect("store");
        let (state, _queue) =
            ApiState::new(Arc::new(store), TOKEN.into(), CancellationToken::new());
        state.ensure_system_namespaces().await.expect("namespaces");
        state.admission.disable("ServiceAccount").expect("plugin");
        bootstrap::ensure(&state).await.expect("rbac");
        aggregation::aggregate(&state).await.expect("aggregation");
        Self {
            router: app(state.clone()),
            state,
            _dir: dir,
        }
    }
}

/// What the server answered.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Why an answer fails the oracles.
pub type Failure = String;

/// The HTTP request of `input`, or why no client could send it (a URI over 64 KiB).
pub fn request(input: &Input) -> Result<Request<Body>, http::Error> {
    let mut req = Request::builder()
        .method(input.method.clone())
        .uri(&input.uri);
    for (k, v) in &input.headers {
        req = req.header(k, v);
    }
    req.body(Body::from(input.body.clone()))
}

/// Sends `input` and reads its answer within the deadline.
pub async fn send(router: &Router, input: &Input) -> Result<Answer, Failure> {
    let req = request(input).map_err(|e| format!("unsendable: {e}"))?;
    let started = Instant::now();
    let response = tokio::time::timeout(DEADLINE, router.clone().oneshot(req))
        .await
        .map_err(|_| format!("no answer within {DEADLINE:?}"))?
        .unwrap_or_else(|never| match never {});
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    // A watch that answers 200 streams: read it for a moment, or to its end when its
    // timeoutSeconds is what is tested.
    let watch_budget = match input.watch_ends_within {
        Some(s) if status == StatusCode::OK => Some(if s > 0 {
            Duration::from_secs(s) + DEADLINE
        } else {
            WATCH_READ
        }),
        _ => None,
    };
    let until = started + watch_budget.unwrap_or(DEADLINE);
    loop {
        let frame = match tokio::time::timeout_at(until.into(), body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => return Err(format!("the body broke off: {e}")),
            Ok(None) => break,
            Err(_) if watch_budget == Some(WATCH_READ) => break,
            Err(_) if watch_budget.is_some() => {
                return Err("the watch outlived its timeoutSeconds".into())
            }
            Err(_) => return Err(format!("the body did not end within {DEADLINE:?}")),
        };
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() > MAX_RESPONSE_BYTES {
                return Err(format!("an answer over {MAX_RESPONSE_BYTES} bytes"));
            }
        }
    }
    Ok(Answer {
        status,
        content_type,
        body: bytes,
    })
}

/// The oracles on one answer; `before`/`after` are the store's revisions around it.
pub fn check(input: &Input, answer: &Answer, before: u64, after: u64) -> Result<(), Failure> {
    let code = answer.status.as_u16();
    if code >= 500 && code != 504 {
        return Err(format!("{code} answer"));
    }
    let head = input.method == Method::HEAD;
    if code >= 400 && !head {
        let status: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| format!("{code} answer whose body is not a Status"))?;
        if status["kind"] != "Status" || status["code"] != code {
            return Err(format!(
                "{code} answer whose body is not a Status with that code"
            ));
        }
    }
    if code >= 400 && code != 504 && after != before {
        return Err(format!(
            "{code} answer, yet the store's revision moved from {before} to {after}"
        ));
    }
    if input.dry_run && code < 300 && after != before {
        return Err(format!(
            "a dry run ({code}) moved the store's revision from {before} to {after}"
        ));
    }
    if code < 300
        && answer.content_type.split(';').next().map(str::trim) == Some("application/json")
        && input.watch_ends_within.is_none()
        && !head
        && serde_json::from_slice::<serde::de::IgnoredAny>(&answer.body).is_err()
    {
        return Err(format!("{code} answer whose JSON body does not parse"));
    }
    if code == 200 && input.watch_ends_within.is_some() {
        check_watch_events(&answer.body)?;
    }
    Ok(())
}

/// Every complete line of a watch stream is an event: a known type and an object, an ERROR's
/// object a Status.
fn check_watch_events(stream: &[u8]) -> Result<(), Failure> {
    // The last line may be cut off where the fuzzer stopped reading.
    let complete = stream
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&[][..], |end| &stream[..end]);
    for line in complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let event: Value = serde_json::from_slice(line).map_err(|e| {
            format!(
                "a watch event that does not parse ({e}): {}",
                String::from_utf8_lossy(&line[..line.len().min(300)])
            )
        })?;
        let kind = event["type"].as_str().unwrap_or_default();
        let well_formed = match kind {
            "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" => event["object"].is_object(),
            "ERROR" => event["object"]["kind"] == "Status",
            _ => false,
        };
        if !well_formed {
            return Err(format!(
                "a malformed watch event: {}",
                String::from_utf8_lossy(&line[..line.len().min(300)])
            ));
        }
    }
    Ok(())
}

/// The resident set of this process, in bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The message of the last panic in this process (the server catches panics per request; the
/// hook keeps what they said for the failure report).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn record_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(format!("{message} at {location}"));
        previous(info);
    }));
}

/// Waits until every write queued in the store is committed: the store commits writes in
/// the order they were queued, so once a write queued now is answered (a delete of a key no
/// kind uses, refused as missing, which stores nothing) the earlier ones are in.
async fn settle(server: &Server) {
    let _ = server.state.store.delete("/fuzz-settle", None).await;
}

/// The learnt world of a fresh server.
async fn world_of(server: &Server) -> World {
    let mut kinds: Vec<Kind> = server
        .state
        .registry
        .all()
        .iter()
        .map(|d| Kind {
            group: d.group.clone(),
            version: d.version.clone(),
            plural: d.plural.clone(),
            kind: d.kind.clone(),
            namespaced: d.namespaced,
        })
        .collect();
    kinds.sort_by(|a, b| (&a.group, &a.plural).cmp(&(&b.group, &b.plural)));
    let mut world = World {
        kinds,
        namespaces: vec!["default".into(), "kube-system".into(), "fz-ns".into()],
        ..World::default()
    };
    let ns = server
        .state
        .registry
        .find("", "v1", "namespaces")
        .expect("namespaces are served");
    server
        .state
        .create(
            &ns,
            None,
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fz-ns"}}),
            &Default::default(),
        )
        .await
        .expect("the fuzzer's namespace");
    world.revision = server.state.store.revision();
    world
}

/// Learns from a successful answer: objects created or updated, continue tokens, deletions.
fn learn(g: &mut Gen, world: &mut World, input: &Input, answer: &Answer) {
    let Some((kind, ns, name)) = &input.target else {
        return;
    };
    // Gone (deleted, or its namespace was): forget it, so patches go to objects that exist.
    if answer.status == StatusCode::NOT_FOUND {
        let status = serde_json::from_slice::<Value>(&answer.body).unwrap_or_default();
        if let Some(name) = name.as_deref().filter(|n| status["details"]["name"] == *n) {
            world.forget(*kind, ns, name);
        }
    }
    if !answer.status.is_success() || input.watch_ends_within.is_some() {
        return;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&answer.body) else {
        return;
    };
    if let Some(token) = body.pointer("/metadata/continue").and_then(Value::as_str) {
        world.token(g, token.to_owned());
    }
    if input.dry_run {
        return;
    }
    let Some(name) = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| name.clone())
    else {
        return;
    };
    let namespace = body
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(ns)
        .to_owned();
    // Reviews answer with their kind too, but store nothing: no resourceVersion.
    let is_object = body["kind"] == world.kinds[*kind].kind.as_str()
        && body.pointer("/metadata/resourceVersion").is_some();
    match input.method {
        Method::DELETE if answer.status == StatusCode::OK => world.forget(*kind, &namespace, &name),
        Method::POST | Method::PUT | Method::PATCH if is_object => world.remember(
            g,
            Known {
                kind: *kind,
                namespace,
                name,
                object: body,
            },
        ),
        _ => {}
    }
}

/// What a run did.
#[derive(Default)]
pub struct Report {
    pub inputs: u64,
    pub per_category: BTreeMap<Category, u64>,
    pub per_status: BTreeMap<u16, u64>,
    pub failures: Vec<String>,
    pub peak_rss: u64,
    pub servers: u64,
    /// Generated inputs no client can send (URIs over 64 KiB), not counted as inputs.
    pub unsendable: u64,
    /// The slowest answer (watches aside) and its input.
    pub slowest: (Duration, String),
    pub elapsed: Duration,
}

impl Report {
    pub fn print(&self, seed: u64) {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        println!(
            "fuzz: seed {seed}: {} inputs in {:.0} s ({:.0}/s) on {} fresh servers, peak RSS {} MiB",
            self.inputs,
            secs,
            self.inputs as f64 / secs,
            self.servers,
            self.peak_rss / (1024 * 1024)
        );
        for (c, n) in &self.per_category {
            println!("fuzz:   {:<16} {n}", format!("{c:?}"));
        }
        let statuses: Vec<String> = self
            .per_status
            .iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect();
        println!("fuzz:   answers by status {}", statuses.join(" "));
        println!(
            "fuzz:   ({} generated inputs no HTTP client can send were skipped)",
            self.unsendable
        );
        println!(
            "fuzz:   slowest answer {:?}: {}",
            self.slowest.0, self.slowest.1
        );
        println!("fuzz: {} failures", self.failures.len());
    }
}

/// The most distinct failures a run collects before it stops.
const MAX_FAILURES: usize = 20;

/// Runs the fuzzer with `settings`.
pub async fn run(settings: &Settings) -> Report {
    record_panics();
    let mut g = Gen::new(settings.seed);
    let mut report = Report::default();
    let mut seen = std::collections::HashSet::new();
    let started = Instant::now();
    let mut server = Server::start().await;
    let mut world = world_of(&server).await;
    report.servers = 1;
    loop {
        if started.elapsed() >= settings.duration
            || settings.max_inputs.is_some_and(|m| report.inputs >= m)
            || report.failures.len() >= MAX_FAILURES
        {
            break;
        }
        if report.inputs > 0 && report.inputs % INPUTS_PER_SERVER == 0 {
            drop(server);
            server = Server::start().await;
            world = world_of(&server).await;
            report.servers += 1;
        }
        let category = *g.pick(&Category::ALL);
        let input = requests::generate(&mut g, &world, category);
        if request(&input).is_err() {
            // hyper refuses such a request before any router sees it.
            report.unsendable += 1;
            continue;
        }
        let index = report.inputs;
        report.inputs += 1;
        *report.per_category.entry(category).or_default() += 1;
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let before = server.state.store.revision();
        let sent = Instant::now();
        let outcome = send(&server.router, &input).await;
        let took = sent.elapsed();
        if took > report.slowest.0 && input.watch_ends_within.is_none() {
            report.slowest = (
                took,
                format!(
                    "{:?} {} {}",
                    category,
                    input.method,
                    input.uri.chars().take(200).collect::<String>()
                ),
            );
        }
        let after = server.state.store.revision();
        let outcome = outcome.and_then(|answer| {
            check(&input, &answer, before, after)?;
            Ok(answer)
        });
        if !matches!(&outcome, Ok(a) if a.status != StatusCode::GATEWAY_TIMEOUT) {
            // A request answered 504 (or not at all) may still have a write queued in the
            // store, as in Kubernetes, where a timeout does not cancel the etcd write: let it
            // land now rather than during the next input.
            settle(&server).await;
        }
        match outcome {
            Ok(answer) => {
                if settings.trace {
                    let message = serde_json::from_slice::<Value>(&answer.body)
                        .ok()
                        .and_then(|v| v["message"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    println!(
                        "fuzz: #{index} {category:?} {:?} {} {} -> {} {}",
                        took,
                        input.method,
                        input.uri.chars().take(160).collect::<String>(),
                        answer.status.as_u16(),
                        message.chars().take(200).collect::<String>()
                    );
                }
                *report.per_status.entry(answer.status.as_u16()).or_default() += 1;
                world.revision = after;
                learn(&mut g, &mut world, &input, &answer);
            }
            Err(failure) => {
                let panic = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
                let key = format!("{category:?} {failure} {panic:?}");
                let key: String = key.chars().filter(|c| !c.is_ascii_digit()).collect();
                if seen.insert(key) {
                    let answer = match send(&server.router, &input).await {
                        Ok(a) => format!(
                            "{} {}",
                            a.status,
                            String::from_utf8_lossy(&a.body[..a.body.len().min(2000)])
                        ),
                        Err(e) => e,
                    };
                    let text = format!(
                        "FUZZ FAILURE (seed {}, input #{index}): {failure}\n{input}\n  panic: {}\n  answer when sent again: {answer}\n  replay: SKIFF_FUZZ_SEED={} SKIFF_FUZZ_INPUTS={} cargo test -p skiff-control --test fuzz_api -- --nocapture",
                        settings.seed,
                        panic.as_deref().unwrap_or("none"),
                        settings.seed,
                        index + 1,
                    );
                    println!("{text}");
                    report.failures.push(text);
                }
                world.revision = server.state.store.revision();
            }
        }
        if index % 100 == 0 {
            let rss = rss();
            report.peak_rss = report.peak_rss.max(rss);
            if rss > settings.max_rss {
                report.failures.push(format!(
                    "FUZZ FAILURE (seed {}, input #{index}): resident set {} MiB over the bound {} MiB",
                    settings.seed,
                    rss / (1024 * 1024),
                    settings.max_rss / (1024 * 1024)
                ));
                break;
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}
