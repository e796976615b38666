//! `cluster down` and the store: by default `down` deletes the API server's store, so the next
//! `up` in the same directory starts an empty cluster; with `Data::Keep` (`down --keep-data`)
//! the next `up` comes back with the same objects. Needs root.

use skiff_e2e::cluster::{self, Data, Options};
use skiff_e2e::kubectl::Kubectl;
use skiff_test_support::require_root;

/// Takes the cluster in `dir` down when dropped, also when the test panics.
struct Down<'a>(&'a std::path::Path, &'a std::path::Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if cluster::load(self.0).is_ok() {
            let _ = cluster::down(self.0, self.1, Data::Remove);
        }
    }
}

fn configmaps(k: &Kubectl) -> Vec<String> {
    k.items(&["get", "configmaps", "-n", "default", "-l", "lifecycle=test"])
        .iter()
        .filter_map(|c| c.pointer("/metadata/name")?.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn down_deletes_the_store_unless_asked_to_keep_it() {
    require_root!("network namespaces");
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options {
        dir: tmp.path().to_owned(),
        ..Options::test("tlife", 213, 1)
    };
    let _down = Down(&opts.dir, &opts.agent_bin);

    let state = cluster::up(&opts).unwrap();
    let k = Kubectl(state.kubeconfig.clone());
    k.run(&["create", "configmap", "survivor", "--from-literal=a=b"]);
    k.run(&["label", "configmap", "survivor", "lifecycle=test"]);
    assert_eq!(configmaps(&k), ["survivor"]);

    cluster::down(&opts.dir, &opts.agent_bin, Data::Keep).unwrap();
    assert!(cluster::store_dir(&opts.dir).exists());
    let state = cluster::up(&opts).unwrap();
    let k = Kubectl(state.kubeconfig.clone());
    assert_eq!(configmaps(&k), ["survivor"], "kept data comes back");

    cluster::down(&opts.dir, &opts.agent_bin, Data::Remove).unwrap();
    assert!(!cluster::store_dir(&opts.dir).exists());
    let state = cluster::up(&opts).unwrap();
    let k = Kubectl(state.kubeconfig.clone());
    assert!(
        configmaps(&k).is_empty(),
        "a cluster brought up after a plain `down` starts empty"
    );
}
