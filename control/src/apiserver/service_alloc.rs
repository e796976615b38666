//! Service ClusterIP and NodePort allocation, done synchronously in the write path as the real
//! API server does, so a Service asking for an address or port another Service holds is
//! rejected (422 Invalid, "provided IP is already allocated") instead of silently shared.
//!
//! The allocation lives in memory, owned by the Service's store key, and is rebuilt from the
//! stored Services at start. After every Service write the owner's allocation is *settled*
//! against what is stored, which releases what a deleted or changed Service no longer holds
//! (and what a failed write had reserved). Service writes are serialised by [`Allocator::lock`]
//! so a reservation and its settlement cannot interleave with another write of Services.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use serde_json::{json, Value};
use skiff_k8s::cidr::Ipv4Cidr;

use super::error::{ApiError, FieldError};

/// Parses `30000-32767`.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a port range (first-last)"))?;
    let a: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?}"))?;
    let b: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?}"))?;
    if a == 0 || a > b {
        return Err(format!(
            "{s:?} is not a range of ports 1-65535, first <= last"
        ));
    }
    Ok(a..=b)
}

#[derive(Debug)]
struct Inner {
    cidr: Ipv4Cidr,
    ports: RangeInclusive<u16>,
    /// IP offset -> owning Service key.
    ips: HashMap<u64, String>,
    /// NodePort -> owning Service key.
    node_ports: HashMap<u16, String>,
    next_ip: u64,
    next_port: u16,
}

/// The allocator of one API server.
#[derive(Debug)]
pub struct Allocator {
    inner: Mutex<Inner>,
    writes: tokio::sync::Mutex<()>,
}

/// The key of the `kubernetes` Service, the only one that gets the range's first address.
pub const KUBERNETES_SERVICE_KEY: &str = "core/services/default/kubernetes";

impl Default for Allocator {
    fn default() -> Self {
        Self::new("10.96.0.0/12".parse().expect("a valid CIDR"), 30000..=32767)
    }
}

fn str_at<'a>(v: &'a Value, p: &str) -> Option<&'a str> {
    v.pointer(p).and_then(Value::as_str)
}

/// Whether traffic from outside the cluster reaches the Service (`ExternallyAccessible`):
/// NodePort and LoadBalancer Services, and any with external IPs.
pub fn externally_accessible(spec: &serde_json::Map<String, Value>) -> bool {
    matches!(
        spec.get("type").and_then(Value::as_str),
        Some("NodePort" | "LoadBalancer")
    ) || spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|ips| !ips.is_empty())
}

/// Whether the Service gets a `healthCheckNodePort` (`NeedsHealthCheck`): a LoadBalancer
/// whose outside traffic goes only to the receiving node's endpoints, so that the load
/// balancer can ask each node whether it has any.
pub fn needs_health_check(spec: &serde_json::Map<String, Value>) -> bool {
    spec.get("type").and_then(Value::as_str) == Some("LoadBalancer")
        && spec.get("externalTrafficPolicy").and_then(Value::as_str) == Some("Local")
}

fn needs_node_ports(ty: &str) -> bool {
    matches!(ty, "NodePort" | "LoadBalancer")
}

fn has_cluster_ip(svc: &Value) -> Option<&str> {
    str_at(svc, "/spec/clusterIP").filter(|ip| !ip.is_empty() && *ip != "None")
}

