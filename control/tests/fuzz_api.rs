//! Structured fuzzing of the API through the in-process router (issue 14): generated paths,
//! query strings, JSON/YAML/protobuf bodies and patches of all three types for every served
//! kind, each answer checked against the oracles in `fuzz/mod.rs`.
//!
//! CI runs it for `SKIFF_FUZZ_SECONDS` (default 60); `cargo xtask fuzz --minutes N [--seed S]`
//! runs it longer. A failure prints its seed and input; `SKIFF_FUZZ_SEED=S SKIFF_FUZZ_INPUTS=N`
//! replays the run up to it.

mod fuzz;

/// The CI budget: about a minute (the whole component tier grows by about that much).
const DEFAULT_SECONDS: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_hold_the_oracles() {
    let settings = fuzz::Settings::from_env(DEFAULT_SECONDS);
    println!(
        "fuzz: seed {} for {} s (replay with SKIFF_FUZZ_SEED={})",
        settings.seed,
        settings.duration.as_secs(),
        settings.seed
    );
    let report = fuzz::run(&settings).await;
    report.print(settings.seed);
    assert!(
        report.failures.is_empty(),
        "{} failures (seed {}):\n{}",
        report.failures.len(),
        settings.seed,
        report.failures.join("\n\n")
    );
    // A run that tried almost nothing shows nothing: the generators must keep the server busy.
    assert!(
        report.inputs >= 100 || settings.max_inputs.is_some(),
        "only {} inputs",
        report.inputs
    );
}

/// An input for the oracle tests: a GET, or a dry-run POST.
fn input(method: http::Method, dry_run: bool) -> fuzz::requests::Input {
    fuzz::requests::Input {
        category: fuzz::requests::Category::Path,
        method,
        uri: "/api/v1/namespaces".into(),
        headers: Vec::new(),
        body: Vec::new(),
        target: None,
        watch_ends_within: None,
        dry_run,
    }
}

fn answer(code: u16, content_type: &str, body: &str) -> fuzz::Answer {
    fuzz::Answer {
        status: http::StatusCode::from_u16(code).unwrap(),
        content_type: content_type.into(),
        body: body.as_bytes().to_vec(),
    }
}

/// The oracles fail what they guard against, and pass what the API may answer.
#[test]
fn the_oracles_catch_what_they_guard() {
    let get = input(http::Method::GET, false);
    let status = |code: u16| {
        format!(r#"{{"kind":"Status","apiVersion":"v1","code":{code},"status":"Failure"}}"#)
    };
    let json = "application/json";
    let caught = [
        (answer(500, json, &status(500)), 5, 5, "500 answer"),
        (answer(503, json, &status(503)), 5, 5, "503 answer"),
        (answer(405, "", ""), 5, 5, "not a Status"),
        (
            answer(400, "text/plain", "Invalid URL"),
            5,
            5,
            "not a Status",
        ),
        (answer(404, json, &status(400)), 5, 5, "with that code"),
        (answer(422, json, &status(422)), 5, 6, "revision moved"),
        (answer(200, json, "{\"items\": ["), 5, 5, "does not parse"),
    ];
    for (a, before, after, expected) in caught {
        let failure = fuzz::check(&get, &a, before, after).unwrap_err();
        assert!(failure.contains(expected), "{failure}");
    }
    let mut watch = input(http::Method::GET, false);
    watch.watch_ends_within = Some(0);
    let events = "{\"type\":\"ADDED\",\"object\":{}}\n{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\"}}\n{\"ty";
    fuzz::check(&watch, &answer(200, json, events), 5, 5).unwrap();
    for bad in [
        "{\"type\":\"ADDED\"}\n",
        "{\"type\":\"ERROR\",\"object\":{}}\n",
        "{\"ty\n",
    ] {
        fuzz::check(&watch, &answer(200, json, bad), 5, 5).unwrap_err();
    }
    let dry = input(http::Method::POST, true);
    let failure = fuzz::check(&dry, &answer(201, json, "{}"), 5, 6).unwrap_err();
    assert!(failure.contains("dry run"), "{failure}");

    for (a, before, after) in [
        (answer(404, json, &status(404)), 5, 5),
        (answer(504, json, &status(504)), 5, 6),
        (answer(429, json, &status(429)), 5, 5),
        (answer(201, json, "{}"), 5, 6),
        (answer(200, "application/jsonl", "{}\n{}\n"), 5, 5),
    ] {
        fuzz::check(&get, &a, before, after).unwrap();
    }
}

/// A handler that never answers, or a body that never ends, is a failure, not a hung run.
#[tokio::test(start_paused = true)]
async fn a_hang_is_a_failure() {
    let never = axum::Router::new().route(
        "/api/v1/namespaces",
        axum::routing::get(std::future::pending::<()>),
    );
    let failure = fuzz::send(&never, &input(http::Method::GET, false))
        .await
        .err()
        .unwrap();
    assert!(failure.contains("no answer within"), "{failure}");

    let endless = axum::Router::new().route(
        "/api/v1/namespaces",
        axum::routing::get(|| async {
            axum::body::Body::from_stream(
                futures::stream::pending::<Result<Vec<u8>, std::io::Error>>(),
            )
        }),
    );
    let failure = fuzz::send(&endless, &input(http::Method::GET, false))
        .await
        .err()
        .unwrap();
    assert!(failure.contains("did not end"), "{failure}");
}
