//! Protobuf bodies (`application/vnd.kubernetes.protobuf`): typed objects of a few kinds built
//! with k8s-pb and encoded with prost, with hostile field values, wrapped in the runtime.Unknown
//! envelope, and sometimes damaged as bytes.

use k8s_pb::api::coordination::v1 as coordination;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use prost::Message as _;

use super::values::Gen;

const MAGIC: &[u8] = b"k8s\0";

/// Mostly a valid duration, sometimes an extreme.
fn extreme_i64(g: &mut Gen) -> i64 {
    if g.chance(0.7) {
        return 30;
    }
    *g.pick(&[
        0,
        -1,
        1,
        i64::MAX,
        i64::MIN,
        i64::MAX / 1000,
        315_576_000_000,
    ])
}

fn extreme_i32(g: &mut Gen) -> i32 {
    if g.chance(0.7) {
        return 15;
    }
    *g.pick(&[0, -1, 1, i32::MAX, i32::MIN])
}

fn meta(g: &mut Gen, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: if g.chance(0.3) {
            [(g.bad_name(), g.bad_name())].into()
        } else {
            Default::default()
        },
        ..Default::default()
    }
}

/// The raw bytes and (apiVersion, kind) of an object of one of the typed kinds.
fn object(
    g: &mut Gen,
    name: &str,
    namespace: Option<&str>,
) -> (Vec<u8>, &'static str, &'static str) {
    let metadata = Some(meta(g, name, namespace));
    match g.below(4) {
        0 => {
            let data = [("k".to_owned(), "v".repeat(g.below(3000)))].into();
            let cm = core::ConfigMap {
                metadata,
                data,
                ..Default::default()
            };
            (cm.encode_to_vec(), "v1", "ConfigMap")
        }
        1 => {
            let pod = core::Pod {
                metadata,
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("c".into()),
                        image: Some("busybox".into()),
                        ..Default::default()
                    }],
                    active_deadline_seconds: Some(extreme_i64(g)),
                    termination_grace_period_seconds: Some(extreme_i64(g)),
                    tolerations: vec![core::Toleration {
                        key: Some("k".into()),
                        operator: Some("Exists".into()),
                        effect: Some("NoExecute".into()),
                        toleration_seconds: Some(extreme_i64(g)),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            (pod.encode_to_vec(), "v1", "Pod")
        }
        2 => {
            let lease = coordination::Lease {
                metadata,
                spec: Some(coordination::LeaseSpec {
                    holder_identity: Some("h".into()),
                    lease_duration_seconds: Some(extreme_i32(g)),
                    ..Default::default()
                }),
            };
            (lease.encode_to_vec(), "coordination.k8s.io/v1", "Lease")
        }
        _ => {
            let ns = core::Namespace {
                metadata,
                ..Default::default()
            };
            (ns.encode_to_vec(), "v1", "Namespace")
        }
    }
}

/// A protobuf body: an envelope around a typed object, its typeMeta sometimes wrong, its bytes
/// sometimes damaged, or deeply nested length-delimited fields.
pub fn body(g: &mut Gen, name: &str, namespace: Option<&str>) -> Vec<u8> {
    if g.chance(0.1) {
        // Field 2 (raw) of field 2 of ...: nesting past the decoder's depth limit.
        let mut inner = Vec::new();
        for _ in 0..g.below(400) {
            let mut outer = vec![0x12];
            prost::encoding::encode_varint(inner.len() as u64, &mut outer);
            outer.extend_from_slice(&inner);
            inner = outer;
        }
        return [MAGIC, &inner].concat();
    }
    let (raw, api_version, kind) = object(g, name, namespace);
    let type_meta = if g.chance(0.1) {
        TypeMeta {
            api_version: Some(g.bad_name()),
            kind: Some(g.bad_name()),
        }
    } else {
        TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }
    };
    let envelope = Unknown {
        type_meta: Some(type_meta),
        raw: Some(raw),
        content_encoding: g.chance(0.05).then(|| "gzip".into()),
        content_type: g.chance(0.05).then(|| "application/json".into()),
    };
    let mut body = [MAGIC, &envelope.encode_to_vec()].concat();
    if g.chance(0.3) {
        for _ in 0..=g.below(4) {
            match g.below(3) {
                0 => body.truncate(g.below(body.len() + 1)),
                1 if !body.is_empty() => {
                    let i = g.below(body.len());
                    body[i] = g.u64() as u8;
                }
                _ => {
                    let i = g.below(body.len() + 1);
                    let n = g.below(12);
                    let junk = g.bytes(n);
                    body.splice(i..i, junk);
                }
            }
        }
    }
    body
}