impl Allocator {
    /// An allocator for `cidr` and node ports `ports`.
    pub fn new(cidr: Ipv4Cidr, ports: RangeInclusive<u16>) -> Self {
        let next_port = *ports.start();
        Self {
            inner: Mutex::new(Inner {
                cidr,
                ports,
                ips: HashMap::new(),
                node_ports: HashMap::new(),
                next_ip: 2,
                next_port,
            }),
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// Changes the ranges (at start, before any Service is written).
    pub fn configure(&self, cidr: Ipv4Cidr, ports: RangeInclusive<u16>) {
        let mut inner = self.inner.lock().expect("allocator lock");
        inner.next_port = *ports.start();
        inner.cidr = cidr;
        inner.ports = ports;
        inner.ips.clear();
        inner.node_ports.clear();
    }

    /// The service CIDR.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.inner.lock().expect("allocator lock").cidr
    }

    /// Serialises Service writes (reserve, store write, settle).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// Fills in and reserves the ClusterIP and NodePorts of `svc` (stored under `key`),
    /// given the stored `old` version on updates. Fails with 422 on a conflict or an address
    /// outside the ranges.
    pub fn reserve(&self, key: &str, svc: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
        let name = str_at(svc, "/metadata/name").unwrap_or_default().to_owned();
        let invalid = |field: &str, value: &str, detail: String| ApiError::Invalid {
            kind: "Service".into(),
            name: name.clone(),
            causes: vec![FieldError::invalid(field, value, detail)],
        };
        let ty = str_at(svc, "/spec/type").unwrap_or("ClusterIP").to_owned();
        let mut inner = self.inner.lock().expect("allocator lock");
        let Inner { cidr, .. } = *inner;

        // ClusterIP.
        if ty != "ExternalName" {
            let requested = str_at(svc, "/spec/clusterIP")
                .unwrap_or_default()
                .to_owned();
            let old_ip = old.and_then(has_cluster_ip).map(str::to_owned);
            let changed = |new: &str| ApiError::Invalid {
                kind: "Service".into(),
                name: name.clone(),
                causes: vec![FieldError {
                    reason: "FieldValueInvalid",
                    field: "spec.clusterIPs[0]".into(),
                    message: format!("Invalid value: {new:?}: may not change once set"),
                }],
            };
            let ip = if requested == "None" {
                if old_ip.is_some() {
                    return Err(changed(&requested));
                }
                None
            } else if requested.is_empty() {
                match old_ip {
                    // An update that leaves the address out keeps it (patchAllocatedValues).
                    Some(old) => Some(old),
                    None => {
                        let offset = inner.allocate_ip(key).ok_or_else(|| {
                            ApiError::Internal(format!(
                                "no ClusterIP left in the service CIDR {cidr}"
                            ))
                        })?;
                        Some(cidr.nth(offset).to_string())
                    }
                }
            } else {
                if old_ip.as_ref().is_some_and(|o| *o != requested) {
                    return Err(changed(&requested));
                }
                let field = "spec.clusterIPs[0]";
                let new = requested.as_str();
                let ip: Ipv4Addr = new.parse().map_err(|_| {
                    invalid(
                        field,
                        new,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
                    )
                })?;
                let offset = cidr.offset(ip);
                if !cidr.contains(ip) || offset == 0 || offset == cidr.size() - 1 {
                    return Err(invalid(
                        field,
                        new,
                        format!(
                            "provided IP is not in the valid range. The range of valid IPs is {cidr}"
                        ),
                    ));
                }
                match inner.ips.get(&offset) {
                    Some(owner) if owner != key => {
                        return Err(invalid(
                            field,
                            new,
                            "provided IP is already allocated".into(),
                        ))
                    }
                    _ => {
                        inner.ips.insert(offset, key.to_owned());
                    }
                }
                Some(requested.clone())
            };
            if let (Some(ip), Some(spec)) = (ip, svc.get_mut("spec").and_then(Value::as_object_mut))
            {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert("clusterIPs".into(), json!([ip]));
                spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
                spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
            } else if requested == "None" {
                if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("clusterIPs".into(), json!(["None"]));
                }
            }
        }

        // The health check port of a LoadBalancer with externalTrafficPolicy Local, from the
        // same range as NodePorts (validation has refused it on any other Service; an update
        // that made the Service internal has dropped it).
        if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            if needs_health_check(spec) {
                let field = "spec.healthCheckNodePort";
                let requested = spec
                    .get("healthCheckNodePort")
                    .and_then(Value::as_i64)
                    .filter(|n| *n != 0);
                let previous = old
                    .and_then(|o| o.pointer("/spec/healthCheckNodePort"))
                    .and_then(Value::as_i64)
                    .filter(|n| *n != 0);
                let port = inner.claim_port(key, requested.or(previous), field, &invalid)?;
                spec.insert("healthCheckNodePort".into(), json!(port));
            }
        }

