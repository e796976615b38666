//! Resource arithmetic: what a pod requests (quantities parse in `skiff_k8s::quantity`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use skiff_k8s::quantity;

/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub milli_cpu: u64,
    /// Bytes.
    pub memory: u64,
}

impl Resources {
    /// Component-wise sum.
    pub fn add(&mut self, other: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
    }

    /// Component-wise difference, floored at zero.
    pub fn sub(&mut self, other: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
    }

    fn max(self, other: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.max(other.milli_cpu),
            memory: self.memory.max(other.memory),
        }
    }
}

/// What kube-scheduler assumes for scoring a container without requests (100m CPU, 200 MiB),
/// so that pods without requests still spread instead of piling onto one node.
pub const DEFAULT_MILLI_CPU: u64 = 100;
/// See [`DEFAULT_MILLI_CPU`].
pub const DEFAULT_MEMORY: u64 = 200 << 20;

fn get(map: Option<&BTreeMap<String, Quantity>>, key: &str, scale: u128) -> Option<u64> {
    map.and_then(|m| m.get(key))
        // A malformed quantity counts as zero rather than stopping the scheduler: the API
        // server's validation keeps those out.
        .and_then(|q| quantity::parse(&q.0, scale).ok())
}

/// A container's requests; a resource with a limit but no request requests its limit (the API
/// server's defaulting in Kubernetes, done here so that pods written without it count right).
/// With `nonzero`, unset requests count as kube-scheduler's scoring defaults.
fn container_requests(c: &Container, nonzero: bool) -> Resources {
    let r = c.resources.as_ref();
    let requests = r.and_then(|r| r.requests.as_ref());
    let limits = r.and_then(|r| r.limits.as_ref());
    let cpu = get(requests, "cpu", 1000).or_else(|| get(limits, "cpu", 1000));
    let memory = get(requests, "memory", 1).or_else(|| get(limits, "memory", 1));
    Resources {
        milli_cpu: cpu.unwrap_or(if nonzero { DEFAULT_MILLI_CPU } else { 0 }),
        memory: memory.unwrap_or(if nonzero { DEFAULT_MEMORY } else { 0 }),
    }
}

/// The pod's effective request: the larger of its containers' sum and its largest init
/// container (init containers run one at a time, before the others), plus the pod overhead.
pub fn pod_requests(pod: &Pod, nonzero: bool) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::default();
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(container_requests(c, nonzero));
    }
    for c in spec.init_containers.iter().flatten() {
        sum = sum.max(container_requests(c, nonzero));
    }
    if let Some(overhead) = &spec.overhead {
        sum.add(Resources {
            milli_cpu: get(Some(overhead), "cpu", 1000).unwrap_or(0),
            memory: get(Some(overhead), "memory", 1).unwrap_or(0),
        });
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pod_requests_sum_containers_and_take_the_largest_init_container() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![
                    container(&[("cpu", "200m")], &[("memory", "64Mi")]),
                    container(&[("cpu", "300m"), ("memory", "64Mi")], &[]),
                ],
                init_containers: Some(vec![container(&[("cpu", "1")], &[])]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_requests(&pod, false),
            Resources {
                milli_cpu: 1000,
                memory: 128 << 20
            }
        );
        let empty = Pod {
            spec: Some(PodSpec {
                containers: vec![container(&[], &[])],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(pod_requests(&empty, false), Resources::default());
        assert_eq!(
            pod_requests(&empty, true),
            Resources {
                milli_cpu: DEFAULT_MILLI_CPU,
                memory: DEFAULT_MEMORY
            }
        );
    }
}
