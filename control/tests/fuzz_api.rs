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