        // NodePorts.
        let old_ports: Vec<(i64, String, i64)> = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.get("port")?.as_i64()?,
                    p.get("protocol")
                        .and_then(Value::as_str)
                        .unwrap_or("TCP")
                        .to_owned(),
                    p.get("nodePort")?.as_i64()?,
                ))
            })
            .collect();
        let allocate_node_ports = ty != "LoadBalancer"
            || svc.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&Value::Bool(false));
        let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(p) = p.as_object_mut() else { continue };
            let field = format!("spec.ports[{i}].nodePort");
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let protocol = p
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP")
                .to_owned();
            let requested = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .filter(|n| *n != 0);
            let previous = old_ports
                .iter()
                .find(|(op, oproto, _)| *op == port && *oproto == protocol)
                .map(|(_, _, n)| *n);
            if !needs_node_ports(&ty) {
                match requested {
                    // A type change away from NodePort drops the ports it had.
                    Some(n) if previous == Some(n) => {
                        p.remove("nodePort");
                    }
                    Some(_) => {
                        return Err(ApiError::Invalid {
                            kind: "Service".into(),
                            name,
                            causes: vec![FieldError::forbidden(
                                field,
                                format!("may not be used when `type` is '{ty}'"),
                            )],
                        })
                    }
                    None => {}
                }
                continue;
            }
            // `allocateLoadBalancerNodePorts: false`: a LoadBalancer whose load balancer sends
            // traffic straight to the pods or to its address gets no NodePort unless it asks
            // for one (or keeps one it has).
            if requested.or(previous).is_none() && !allocate_node_ports {
                continue;
            }
            let node_port = inner.claim_port(key, requested.or(previous), &field, &invalid)?;
            p.insert("nodePort".into(), json!(node_port));
        }
        Ok(())
    }

    /// Releases what `key` holds beyond what `stored` (the Service as now stored, `None` when
    /// it is gone) uses.
    pub fn settle(&self, key: &str, stored: Option<&Value>) {
        let mut inner = self.inner.lock().expect("allocator lock");
        let cidr = inner.cidr;
        let keep_ip = stored
            .and_then(has_cluster_ip)
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .map(|ip| cidr.offset(ip));
        inner
            .ips
            .retain(|offset, owner| owner != key || Some(*offset) == keep_ip);
        let health_check = stored
            .and_then(|s| s.pointer("/spec/healthCheckNodePort"))
            .and_then(Value::as_i64)
            .and_then(|p| u16::try_from(p).ok());
        let keep_ports: Vec<u16> = stored
            .and_then(|s| s.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| u16::try_from(p.get("nodePort")?.as_i64()?).ok())
            .chain(health_check)
            .collect();
        inner
            .node_ports
            .retain(|port, owner| owner != key || keep_ports.contains(port));
    }

    /// Records a stored Service at start. A Service whose addresses clash with an earlier one
    /// (possible only if the store was edited behind the server's back) is logged.
    pub fn restore(&self, key: &str, svc: &Value) {
        let mut copy = svc.clone();
        if let Err(e) = self.reserve(key, &mut copy, Some(svc)) {
            tracing::warn!(service = key, error = %e, "stored Service clashes with another one");
        }
    }

    /// How many addresses and ports are in use (for tests and diagnostics).
    pub fn in_use(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("allocator lock");
        (inner.ips.len(), inner.node_ports.len())
    }
}

