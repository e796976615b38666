//! `cargo xtask bench api --kind crd`: custom resources against ConfigMaps of the same size,
//! side by side on one server in one run (issue: creating and listing 10 000 custom
//! resources within 1.5x of the same for ConfigMaps). Both kinds get the same number of
//! objects, the same payload (a few string fields totalling about 1 KiB), the same
//! concurrency; the custom resource's schema declares every field (pruning, defaulting and
//! validation all run). Results go between the `bench:api-crd` markers of docs/benchmarks.md.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bench_api::{client, start_server_with, started, stats, timed, until_ok, Stats};

const START: &str = "<!-- bench:api-crd:start -->";
const END: &str = "<!-- bench:api-crd:end -->";

/// The same payload for both kinds: four strings of 250 bytes.
fn payload(i: usize) -> Value {
    let field = |n: usize| format!("{i:08}-{n}-{}", "x".repeat(240));
    json!({"a": field(0), "b": field(1), "c": field(2), "d": field(3)})
}

fn config_map(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": "bench"}},
        "data": payload(i)})
}

fn widget(i: usize) -> Value {
    json!({"apiVersion": "bench.example.com/v1", "kind": "Widget",
        "metadata": {"name": format!("bench-{i:05}"), "labels": {"app": "bench"}},
        "spec": payload(i)})
}

fn definition() -> Value {
    let string = json!({"type": "string", "maxLength": 1024});
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.bench.example.com"},
        "spec": {"group": "bench.example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object", "required": ["a"],
                    "properties": {"a": string, "b": string, "c": string, "d": string,
                        "e": {"type": "string", "default": "e"}}}}}}}]}})
}

/// What one kind measured.
struct Measured {
    rate: f64,
    create: Stats,
    list: Stats,
    list_bytes: usize,
}

async fn measure_kind(
    api: &reqwest::Client,
    url: &str,
    n: usize,
    concurrency: usize,
    object: fn(usize) -> Value,
) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (api, url, next) = (api.clone(), url.to_owned(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(samples);
                }
                samples.push(timed(api.post(&url).json(&object(i))).await?.0);
            }
        }));
    }
    let mut creates: Vec<Duration> = Vec::new();
    for w in workers {
        creates.extend(w.await??);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let mut lists = Vec::new();
    let mut list_bytes = 0;
    for _ in 0..20 {
        let (d, bytes) = timed(api.get(url)).await?;
        lists.push(d);
        list_bytes = bytes;
    }
    Ok(Measured {
        rate,
        create: stats(&mut creates),
        list: stats(&mut lists),
        list_bytes,
    })
}

/// Runs the comparison; returns the report section.
pub async fn measure(n: usize, concurrency: usize) -> anyhow::Result<String> {
    let server = start_server_with(&["--no-controllers"])?;
    started(&server).await?;
    let token = std::fs::read_to_string(server.dir.join("pki/admin.token"))?
        .trim()
        .to_owned();
    let api = client(&server.dir, Some(&token))?;
    let base = server.url.clone();
    timed(
        api.post(format!("{base}/api/v1/namespaces"))
            .json(&json!({"metadata": {"name": "bench"}})),
    )
    .await?;
    timed(
        api.post(format!(
            "{base}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        ))
        .json(&definition()),
    )
    .await?;
    let widgets = format!("{base}/apis/bench.example.com/v1/namespaces/bench/widgets");
    until_ok(&api, &widgets, "the Widget resource").await?;
    let maps = format!("{base}/api/v1/namespaces/bench/configmaps");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // ConfigMaps first, then the custom resources: the same server, the same store growing.
    let cm = measure_kind(&api, &maps, n, concurrency, config_map).await?;
    let cr = measure_kind(&api, &widgets, n, concurrency, widget).await?;
    let ratio = |a: f64, b: f64| a / b;
    let verdict = |r: f64| if r <= 1.5 { "met" } else { "missed" };
    let create_ratio = ratio(cm.rate, cr.rate);
    let list_ratio = ratio(cr.list.p50, cm.list.p50);
    Ok(format!(
        "Custom resources against ConfigMaps of the same payload (`cargo xtask bench api --kind crd`, \
{n} objects of each kind, {concurrency} concurrent creators, release build, TLS over loopback, \
controllers off; load average at the start: {load}).\n\n\
| | ConfigMaps | Widgets (custom resource) | ratio (Widgets / ConfigMaps) | target |\n\
|---|---:|---:|---:|---|\n\
| creates per second | {cm_rate:.0} | {cr_rate:.0} | {create_ratio:.2}x slower | <= 1.5x ({v_create}) |\n\
| create p50 / p99 | {cm_c50:.2} / {cm_c99:.2} ms | {cr_c50:.2} / {cr_c99:.2} ms | {c99r:.2}x (p99) | |\n\
| list all ({cm_mb:.1} / {cr_mb:.1} MB) p50 / p99 | {cm_l50:.1} / {cm_l99:.1} ms | {cr_l50:.1} / {cr_l99:.1} ms | {list_ratio:.2}x (p50) | <= 1.5x ({v_list}) |\n",
        load = load.trim(),
        cm_rate = cm.rate,
        cr_rate = cr.rate,
        v_create = verdict(create_ratio),
        cm_c50 = cm.create.p50,
        cm_c99 = cm.create.p99,
        cr_c50 = cr.create.p50,
        cr_c99 = cr.create.p99,
        c99r = cr.create.p99 / cm.create.p99,
        cm_mb = cm.list_bytes as f64 / 1e6,
        cr_mb = cr.list_bytes as f64 / 1e6,
        cm_l50 = cm.list.p50,
        cm_l99 = cm.list.p99,
        cr_l50 = cr.list.p50,
        cr_l99 = cr.list.p99,
        v_list = verdict(list_ratio),
    ))
}

/// Writes `section` between this benchmark's markers.
pub fn write_report(path: &std::path::Path, section: &str) -> anyhow::Result<()> {
    crate::bench_api::write_section(path, START, END, section)
}
