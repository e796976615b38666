//! Component tests of Service ClusterIP and NodePort allocation in the API server.

mod common;

use std::sync::Arc;

use common::{api, TOKEN};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use skiff_control::apiserver::ApiState;
use skiff_control::store::RedbStore;
use tokio_util::sync::CancellationToken;

const SVCS: &str = "/api/v1/namespaces/default/services";

fn svc(name: &str, ty: &str, ip: Option<&str>, node_port: Option<u16>) -> Value {
    let mut port = json!({"port": 80, "targetPort": 8080});
    if let Some(n) = node_port {
        port["nodePort"] = json!(n);
    }
    let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"type": ty, "selector": {"app": name}, "ports": [port]}});
    if let Some(ip) = ip {
        s["spec"]["clusterIP"] = json!(ip);
    }
    s
}

#[tokio::test]
async fn cluster_ips_are_allocated_unique_and_released() {
    let a = api().await;
    a.state.ensure_kubernetes_service(6443).await.unwrap();
    let k = a.get(&format!("{SVCS}/kubernetes")).await;
    assert_eq!(k["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(k["spec"]["ports"][0]["targetPort"], 6443);

    let web = a.post(SVCS, svc("web", "ClusterIP", None, None)).await;
    let ip = web["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(ip.starts_with("10.9") && ip != "10.96.0.1", "{ip}");
    assert_eq!(web["spec"]["clusterIPs"], json!([ip]));

    let (code, s) = a
        .call(
            Method::POST,
            SVCS,
            Some(svc("dup", "ClusterIP", Some(&ip), None)),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert_eq!(s["reason"], "Invalid");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("provided IP is already allocated"),
        "{s}"
    );
    let (code, s) = a
        .call(
            Method::POST,
            SVCS,
            Some(svc("out", "ClusterIP", Some("192.168.1.1"), None)),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");

    // A PUT without the address keeps it; a changed address is refused.
    let mut put = svc("web", "ClusterIP", None, None);
    put["metadata"]["labels"] = json!({"x": "y"});
    let (code, s) = a.call(Method::PUT, &format!("{SVCS}/web"), Some(put)).await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["spec"]["clusterIP"], ip.as_str());
    let (code, s) = a
        .merge_patch(
            &format!("{SVCS}/web"),
            json!({"spec": {"clusterIP": "10.96.100.100"}}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("may not change once set"),
        "{s}"
    );

    let headless = a
        .post(SVCS, svc("db", "ClusterIP", Some("None"), None))
        .await;
    assert_eq!(headless["spec"]["clusterIP"], "None");

    let (code, _) = a.call(Method::DELETE, &format!("{SVCS}/web"), None).await;
    assert_eq!(code, StatusCode::OK);
    let again = a
        .post(SVCS, svc("again", "ClusterIP", Some(&ip), None))
        .await;
    assert_eq!(again["spec"]["clusterIP"], ip.as_str());
    // A dry run reserves nothing.
    let (code, _) = a
        .call(
            Method::POST,
            &format!("{SVCS}?dryRun=All"),
            Some(svc("dry", "ClusterIP", Some("10.96.7.7"), None)),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    a.post(SVCS, svc("wet", "ClusterIP", Some("10.96.7.7"), None))
        .await;
}

#[tokio::test]
async fn traffic_policies_take_only_kubernetes_values() {
    let a = api().await;
    let mut ok = svc("dns", "ClusterIP", None, None);
    ok["spec"]["internalTrafficPolicy"] = json!("Local");
    ok["spec"]["trafficDistribution"] = json!("PreferSameNode");
    let created = a.post(SVCS, ok).await;
    assert_eq!(created["spec"]["trafficDistribution"], "PreferSameNode");
    for (field, value, supported) in [
        ("internalTrafficPolicy", "Nearby", "\"Cluster\", \"Local\""),
        (
            "trafficDistribution",
            "PreferMyNode",
            "\"PreferClose\", \"PreferSameNode\", \"PreferSameZone\"",
        ),
    ] {
        let mut bad = svc(
            &format!("bad-{}", field.to_lowercase()),
            "ClusterIP",
            None,
            None,
        );
        bad["spec"][field] = json!(value);
        let (code, s) = a.call(Method::POST, SVCS, Some(bad)).await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
        let message = s["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "spec.{field}: Unsupported value: \"{value}\": supported values: {supported}"
            )),
            "{message}"
        );
    }
}

#[tokio::test]
async fn external_traffic_policy_and_its_health_check_port() {
    let a = api().await;
    // Defaulted on what outside traffic reaches, refused on what it does not.
    let np = a.post(SVCS, svc("np", "NodePort", None, None)).await;
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    assert!(np["spec"].get("healthCheckNodePort").is_none());
    let cip = a.post(SVCS, svc("cip", "ClusterIP", None, None)).await;
    assert!(cip["spec"].get("externalTrafficPolicy").is_none(), "{cip}");
    let mut bad = svc("bad-etp", "ClusterIP", None, None);
    bad["spec"]["externalTrafficPolicy"] = json!("Local");
    let (code, s) = a.call(Method::POST, SVCS, Some(bad)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert!(
        s["message"].as_str().unwrap().contains(
            "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services"
        ),
        "{s}"
    );
    let mut bad = svc("bad-hc", "NodePort", None, None);
    bad["spec"]["healthCheckNodePort"] = json!(31000);
    let (code, s) = a.call(Method::POST, SVCS, Some(bad)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert!(
        s["message"].as_str().unwrap().contains("spec.healthCheckNodePort: Invalid value: 31000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"),
        "{s}"
    );
    // A Local LoadBalancer gets a health check port of its own; back to Cluster, it goes.
    let mut lb = svc("lb", "LoadBalancer", None, None);
    lb["spec"]["externalTrafficPolicy"] = json!("Local");
    let lb = a.post(SVCS, lb).await;
    let health = lb["spec"]["healthCheckNodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&health), "{lb}");
    assert_ne!(Some(health), lb["spec"]["ports"][0]["nodePort"].as_u64());
    let (code, cluster) = a
        .merge_patch(
            &format!("{SVCS}/lb"),
            json!({"spec": {"externalTrafficPolicy": "Cluster"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{cluster}");
    assert!(
        cluster["spec"].get("healthCheckNodePort").is_none(),
        "{cluster}"
    );
    // The port is free again: another Local LoadBalancer may take it.
    let mut again = svc("lb2", "LoadBalancer", None, None);
    again["spec"]["externalTrafficPolicy"] = json!("Local");
    again["spec"]["healthCheckNodePort"] = json!(health);
    let again = a.post(SVCS, again).await;
    assert_eq!(again["spec"]["healthCheckNodePort"], health);
    // A NodePort that becomes internal loses its policy with its ports.
    let (code, internal) = a
        .merge_patch(
            &format!("{SVCS}/np"),
            json!({"spec": {"type": "ClusterIP"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{internal}");
    assert!(
        internal["spec"].get("externalTrafficPolicy").is_none(),
        "{internal}"
    );
}

#[tokio::test]
async fn node_ports_are_allocated_in_range_and_conflicts_rejected() {
    let a = api().await;
    let np = a.post(SVCS, svc("np", "NodePort", None, None)).await;
    let port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&port), "{port}");
    let lb = a.post(SVCS, svc("lb", "LoadBalancer", None, None)).await;
    assert!(lb["spec"]["ports"][0]["nodePort"].as_u64().is_some());
    let (code, s) = a
        .call(
            Method::POST,
            SVCS,
            Some(svc("clash", "NodePort", None, Some(port as u16))),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("provided port is already allocated"),
        "{s}"
    );
    let (code, s) = a
        .call(
            Method::POST,
            SVCS,
            Some(svc("low", "NodePort", None, Some(8080))),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{s}");
    // Switching to ClusterIP frees the port for someone else.
    let (code, s) = a
        .merge_patch(
            &format!("{SVCS}/np"),
            json!({"spec": {"type": "ClusterIP"}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert!(s["spec"]["ports"][0].get("nodePort").is_none(), "{s}");
    let taken = a
        .post(SVCS, svc("taker", "NodePort", None, Some(port as u16)))
        .await;
    assert_eq!(taken["spec"]["ports"][0]["nodePort"].as_u64(), Some(port));
}

#[tokio::test]
async fn allocations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let ip;
    {
        let store = RedbStore::open(&path).unwrap();
        let (state, _q) = ApiState::new(Arc::new(store), TOKEN.into(), CancellationToken::new());
        state.ensure_system_namespaces().await.unwrap();
        let router = skiff_control::apiserver::app(state.clone());
        let def = state.registry.find("", "v1", "services").unwrap().clone();
        let created = state
            .create(
                &def,
                Some("default"),
                svc("keep", "NodePort", None, Some(30100)),
                &Default::default(),
            )
            .await
            .unwrap();
        ip = created.object["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .to_owned();
        drop(router);
    }
    let store = RedbStore::open(&path).unwrap();
    let (state, _q) = ApiState::new(Arc::new(store), TOKEN.into(), CancellationToken::new());
    state.restore_service_allocations().await.unwrap();
    let def = state.registry.find("", "v1", "services").unwrap().clone();
    let e = state
        .create(
            &def,
            Some("default"),
            svc("ip", "ClusterIP", Some(&ip), None),
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("provided IP is already allocated"),
        "{e}"
    );
    let e = state
        .create(
            &def,
            Some("default"),
            svc("port", "NodePort", None, Some(30100)),
            &Default::default(),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("provided port is already allocated"),
        "{e}"
    );
}
