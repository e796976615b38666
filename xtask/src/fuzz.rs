//! `cargo xtask fuzz --minutes N [--seed S]`: the API fuzzer (`control/tests/fuzz_api.rs`) for
//! longer than the minute CI gives it. It prints the inputs tried per category and in total,
//! and every failure with its seed and input.
//!
//! It runs the test profile, not release: the workspace's dev profile already optimises every
//! dependency (serde, redb, axum), so only skiff-control's own code runs unoptimised, and that
//! keeps overflow checks and debug assertions on, which turn silent arithmetic wrap-arounds
//! into the panics the fuzzer reports. It also reuses the build the tests already made.

use crate::util;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to fuzz.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    minutes: u64,
    /// The seed of the run (a failure prints the seed that found it); random by default.
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut cmd = util::cargo_command();
    cmd.args([
        "test",
        "-p",
        "skiff-control",
        "--test",
        "fuzz_api",
        "--",
        "--nocapture",
    ])
    .env("SKIFF_FUZZ_SECONDS", (args.minutes * 60).to_string());
    if let Some(seed) = args.seed {
        cmd.env("SKIFF_FUZZ_SEED", seed.to_string());
    }
    util::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("fuzz").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn minutes_and_seed() {
        let a = parse(&["--minutes", "3", "--seed", "42"]).unwrap();
        assert_eq!((a.minutes, a.seed), (3, Some(42)));
        let a = parse(&[]).unwrap();
        assert_eq!((a.minutes, a.seed), (10, None));
        assert!(parse(&["--minutes", "0"]).is_err());
    }
}
