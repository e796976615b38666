//! Levels, versions and a namespace's policy from its labels (upstream's `api/helpers.go`).

use std::fmt;

use serde_json::{Map, Value};

use crate::apiserver::error::FieldError;

/// The label prefix of every Pod Security label.
pub const LABEL_PREFIX: &str = "pod-security.kubernetes.io/";

/// A Pod Security Standards level, ordered from least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Unrestricted.
    Privileged,
    /// Prevents known privilege escalations.
    Baseline,
    /// Current pod hardening best practice.
    Restricted,
}

impl Level {
    /// Upstream's `ParseLevel`: an unknown level is an error, and means restricted.
    pub fn parse(s: &str) -> Result<Level, (Level, &'static str)> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err((
                Level::Restricted,
                "must be one of privileged, baseline, restricted",
            )),
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A policy version: `latest` or `v1.<minor>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The newest checks.
    Latest,
    /// The checks as of v1.<minor>.
    Minor(i64),
}

const VERSION_ERROR: &str = "must be \"latest\" or \"v1.x\"";

impl Version {
    /// Upstream's `ParseVersion` (`latest`, or `v1.` and a number without leading zeros that
    /// fits Go's int): an invalid version is an error, and means latest.
    pub fn parse(s: &str) -> Result<Version, (Version, &'static str)> {
        if s == "latest" {
            return Ok(Version::Latest);
        }
        let bad = (Version::Latest, VERSION_ERROR);
        let digits = s.strip_prefix("v1.").ok_or(bad)?;
        let well_formed = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        if !well_formed {
            return Err(bad);
        }
        digits.parse::<i64>().map(Version::Minor).map_err(|_| bad)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Minor(m) => write!(f, "v1.{m}"),
        }
    }
}

/// A level at a version, shown `restricted:latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelVersion {
    /// The level.
    pub level: Level,
    /// The version of its checks.
    pub version: Version,
}

impl LevelVersion {
    /// `privileged:latest`, Kubernetes' default.
    pub const PRIVILEGED: LevelVersion = LevelVersion {
        level: Level::Privileged,
        version: Version::Latest,
    };

    /// `LEVEL` or `LEVEL:VERSION` (the `--pod-security-default` flag).
    pub fn parse(s: &str) -> Result<LevelVersion, String> {
        let (level, version) = s.split_once(':').unwrap_or((s, "latest"));
        let level = Level::parse(level).map_err(|(_, e)| format!("{level:?}: {e}"))?;
        let version = Version::parse(version).map_err(|(_, e)| format!("{version:?}: {e}"))?;
        Ok(LevelVersion { level, version })
    }

    /// Upstream's `Equivalent`: equal, or both privileged (whose version changes nothing).
    fn equivalent(&self, other: &LevelVersion) -> bool {
        (self.level == Level::Privileged && other.level == Level::Privileged) || self == other
    }
}

impl fmt::Display for LevelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.level.as_str(), self.version)
    }
}

/// What a namespace enforces, audits and warns about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Violations are refused (pods only).
    pub enforce: LevelVersion,
    /// Violations are recorded (skiff: logged).
    pub audit: LevelVersion,
    /// Violations come back as warnings.
    pub warn: LevelVersion,
}

impl Policy {
    /// The same level and version for all three modes.
    pub fn uniform(lv: LevelVersion) -> Policy {
        Policy {
            enforce: lv,
            audit: lv,
            warn: lv,
        }
    }

    /// Nothing is checked in any mode.
    pub fn fully_privileged(&self) -> bool {
        [self.enforce, self.audit, self.warn]
            .iter()
            .all(|lv| lv.level == Level::Privileged)
    }

    /// Upstream's `Policy.Equivalent`.
    pub fn equivalent(&self, other: &Policy) -> bool {
        self.enforce.equivalent(&other.enforce)
            && self.audit.equivalent(&other.audit)
            && self.warn.equivalent(&other.warn)
    }
}

/// The label of a mode's level (`pod-security.kubernetes.io/enforce`) or version
/// (`...-version`).
pub fn label(mode: &str, version: bool) -> String {
    if version {
        format!("{LABEL_PREFIX}{mode}-version")
    } else {
        format!("{LABEL_PREFIX}{mode}")
    }
}

