//! Static pods: pod manifests in `--manifest-dir` (YAML or JSON, one pod per file) that this
//! node runs on its own authority. Each is mirrored into the API as `<name>-<node>`, bound to
//! this node and annotated `kubernetes.io/config.mirror` with the manifest's hash, and then run
//! like any pod bound here. The directory is re-read every `interval`: a changed manifest
//! replaces its mirror pod, a removed one deletes it, and a mirror pod deleted by a user comes
//! back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Resource as _;
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

/// Annotation naming a mirror pod (value: the manifest's hash).
pub const MIRROR: &str = "kubernetes.io/config.mirror";
/// Annotation with the manifest's hash.
pub const HASH: &str = "kubernetes.io/config.hash";
/// Annotation with where the pod came from.
pub const SOURCE: &str = "kubernetes.io/config.source";

/// Reads the manifests of `dir`: mirror pod name -> (pod, hash). Unreadable files are logged
/// and skipped, so one bad file does not stop the others.
pub fn read_manifests(dir: &Path, node: &str) -> BTreeMap<String, (Pod, String)> {
    let mut pods = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return pods;
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    for file in files {
        match parse(&file, node) {
            Ok((name, pod, hash)) => {
                if pods.insert(name.clone(), (pod, hash)).is_some() {
                    tracing::warn!(file = %file.display(), pod = name, "two manifests define the same static pod; the later file wins");
                }
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "ignoring a static pod manifest")
            }
        }
    }
    pods
}

fn parse(file: &Path, node: &str) -> Result<(String, Pod, String), String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let mut pod: Pod =
        serde_yaml::from_slice(&bytes).map_err(|e| format!("not a pod manifest: {e}"))?;
    let base = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("the manifest has no metadata.name")?;
    let hash = format!("{:x}", sha2::Sha256::digest(&bytes))[..16].to_owned();
    let name = format!("{base}-{node}");
    pod.metadata.name = Some(name.clone());
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    pod.metadata.resource_version = None;
    pod.metadata.uid = None;
    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(MIRROR.into(), hash.clone());
    annotations.insert(HASH.into(), hash.clone());
    annotations.insert(SOURCE.into(), "file".into());
    let spec = pod.spec.as_mut().ok_or("the manifest has no spec")?;
    spec.node_name = Some(node.to_owned());
    pod.status = None;
    Ok((name, pod, hash))
}

/// Keeps the mirror pods of `dir` in the API until shutdown.
pub async fn run(
    client: kube::Client,
    node: String,
    dir: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let all: Api<Pod> = Api::all(client.clone());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let want = read_manifests(&dir, &node);
        let owner = match nodes.get_opt(&node).await {
            Ok(Some(n)) => n.controller_owner_ref(&()).map(|mut o| {
                o.controller = Some(false);
                o
            }),
            _ => continue, // not registered yet
        };
        let have = match all
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await
        {
            Ok(l) => l.items,
            Err(e) => {
                tracing::debug!(error = %e, "listing mirror pods");
                continue;
            }
        };
        let mirrors: BTreeMap<String, Pod> = have
            .into_iter()
            .filter(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(MIRROR))
            })
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect();
        for (name, pod) in &mirrors {
            let hash = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(MIRROR))
                .cloned();
            let stale = want.get(name).is_none_or(|(_, h)| Some(h) != hash.as_ref());
            if stale && pod.metadata.deletion_timestamp.is_none() {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                tracing::info!(pod = name, "removing an outdated mirror pod");
                if let Err(e) = api.delete(name, &DeleteParams::default()).await {
                    tracing::warn!(pod = name, error = %e, "deleting a mirror pod");
                }
            }
        }
        for (name, (pod, _)) in want {
            if mirrors.contains_key(&name) {
                continue;
            }
            let mut pod = pod;
            if let Some(o) = &owner {
                pod.metadata.owner_references = Some(vec![o.clone()]);
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => tracing::info!(pod = name, "created the mirror pod of a static pod"),
                // Still terminating after a change: created on a later pass.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => tracing::warn!(pod = name, error = %e, "creating a mirror pod"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_become_mirror_pods_bound_to_the_node() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: 'kubia:v1'}]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let pods = read_manifests(dir.path(), "node-1");
        assert_eq!(pods.len(), 1, "{pods:?}");
        let (pod, hash) = &pods["web-node-1"];
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some("node-1")
        );
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(pod.metadata.annotations.as_ref().unwrap()[MIRROR], *hash);
        // A change changes the hash.
        std::fs::write(
            dir.path().join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c, image: 'kubia:v2'}]\n",
        )
        .unwrap();
        assert_ne!(&read_manifests(dir.path(), "node-1")["web-node-1"].1, hash);
    }
}
