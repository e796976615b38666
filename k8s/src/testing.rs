//! Fixtures for tests of the rules and of the crates that use them (feature `testing`).

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// A pod for tests: `node` set or not, a phase, ready or not, created at second `created`.
pub fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: i64) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    p.spec = Some(PodSpec {
        node_name: node.map(Into::into),
        ..PodSpec::default()
    });
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            last_transition_time: Some(Time(Timestamp::from_second(created).unwrap())),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    p
}