impl Inner {
    /// Takes port `requested` (checked against the range and other owners) for `key`, or the
    /// next free one when none is asked for.
    fn claim_port(
        &mut self,
        key: &str,
        requested: Option<i64>,
        field: &str,
        invalid: &dyn Fn(&str, &str, String) -> ApiError,
    ) -> Result<u16, ApiError> {
        let Some(n) = requested else {
            return self.allocate_port(key).ok_or_else(|| {
                ApiError::Internal("no NodePort left in the node port range".into())
            });
        };
        let Some(port) = u16::try_from(n).ok().filter(|n| self.ports.contains(n)) else {
            return Err(invalid(
                field,
                &n.to_string(),
                format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    self.ports.start(),
                    self.ports.end()
                ),
            ));
        };
        match self.node_ports.get(&port) {
            Some(owner) if owner != key => Err(invalid(
                field,
                &n.to_string(),
                "provided port is already allocated".into(),
            )),
            _ => {
                self.node_ports.insert(port, key.to_owned());
                Ok(port)
            }
        }
    }

    /// The next free address offset, scanning round-robin from the last one handed out so a
    /// released address is not reused at once. Offset 1 is the `kubernetes` Service's.
    fn allocate_ip(&mut self, key: &str) -> Option<u64> {
        let size = self.cidr.size();
        if size < 4 {
            return None;
        }
        let usable = size - 3; // network, broadcast and the kubernetes Service's address
        for i in 0..usable {
            let offset = 2 + (self.next_ip - 2 + i) % usable;
            if let std::collections::hash_map::Entry::Vacant(slot) = self.ips.entry(offset) {
                slot.insert(key.to_owned());
                self.next_ip = 2 + (offset - 2 + 1) % usable;
                return Some(offset);
            }
        }
        None
    }

    fn allocate_port(&mut self, key: &str) -> Option<u16> {
        let (start, end) = (*self.ports.start(), *self.ports.end());
        let count = u32::from(end - start) + 1;
        for i in 0..count {
            let port = start + ((u32::from(self.next_port - start) + i) % count) as u16;
            if let std::collections::hash_map::Entry::Vacant(slot) = self.node_ports.entry(port) {
                slot.insert(key.to_owned());
                self.next_port = start + ((u32::from(port - start) + 1) % count) as u16;
                return Some(port);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ty: &str, ip: Option<&str>, node_port: Option<i64>) -> Value {
        let mut port = json!({"port": 80, "protocol": "TCP"});
        if let Some(n) = node_port {
            port["nodePort"] = json!(n);
        }
        let mut s = json!({"metadata": {"name": name}, "spec": {"type": ty, "ports": [port]}});
        if let Some(ip) = ip {
            s["spec"]["clusterIP"] = json!(ip);
        }
        s
    }

    fn alloc() -> Allocator {
        Allocator::new("10.96.0.0/29".parse().unwrap(), 30000..=30002)
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("30000-32767").unwrap(), 30000..=32767);
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("x").is_err());
    }

    #[test]
    fn cluster_ips_are_unique_and_released() {
        let a = alloc();
        let mut s1 = svc("a", "ClusterIP", None, None);
        a.reserve("k/a", &mut s1, None).unwrap();
        assert_eq!(s1["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(s1["spec"]["clusterIPs"], json!(["10.96.0.2"]));
        let mut dup = svc("b", "ClusterIP", Some("10.96.0.2"), None);
        let e = a.reserve("k/b", &mut dup, None).unwrap_err();
        assert!(
            e.to_string().contains("provided IP is already allocated"),
            "{e}"
        );
        assert_eq!(e.code(), http::StatusCode::UNPROCESSABLE_ENTITY);
        let mut out = svc("b", "ClusterIP", Some("10.97.0.2"), None);
        let e = a.reserve("k/b", &mut out, None).unwrap_err();
        assert!(e.to_string().contains("not in the valid range"), "{e}");
        // /29: .0 network, .7 broadcast, .1 kubernetes: .2-.6 usable.
        let mut names = Vec::new();
        for n in ["c", "d", "e", "f"] {
            let mut s = svc(n, "ClusterIP", None, None);
            a.reserve(&format!("k/{n}"), &mut s, None).unwrap();
            names.push(s["spec"]["clusterIP"].as_str().unwrap().to_owned());
        }
        assert_eq!(names, ["10.96.0.3", "10.96.0.4", "10.96.0.5", "10.96.0.6"]);
        assert!(a
            .reserve("k/g", &mut svc("g", "ClusterIP", None, None), None)
            .is_err());
        a.settle("k/a", None);
        let mut again = svc("g", "ClusterIP", None, None);
        a.reserve("k/g", &mut again, None).unwrap();
        assert_eq!(again["spec"]["clusterIP"], "10.96.0.2");
        // The kubernetes Service may ask for the first address.
        let mut k = svc("kubernetes", "ClusterIP", Some("10.96.0.1"), None);
        a.reserve(KUBERNETES_SERVICE_KEY, &mut k, None).unwrap();
    }

    #[test]
    fn headless_and_external_name_get_no_address() {
        let a = alloc();
        let mut h = svc("h", "ClusterIP", Some("None"), None);
        a.reserve("k/h", &mut h, None).unwrap();
        assert_eq!(h["spec"]["clusterIP"], "None");
        let mut x = svc("x", "ExternalName", None, None);
        a.reserve("k/x", &mut x, None).unwrap();
        assert!(x["spec"].get("clusterIP").is_none());
        assert_eq!(a.in_use(), (0, 0));
    }

    #[test]
    fn node_ports_are_allocated_kept_on_update_and_released_on_type_change() {
        let a = alloc();
        let mut s = svc("a", "NodePort", None, None);
        a.reserve("k/a", &mut s, None).unwrap();
        assert_eq!(s["spec"]["ports"][0]["nodePort"], 30000);
        let mut clash = svc("b", "NodePort", None, Some(30000));
        let e = a.reserve("k/b", &mut clash, None).unwrap_err();
        assert!(
            e.to_string().contains("provided port is already allocated"),
            "{e}"
        );
        let mut outside = svc("b", "NodePort", None, Some(80));
        assert!(a
            .reserve("k/b", &mut outside, None)
            .unwrap_err()
            .to_string()
            .contains("valid range"));
        // An update without the allocated values keeps them.
        let mut update = svc("a", "NodePort", None, None);
        a.reserve("k/a", &mut update, Some(&s)).unwrap();
        assert_eq!(update["spec"]["ports"][0]["nodePort"], 30000);
        assert_eq!(update["spec"]["clusterIP"], s["spec"]["clusterIP"]);
        // Changing the ClusterIP is refused.
        let mut moved = svc("a", "NodePort", Some("10.96.0.5"), None);
        assert!(a.reserve("k/a", &mut moved, Some(&s)).is_err());
        // Back to ClusterIP: the node port goes.
        let mut back = s.clone();
        back["spec"]["type"] = json!("ClusterIP");
        a.reserve("k/a", &mut back, Some(&s)).unwrap();
        assert!(back["spec"]["ports"][0].get("nodePort").is_none());
        a.settle("k/a", Some(&back));
        // Failed writes are settled against what is stored (nothing for k/b).
        a.settle("k/b", None);
        assert_eq!(a.in_use(), (1, 0));
        let mut forbidden = svc("c", "ClusterIP", None, Some(30001));
        assert!(a
            .reserve("k/c", &mut forbidden, None)
            .unwrap_err()
            .to_string()
            .contains("may not be used"));
    }

    #[test]
    fn a_local_load_balancer_gets_a_health_check_port_kept_on_update_and_released() {
        let a = alloc();
        let mut s = svc("a", "LoadBalancer", None, None);
        s["spec"]["externalTrafficPolicy"] = json!("Local");
        a.reserve("k/a", &mut s, None).unwrap();
        a.settle("k/a", Some(&s));
        let (port, health) = (
            s["spec"]["ports"][0]["nodePort"].as_i64().unwrap(),
            s["spec"]["healthCheckNodePort"].as_i64().unwrap(),
        );
        assert_ne!(port, health, "the health check port is a port of its own");
        assert_eq!(a.in_use().1, 2);
        // Another Service may not ask for it.
        let mut clash = svc("b", "LoadBalancer", None, None);
        clash["spec"]["externalTrafficPolicy"] = json!("Local");
        clash["spec"]["healthCheckNodePort"] = json!(health);
        let e = a.reserve("k/b", &mut clash, None).unwrap_err().to_string();
        assert!(
            e.contains("spec.healthCheckNodePort") && e.contains("already allocated"),
            "{e}"
        );
        a.settle("k/b", None);
        // An update without it keeps it.
        let mut update = svc("a", "LoadBalancer", None, None);
        update["spec"]["externalTrafficPolicy"] = json!("Local");
        a.reserve("k/a", &mut update, Some(&s)).unwrap();
        assert_eq!(update["spec"]["healthCheckNodePort"], health);
        // Back to Cluster (the update's hook has dropped the field): the port goes, the
        // NodePort stays.
        let mut cluster = update.clone();
        cluster["spec"]["externalTrafficPolicy"] = json!("Cluster");
        cluster["spec"]
            .as_object_mut()
            .unwrap()
            .remove("healthCheckNodePort");
        a.reserve("k/a", &mut cluster, Some(&update)).unwrap();
        assert!(cluster["spec"].get("healthCheckNodePort").is_none());
        a.settle("k/a", Some(&cluster));
        assert_eq!(a.in_use().1, 1);
    }

    #[test]
    fn a_load_balancer_may_go_without_node_ports() {
        let a = alloc();
        let mut s = svc("a", "LoadBalancer", None, None);
        s["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
        a.reserve("k/a", &mut s, None).unwrap();
        assert!(s["spec"]["ports"][0].get("nodePort").is_none(), "{s}");
        // One it asks for, it gets.
        let mut asked = svc("b", "LoadBalancer", None, Some(30002));
        asked["spec"]["allocateLoadBalancerNodePorts"] = json!(false);
        a.reserve("k/b", &mut asked, None).unwrap();
        assert_eq!(asked["spec"]["ports"][0]["nodePort"], 30002);
        // Unset means true.
        let mut default = svc("c", "LoadBalancer", None, None);
        a.reserve("k/c", &mut default, None).unwrap();
        assert!(default["spec"]["ports"][0]["nodePort"].is_u64());
    }
}