/// A namespace's policy from its labels, over `defaults` for what they do not set
/// (upstream's `PolicyToEvaluate`). Always returns a policy, with the invalid labels as
/// field errors: an invalid enforce level means restricted, an invalid audit or warn level
/// privileged (they fail open), an invalid version latest. Without a warn label, warn
/// follows an explicitly stricter enforce level (and its version, without a warn version).
pub fn from_labels(
    labels: Option<&Map<String, Value>>,
    defaults: Policy,
) -> (Policy, Vec<FieldError>) {
    let mut p = defaults;
    let mut errors = Vec::new();
    let Some(labels) = labels.filter(|l| !l.is_empty()) else {
        return (p, errors);
    };
    let get = |mode: &str, version: bool| {
        let key = label(mode, version);
        labels
            .get(&key)
            .map(|v| (key, v.as_str().unwrap_or_default().to_owned()))
    };
    let mut invalid = |key: String, value: &str, detail: &str| {
        errors.push(FieldError::invalid(
            format!("metadata.labels[{key}]"),
            value,
            detail,
        ));
    };
    let mut has_enforce_level = false;
    for (mode, lv) in [
        ("enforce", &mut p.enforce),
        ("audit", &mut p.audit),
        ("warn", &mut p.warn),
    ] {
        if let Some((key, value)) = get(mode, false) {
            match Level::parse(&value) {
                Ok(level) => {
                    lv.level = level;
                    has_enforce_level |= mode == "enforce";
                }
                Err((fallback, detail)) => {
                    lv.level = if mode == "enforce" {
                        fallback
                    } else {
                        Level::Privileged
                    };
                    invalid(key, &value, detail);
                }
            }
        }
        if let Some((key, value)) = get(mode, true) {
            lv.version = Version::parse(&value).unwrap_or_else(|(fallback, detail)| {
                invalid(key, &value, detail);
                fallback
            });
        }
    }
    let has_warn_level = get("warn", false).is_some();
    if !has_warn_level && has_enforce_level && p.enforce.level > p.warn.level {
        p.warn.level = p.enforce.level;
        if get("warn", true).is_none() {
            p.warn.version = p.enforce.version;
        }
    }
    (p, errors)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(labels: Value) -> (Policy, Vec<String>) {
        let (p, errs) = from_labels(
            labels.as_object(),
            Policy::uniform(LevelVersion::PRIVILEGED),
        );
        (
            p,
            errs.into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect(),
        )
    }

    fn lv(s: &str) -> LevelVersion {
        LevelVersion::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_as_upstream() {
        assert_eq!(Version::parse("latest"), Ok(Version::Latest));
        assert_eq!(Version::parse("v1.0"), Ok(Version::Minor(0)));
        assert_eq!(Version::parse("v1.24"), Ok(Version::Minor(24)));
        for bad in [
            "",
            "1.24",
            "v1.024",
            "v2.1",
            "v1.",
            "v1.x",
            "v1.-1",
            "v1.99999999999999999999",
        ] {
            assert_eq!(
                Version::parse(bad),
                Err((Version::Latest, VERSION_ERROR)),
                "{bad:?}"
            );
        }
        assert_eq!(lv("baseline:v1.30").to_string(), "baseline:v1.30");
        assert_eq!(lv("restricted").to_string(), "restricted:latest");
        assert!(LevelVersion::parse("strict").is_err());
        assert!(LevelVersion::parse("baseline:1.2").is_err());
    }

    #[test]
    fn labels_set_the_policy_and_warn_follows_a_stricter_enforce() {
        let (p, errs) = policy(json!({"pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "v1.24"}));
        assert!(errs.is_empty());
        assert_eq!(p.enforce, lv("restricted:v1.24"));
        assert_eq!(p.warn, lv("restricted:v1.24"));
        assert_eq!(p.audit, LevelVersion::PRIVILEGED);

        let (p, _) = policy(json!({"pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "privileged"}));
        assert_eq!(
            p.warn.level,
            Level::Privileged,
            "an explicit warn level stays"
        );

        let (p, errs) = policy(json!({"other": "x"}));
        assert!(errs.is_empty());
        assert!(p.fully_privileged());
    }

    #[test]
    fn invalid_labels_are_errors_and_fail_closed_for_enforce_only() {
        let (p, errs) = policy(json!({
            "pod-security.kubernetes.io/enforce": "strict",
            "pod-security.kubernetes.io/audit": "loud",
            "pod-security.kubernetes.io/warn-version": "1.20",
        }));
        assert_eq!(p.enforce, lv("restricted:latest"));
        assert_eq!(p.audit.level, Level::Privileged);
        assert_eq!(
            p.warn.level,
            Level::Privileged,
            "no warn default from an invalid enforce"
        );
        assert_eq!(
            errs,
            [
                "metadata.labels[pod-security.kubernetes.io/enforce]: Invalid value: \"strict\": must be one of privileged, baseline, restricted",
                "metadata.labels[pod-security.kubernetes.io/audit]: Invalid value: \"loud\": must be one of privileged, baseline, restricted",
                "metadata.labels[pod-security.kubernetes.io/warn-version]: Invalid value: \"1.20\": must be \"latest\" or \"v1.x\"",
            ]
        );
    }
}
