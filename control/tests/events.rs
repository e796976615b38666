//! Events: repeats fold into one Event (count, lastTimestamp) and more than ten similar ones
//! into a combined Event, as client-go's correlator does; Events expire after `--event-ttl`.

mod common;

use std::time::Duration;

use common::api;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{json, Value};
use skiff_control::client::events::{EventType, Recorder};
use skiff_control::controllers::event_ttl;

const EVENTS: &str = "/api/v1/namespaces/default/events";

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn repeated_and_similar_events_are_aggregated() {
    let a = api().await;
    let recorder = Recorder::new(a.client(), "test-controller");
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: Some("uid-web".into()),
        ..ObjectReference::default()
    };
    for _ in 0..3 {
        recorder
            .record(&pod, EventType::Warning, "BackOff", "Back-off restarting")
            .await;
    }
    let events = items(&a.get(EVENTS).await);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["count"], 3);
    assert_eq!(events[0]["message"], "Back-off restarting");

    for i in 0..12 {
        recorder
            .record(
                &pod,
                EventType::Warning,
                "Unhealthy",
                &format!("probe failed: {i}"),
            )
            .await;
    }
    let events = items(&a.get(EVENTS).await);
    let unhealthy: Vec<&Value> = events
        .iter()
        .filter(|e| e["reason"] == "Unhealthy")
        .collect();
    // Nine keep their own Event; the tenth to twelfth share one combined Event.
    assert_eq!(unhealthy.len(), 10, "{unhealthy:?}");
    let combined: Vec<&&Value> = unhealthy
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("(combined from similar events): ")
        })
        .collect();
    assert_eq!(combined.len(), 1);
    assert_eq!(combined[0]["count"], 3);
    assert_eq!(
        combined[0]["message"],
        "(combined from similar events): probe failed: 11"
    );
}

#[tokio::test]
async fn events_expire_after_the_ttl_from_their_last_write() {
    let a = api().await;
    let now = Timestamp::now();
    let at = |minutes: i64| (now + SignedDuration::from_mins(minutes)).to_string();
    for (name, last) in [("old", at(0)), ("renewed", at(80))] {
        a.post(
            EVENTS,
            json!({"apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
                "reason": "Started", "message": "m", "type": "Normal", "count": 1,
                "firstTimestamp": at(0), "lastTimestamp": last}),
        )
        .await;
    }
    let ttl = Duration::from_secs(3600);
    let names = || async {
        let mut names: Vec<String> = items(&a.get(EVENTS).await)
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        event_ttl::sweep(&a.state, ttl, now + SignedDuration::from_mins(30)).await,
        0
    );
    assert_eq!(names().await, ["old", "renewed"]);
    // 90 minutes on: "old" was last written 90 minutes ago, "renewed" 10.
    assert_eq!(
        event_ttl::sweep(&a.state, ttl, now + SignedDuration::from_mins(90)).await,
        1
    );
    assert_eq!(names().await, ["renewed"]);
    assert_eq!(
        event_ttl::sweep(&a.state, ttl, now + SignedDuration::from_mins(150)).await,
        1
    );
    assert!(names().await.is_empty());
    // A TTL past the end of time expires nothing (and does not overflow).
    a.post(
        EVENTS,
        json!({"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "kept", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
            "reason": "Started", "message": "m", "type": "Normal"}),
    )
    .await;
    assert_eq!(event_ttl::sweep(&a.state, Duration::MAX, now).await, 0);
}
