//! Image store integration tests: imports of OCI layouts and docker-archives, pulls from a
//! real registry (Debian's docker-registry, distribution 2.8, on loopback with htpasswd basic
//! auth, the image pushed with skopeo) and from an in-process registry with bearer tokens and
//! a manifest list, pull policies, and pulls through mirrors (`--registry-config`).
//!
//! The real-registry test needs root and the `docker-registry` and `skopeo` packages (`cargo
//! xtask setup`); it says why and returns when they are missing.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use skiff_agent::images::layout::{write_oci_layout, ConfigSpec, LayerBuilder};
use skiff_agent::images::{
    Credentials, Digest, ImageError, ImageStore, MirrorConfig, PullPolicy, RegistryConfig,
};
use skiff_test_support::{is_root, require_root, wait_for};

fn has_program(p: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {p}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a program `test` needs is missing; says so (the test then skips).
fn missing_program(test: &str, programs: &[&str]) -> bool {
    match programs.iter().find(|p| !has_program(p)) {
        Some(p) => {
            eprintln!("skipping {test}: {p} is not installed (cargo xtask setup)");
            true
        }
        None => false,
    }
}

/// Copies the OCI layout at `layout` to `dest` (a skopeo transport reference) with `options`.
fn skopeo_copy(layout: &Path, dest: &str, options: &[String]) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "-q"])
        .args(options)
        .arg(format!("oci:{}", layout.display()))
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A two-layer image whose top layer deletes a file and makes a directory opaque.
fn layers() -> Vec<Vec<u8>> {
    let mut base = LayerBuilder::new();
    base.dir("bin", 0o755)
        .unwrap()
        .file("bin/hello", 0o755, b"#!/bin/sh\necho hello\n")
        .unwrap()
        .symlink("bin/hi", "hello")
        .unwrap()
        .dir("etc", 0o755)
        .unwrap()
        .file("etc/motd", 0o644, b"welcome\n")
        .unwrap()
        .dir("data", 0o755)
        .unwrap()
        .file("data/old1", 0o644, b"1")
        .unwrap()
        .file("data/old2", 0o644, b"2")
        .unwrap();
    let mut top = LayerBuilder::new();
    if is_root() {
        top.file("etc/.wh.motd", 0o644, b"")
            .unwrap()
            .file("data/.wh..wh..opq", 0o644, b"")
            .unwrap();
    }
    top.file("data/new", 0o644, b"new").unwrap();
    vec![base.finish().unwrap(), top.finish().unwrap()]
}

fn config() -> ConfigSpec {
    ConfigSpec {
        entrypoint: vec!["/bin/hello".into()],
        cmd: vec!["--loud".into()],
        env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
        working_dir: Some("/data".into()),
        exposed_ports: vec!["8080/tcp".into()],
        user: Some("65534".into()),
    }
}

fn check_image(store: &ImageStore, reference: &str) {
    let image = store.resolve(reference).unwrap();
    assert_eq!(image.layers.len(), 2);
    let (base, top) = (&image.layers[0], &image.layers[1]);
    assert!(base.starts_with(store.root()), "{}", base.display());
    assert_eq!(fs::read(base.join("etc/motd")).unwrap(), b"welcome\n");
    assert_eq!(
        fs::read_link(base.join("bin/hi")).unwrap(),
        Path::new("hello")
    );
    assert_eq!(fs::read(top.join("data/new")).unwrap(), b"new");
    if is_root() {
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(top.join("etc/motd"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(
            xattr::get(top.join("data"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
    }
    let c = &image.config;
    assert_eq!(c.entrypoint, ["/bin/hello"]);
    assert_eq!(c.cmd, ["--loud"]);
    assert_eq!(c.env, ["PATH=/bin", "GREETING=hi"]);
    assert_eq!(c.working_dir.as_deref(), Some("/data"));
    assert_eq!(c.exposed_ports, ["8080/tcp"]);
    assert_eq!(c.user.as_deref(), Some("65534"));
    assert!(image.size > 0);
}

#[test]
fn import_oci_layout_resolve_list_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let manifest = write_oci_layout(&layout, "kubia:test", &config(), &layers(), true).unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let refs = store.import_path(&layout, None).unwrap();
    assert_eq!(refs, ["docker.io/library/kubia:test"]);
    check_image(&store, "kubia:test");
    let image = store.resolve("docker.io/library/kubia:test").unwrap();
    assert_eq!(image.manifest_digest, manifest);
    // By digest, under the same repository.
    store
        .resolve(&format!("kubia@{manifest}"))
        .unwrap_or_else(|e| panic!("by digest: {e}"));

    // Importing again is a no-op; a second name shares the layers.
    store.import_oci_layout(&layout, None).unwrap();
    let again = tmp.path().join("again");
    fs::create_dir(&again).unwrap();
    write_oci_layout(
        &again,
        "127.0.0.1:5000/other:v9",
        &config(),
        &layers(),
        false,
    )
    .unwrap();
    // import_dir takes every layout in a directory (here: "layout", "again"; "store" is none).
    let mut imported = store.import_dir(tmp.path()).unwrap();
    imported.sort();
    assert_eq!(
        imported,
        ["127.0.0.1:5000/other:v9", "docker.io/library/kubia:test"]
    );
    let other = store.resolve("127.0.0.1:5000/other:v9").unwrap();
    assert_eq!(
        other.layers, image.layers,
        "same diff-ids, same directories"
    );

    let list = store.list().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().any(|s| s
        .references
        .contains(&"docker.io/library/kubia:test".to_owned())));

    store.remove("kubia:test").unwrap();
    assert!(matches!(
        store.resolve("kubia:test"),
        Err(ImageError::NotFound(_))
    ));
    // The other image still has its layers.
    check_image(&store, "127.0.0.1:5000/other:v9");
    store.remove("127.0.0.1:5000/other:v9").unwrap();
    assert!(store.list().unwrap().is_empty());
    let leftovers = |d: &str| fs::read_dir(store.root().join(d)).unwrap().count();
    assert_eq!(leftovers("blobs/sha256"), 0);
    assert_eq!(leftovers("layers/sha256"), 0);
}

#[test]
fn repeated_layers_are_one_lowerdir() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let ls = layers();
    let empty = LayerBuilder::new().finish().unwrap();
    let stack = vec![empty.clone(), ls[0].clone(), empty, ls[1].clone()];
    write_oci_layout(&layout, "rep:v1", &config(), &stack, true).unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    store.import_path(&layout, None).unwrap();
    let image = store.resolve("rep:v1").unwrap();
    assert_eq!(image.layers.len(), 3, "{:?}", image.layers);
    assert!(
        image.layers[1].read_dir().unwrap().next().is_none(),
        "the empty layer, once, in its upper place"
    );
}

#[test]
fn import_oci_layout_tar_and_tampered_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    write_oci_layout(&layout, "busybox", &config(), &layers(), true).unwrap();
    // As a tar (an "oci-archive").
    let tar_path = tmp.path().join("image.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", &layout).unwrap();
    b.into_inner().unwrap().flush().unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    assert_eq!(
        store.import_path(&tar_path, None).unwrap(),
        ["docker.io/library/busybox:latest"]
    );
    check_image(&store, "busybox");

    // A blob whose content does not match its name is refused, and nothing is tagged.
    let store2 = ImageStore::open(tmp.path().join("store2")).unwrap();
    let blobs = layout.join("blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut data = fs::read(&biggest).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&biggest, data).unwrap();
    let err = store2.import_path(&layout, None).unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(store2.list().unwrap().is_empty());
}

/// `docker save` format: manifest.json, the config as `<hex>.json`, `<id>/layer.tar`.
#[test]
fn import_docker_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let ls = layers();
    let diff_ids: Vec<String> = ls.iter().map(|l| Digest::of(l).to_string()).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/hello"], "Cmd": ["--loud"], "Env": ["PATH=/bin", "GREETING=hi"],
                   "WorkingDir": "/data", "ExposedPorts": {"8080/tcp": {}}, "User": "65534"},
        "container_config": {"Hostname": "ignored"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["kubia:v1", "registry.example:5000/team/kubia:v1"],
        "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
    }]);
    let tar_path = tmp.path().join("kubia.tar");
    let mut b = tar::Builder::new(fs::File::create(&tar_path).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data).unwrap();
    };
    add("aaa/layer.tar", &ls[0]);
    add("bbb/layer.tar", &ls[1]);
    add(&config_name, &config);
    add("repositories", b"{}");
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap().flush().unwrap();

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let refs = store.import_path(&tar_path, None).unwrap();
    assert_eq!(
        refs,
        [
            "docker.io/library/kubia:v1",
            "registry.example:5000/team/kubia:v1"
        ]
    );
    check_image(&store, "kubia:v1");
    check_image(&store, "registry.example:5000/team/kubia:v1");
    assert_eq!(store.resolve("kubia:v1").unwrap().id, Digest::of(&config));

    // skopeo's docker-archive output, when skopeo is installed.
    if !has_program("skopeo") {
        eprintln!("skipping the skopeo docker-archive part: skopeo is not installed");
        return;
    }
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    write_oci_layout(&layout, "x", &self::config(), &layers(), true).unwrap();
    let archive = tmp.path().join("skopeo.tar");
    skopeo_copy(
        &layout,
        &format!("docker-archive:{}:kubia:skopeo", archive.display()),
        &[],
    );
    assert_eq!(
        store.import_path(&archive, None).unwrap(),
        ["docker.io/library/kubia:skopeo"]
    );
    check_image(&store, "kubia:skopeo");
}

#[test]
fn import_refuses_archive_escapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("archive");
    fs::create_dir(&dir).unwrap();
    fs::write(tmp.path().join("secret.tar"), layers()[0].clone()).unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    fs::write(dir.join("c.json"), config).unwrap();
    fs::write(
        dir.join("manifest.json"),
        br#"[{"Config":"c.json","RepoTags":["x:y"],"Layers":["../secret.tar"]}]"#,
    )
    .unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let err = store.import_path(&dir, None).unwrap_err();
    assert!(matches!(err, ImageError::UnsafePath { .. }), "{err}");
    // Malformed manifest.json: an error, not a panic.
    fs::write(dir.join("manifest.json"), b"{not json").unwrap();
    assert!(store.import_path(&dir, None).is_err());
}

// ---------------------------------------------------------------------------------------------
// Registries

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's registry on loopback; killed and waited for when dropped.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const USER: &str = "skiff";
const PASSWORD: &str = "skiff-secret";
/// bcrypt (cost 4, so each request's check is cheap) of PASSWORD.
const PASSWORD_BCRYPT: &str = "$2b$04$abcdefghijklmnopqrstuupgREvGnL1v6MNbGXl5Q56fCF3R6JZQ2";

fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    fs::write(
        dir.path().join("htpasswd"),
        format!("{USER}:{PASSWORD_BCRYPT}\n"),
    )
    .unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n",
        root = dir.path().join("data").display(),
        htpasswd = dir.path().join("htpasswd").display(),
    );
    let config_path = dir.path().join("config.yml");
    fs::write(&config_path, config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let registry = Registry {
        child,
        addr,
        _dir: dir,
    };
    // Ready when /v2/ answers (401: it wants credentials).
    wait_for("the registry to come up", Duration::from_secs(20), || {
        let Ok(mut s) = std::net::TcpStream::connect(&registry.addr) else {
            return false;
        };
        let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
        let mut resp = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut resp);
        resp.starts_with("HTTP/1.0 401") || resp.starts_with("HTTP/1.1 401")
    });
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_docker_registry_with_basic_auth() {
    require_root!("the image store as the agent runs it");
    if missing_program(
        "pull_from_docker_registry_with_basic_auth",
        &["docker-registry", "skopeo"],
    ) {
        return;
    }
    let registry = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let manifest = write_oci_layout(&layout, "kubia:pushed", &config(), &layers(), true).unwrap();
    skopeo_copy(
        &layout,
        &format!("docker://{}/skiff/kubia:v1", registry.addr),
        &[
            "--dest-tls-verify=false".into(),
            format!("--dest-creds={USER}:{PASSWORD}"),
        ],
    );

    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    let reference = format!("{}/skiff/kubia:v1", registry.addr);
    let creds = Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
    };

    // Never: missing is ErrImageNeverPull.
    let err = store
        .ensure(&reference, PullPolicy::Never, Some(&creds))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NeverPull(_)), "{err}");
    assert_eq!(err.kubelet_reason(), "ErrImageNeverPull");

    // Without credentials: a readable pull error.
    let err = store.pull(&reference, None).await.unwrap_err();
    assert_eq!(err.kubelet_reason(), "ErrImagePull");
    assert!(err.to_string().contains("credentials"), "{err}");

    // IfNotPresent pulls.
    let image = store
        .ensure(&reference, PullPolicy::IfNotPresent, Some(&creds))
        .await
        .unwrap();
    assert_eq!(image.manifest_digest, manifest);
    check_image(&store, &reference);
    // By digest too.
    store
        .resolve(&format!("{}/skiff/kubia@{manifest}", registry.addr))
        .unwrap();

    // Always asks the registry again (nothing new to download).
    let again = store
        .ensure(&reference, PullPolicy::Always, Some(&creds))
        .await
        .unwrap();
    assert_eq!(again.layers, image.layers);

    // A tag the registry does not have.
    let missing = format!("{}/skiff/kubia:nope", registry.addr);
    let err = store
        .ensure(&missing, PullPolicy::IfNotPresent, Some(&creds))
        .await
        .unwrap_err();
    assert_eq!(err.kubelet_reason(), "ErrImagePull");
    assert!(err.to_string().contains("not found"), "{err}");

    // The registry gone: Always falls back to the stored image, IfNotPresent does not pull.
    drop(registry);
    store
        .ensure(&reference, PullPolicy::Always, Some(&creds))
        .await
        .unwrap();
    store
        .ensure(&reference, PullPolicy::IfNotPresent, None)
        .await
        .unwrap();
}

// An in-process registry with token auth and a manifest list, to test the bearer flow and the
// platform choice without a token server package.

struct Fake {
    blobs: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, (String, Vec<u8>)>,
    token_requests: std::sync::atomic::AtomicUsize,
    blob_requests: std::sync::atomic::AtomicUsize,
}

async fn fake_registry(fake: Arc<Fake>) -> (String, tokio::task::JoinHandle<()>) {
    use axum::extract::{Path as AxPath, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let challenge = format!(r#"Bearer realm="http://{addr}/token",service="fake-registry""#);
    let unauthorized = move || {
        (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", challenge.clone())],
            "",
        )
            .into_response()
    };
    let token = |State(fake): State<Arc<Fake>>,
                 headers: HeaderMap,
                 Query(q): Query<HashMap<String, String>>| async move {
        fake.token_requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // "user:pass" base64.
        let basic = headers.get("authorization").and_then(|v| v.to_str().ok());
        if basic != Some("Basic dXNlcjpwYXNz")
            || q.get("scope").map(String::as_str) != Some("repository:team/app:pull")
            || q.get("service").map(String::as_str) != Some("fake-registry")
        {
            return (StatusCode::UNAUTHORIZED, "").into_response();
        }
        axum::Json(serde_json::json!({"token": "t0ken"})).into_response()
    };
    let unauth = unauthorized.clone();
    let v2 = move |State(fake): State<Arc<Fake>>,
                   headers: HeaderMap,
                   AxPath(rest): AxPath<String>| {
        let unauth = unauth.clone();
        async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer t0ken") {
                return unauth();
            }
            let not_found = || (StatusCode::NOT_FOUND, "").into_response();
            if let Some((_, reference)) = rest.split_once("/manifests/") {
                return match fake.manifests.get(reference) {
                    Some((media_type, data)) => {
                        ([("content-type", media_type.clone())], data.clone()).into_response()
                    }
                    None => not_found(),
                };
            }
            if let Some((_, digest)) = rest.split_once("/blobs/") {
                fake.blob_requests
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return match fake.blobs.get(digest) {
                    Some(data) => data.clone().into_response(),
                    None => not_found(),
                };
            }
            Response::new(axum::body::Body::empty())
        }
    };
    let app = axum::Router::new()
        .route("/token", get(token))
        .route("/v2/{*rest}", get(v2))
        .with_state(fake);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

#[tokio::test]
async fn pull_with_bearer_token_and_manifest_list() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let manifest_digest = write_oci_layout(&layout, "x", &config(), &layers(), true).unwrap();
    let mut blobs = HashMap::new();
    for e in fs::read_dir(layout.join("blobs/sha256")).unwrap().flatten() {
        blobs.insert(
            format!("sha256:{}", e.file_name().to_string_lossy()),
            fs::read(e.path()).unwrap(),
        );
    }
    let manifest_bytes = blobs[&manifest_digest.to_string()].clone();
    let other = format!("sha256:{}", "c".repeat(64));
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 10, "digest": other,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": manifest_bytes.len(),
             "digest": manifest_digest.to_string(), "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .unwrap();
    let list_digest = Digest::of(&list);
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json".to_owned();
    let list_type = "application/vnd.docker.distribution.manifest.list.v2+json".to_owned();
    let manifests = HashMap::from([
        ("v2".to_owned(), (list_type.clone(), list.clone())),
        (list_digest.to_string(), (list_type, list)),
        (manifest_digest.to_string(), (oci_manifest, manifest_bytes)),
    ]);
    let fake = Arc::new(Fake {
        blobs,
        manifests,
        token_requests: Default::default(),
        blob_requests: Default::default(),
    });
    let (addr, server) = fake_registry(fake.clone()).await;

    // `localhost:<port>` is a loopback host: plain HTTP.
    let port = addr.rsplit(':').next().unwrap();
    let reference = format!("localhost:{port}/team/app:v2");
    let store =
        ImageStore::open_with(tmp.path().join("store"), RegistryConfig::loopback_only()).unwrap();
    let creds = Credentials {
        username: "user".into(),
        password: "pass".into(),
    };
    let image = store.pull(&reference, Some(&creds)).await.unwrap();
    assert_eq!(image.manifest_digest, manifest_digest);
    assert!(
        fake.token_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    check_image(&store, &reference);
    // The list's digest resolves to the platform image.
    let by_list = store
        .resolve(&format!("localhost:{port}/team/app@{list_digest}"))
        .unwrap();
    assert_eq!(by_list.manifest_digest, manifest_digest);

    // Wrong credentials: the token endpoint refuses.
    let store2 = ImageStore::open(tmp.path().join("store2")).unwrap();
    let bad = Credentials {
        username: "user".into(),
        password: "wrong".into(),
    };
    let err = store2.pull(&reference, Some(&bad)).await.unwrap_err();
    assert_eq!(err.kubelet_reason(), "ErrImagePull");

    // Pods starting together with IfNotPresent share one download.
    let store3 = ImageStore::open(tmp.path().join("store3")).unwrap();
    let before = fake.blob_requests.load(std::sync::atomic::Ordering::SeqCst);
    let pulls = (0..6).map(|_| {
        let (store3, reference, creds) = (store3.clone(), reference.clone(), creds.clone());
        tokio::spawn(async move {
            store3
                .ensure(&reference, PullPolicy::IfNotPresent, Some(&creds))
                .await
                .unwrap()
        })
    });
    for p in pulls.collect::<Vec<_>>() {
        assert_eq!(p.await.unwrap().manifest_digest, manifest_digest);
    }
    let after = fake.blob_requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after - before, 3, "config and two layers, once");

    // Not on the allowed list: refused without a connection attempt.
    let err = store
        .pull("docker.io/library/busybox:latest", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("allowed"), "{err}");
    server.abort();
}

/// The sample images that `cargo xtask images` writes import and carry what the runtime needs.
#[test]
fn sample_images_when_built() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/images");
    if !dir.join("kubia-v1/index.json").is_file() {
        eprintln!("skipping sample_images_when_built: run `cargo xtask images` first");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let refs = store.import_dir(&dir).unwrap();
    assert!(
        refs.contains(&"docker.io/library/kubia:v1".to_owned()),
        "{refs:?}"
    );
    let kubia = store.resolve("kubia:v1").unwrap();
    assert_eq!(kubia.config.entrypoint, ["/kubia"]);
    assert_eq!(kubia.config.exposed_ports, ["8080/tcp"]);
    assert!(kubia.layers[0].join("kubia").is_file());
    if refs.contains(&"docker.io/library/busybox:latest".to_owned()) {
        let bb = store.resolve("busybox").unwrap();
        assert_eq!(
            fs::read_link(bb.layers[0].join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
    }
}

/// Unmounts (lazily) when dropped, so a failing assertion leaves no mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The unpacked layers stacked by overlayfs give the image's filesystem: the top layer's
/// whiteout hides a file and its opaque directory hides the lower directory's contents.
#[test]
fn layers_stack_in_overlayfs() {
    require_root!("mount, whiteouts");
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    write_oci_layout(&layout, "stack:v1", &config(), &layers(), true).unwrap();
    let store = ImageStore::open(tmp.path().join("store")).unwrap();
    store.import_path(&layout, None).unwrap();
    let image = store.resolve("stack:v1").unwrap();
    let lower: Vec<String> = image
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let (upper, work, merged) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount overlay {options}: {e}"));
    let _mounted = Mounted(merged.clone());
    assert_eq!(
        fs::read(merged.join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
    assert!(!merged.join("etc/motd").exists(), "whiteout hides etc/motd");
    let mut data: Vec<String> = fs::read_dir(merged.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    data.sort();
    assert_eq!(data, ["new"], "opaque data/ hides the lower layer's files");
    // Writes land in the upper directory, never in the shared layers.
    fs::write(merged.join("bin/hello"), b"changed").unwrap();
    assert_eq!(
        fs::read(image.layers[0].join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Mirrors (`--registry-config`, k3s's registries.yaml)

/// A loopback listener standing in for a registry that must never be contacted: it counts
/// the connections it accepts and closes them.
struct Trap {
    addr: String,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl Trap {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        // The thread ends with the test process.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        });
        Self { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn registry_config(dir: &Path, yaml: &str, disable_default: bool) -> RegistryConfig {
    let path = dir.join("registries.yaml");
    fs::write(&path, yaml).unwrap();
    RegistryConfig {
        mirrors: MirrorConfig::load(&path).unwrap(),
        disable_default_endpoint: disable_default,
        // Belt and braces: whatever happens, nothing in this test leaves loopback.
        allowed: Some(Vec::new()),
        ..RegistryConfig::default()
    }
}

/// `docker.io/library/foo:tag` through a mirror that keeps images under `<registry>/<repo>`
/// (the layout of the lab's registry at 172.31.250.1:5000), with the mirror's credentials
/// from `configs`; with the default endpoint disabled and the mirrors down the pull fails
/// clearly and the registry itself is never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_mirror_with_rewrite_and_no_fallback() {
    if missing_program(
        "pull_through_mirror_with_rewrite_and_no_fallback",
        &["docker-registry", "skopeo"],
    ) {
        return;
    }
    let registry = start_registry();
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let manifest = write_oci_layout(&layout, "foo:tag", &config(), &layers(), true).unwrap();
    skopeo_copy(
        &layout,
        &format!("docker://{}/docker.io/library/foo:tag", registry.addr),
        &[
            "--dest-tls-verify=false".into(),
            format!("--dest-creds={USER}:{PASSWORD}"),
        ],
    );
    let dead = format!("127.0.0.1:{}", free_port());
    let origin = Trap::start();

    // The first mirror is down, the second serves `docker.io/library/foo` for `foo:tag`.
    let yaml = format!(
        r#"
mirrors:
  docker.io:
    endpoint: ["http://{dead}", "http://{addr}"]
    rewrite:
      "^(.*)$": "docker.io/$1"
  "{origin}":
    endpoint: ["http://{dead}"]
configs:
  "{addr}":
    auth:
      username: {USER}
      password: {PASSWORD}
"#,
        addr = registry.addr,
        origin = origin.addr,
    );
    let store = ImageStore::open_with(
        tmp.path().join("store"),
        registry_config(tmp.path(), &yaml, true),
    )
    .unwrap();
    let image = store
        .ensure("foo:tag", PullPolicy::IfNotPresent, None)
        .await
        .unwrap();
    assert_eq!(image.manifest_digest, manifest);
    // Stored under the name the pod asked for, not the mirror's.
    assert_eq!(image.reference, "docker.io/library/foo:tag");
    check_image(&store, "docker.io/library/foo:tag");
    store.resolve(&format!("foo@{manifest}")).unwrap();

    // A tag the mirror does not have: both mirrors' answers, and why the registry itself
    // (registry-1.docker.io) was not asked.
    let err = store.pull("foo:missing", None).await.unwrap_err();
    assert_eq!(err.kubelet_reason(), "ErrImagePull");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&dead) && msg.contains("not found"), "{msg}");
    assert!(msg.contains("disable-default-registry-endpoint"), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");

    // The origin is on loopback (always allowed) and its only mirror is down: with the
    // default endpoint disabled, the pull fails and the origin sees no connection.
    let at_origin = format!("{}/team/app:v1", origin.addr);
    let err = store.pull(&at_origin, None).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&dead), "{msg}");
    assert!(
        msg.contains("default endpoint") && msg.contains("disabled"),
        "{msg}"
    );
    assert_eq!(origin.hits(), 0, "the origin registry was contacted");

    // Offline node: a "*" entry covers every registry; with the mirror gone nothing is pulled
    // and nothing but the mirror is tried.
    let offline_yaml = format!(
        "mirrors:\n  \"*\":\n    endpoint: [\"http://{addr}\"]\n    rewrite:\n      \"^(.*)$\": \"docker.io/$1\"\nconfigs:\n  \"{addr}\":\n    auth: {{username: {USER}, password: {PASSWORD}}}\n",
        addr = registry.addr
    );
    let offline = ImageStore::open_with(
        tmp.path().join("offline"),
        registry_config(tmp.path(), &offline_yaml, true),
    )
    .unwrap();
    offline.pull("foo:tag", None).await.unwrap();
    let registry_addr = registry.addr.clone();
    drop(registry);
    for image in ["foo:other", &format!("{}/x/y:1", origin.addr)] {
        let err = offline.pull(image, None).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&registry_addr) && msg.contains("disabled"),
            "{image}: {msg}"
        );
    }
    assert_eq!(origin.hits(), 0, "the origin registry was contacted");

    // The same without --disable-default-registry-endpoint: the origin is tried after the
    // mirror (the trap proves it would have seen the pulls above).
    let fallback = ImageStore::open_with(
        tmp.path().join("fallback"),
        registry_config(tmp.path(), &yaml, false),
    )
    .unwrap();
    let err = fallback.pull(&at_origin, None).await.unwrap_err();
    assert!(err.to_string().contains(&origin.addr), "{err}");
    assert!(origin.hits() >= 1, "the origin was not tried");
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files
/// in `dir`: ca.pem, server.pem, server-key.pem, client.pem, client-key.pem.
fn write_test_pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "skiff-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
    for (name, purpose) in [
        ("server", ExtendedKeyUsagePurpose::ServerAuth),
        ("client", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        params.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    }
}

/// Debian's registry on loopback over TLS, asking for a client certificate from `pki`'s CA.
fn start_tls_registry(pki: &Path) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("localhost:{}", free_port());
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: {addr}\n  tls:\n    certificate: {pki}/server.pem\n    key: {pki}/server-key.pem\n    clientcas:\n      - {pki}/ca.pem\n",
        root = dir.path().join("data").display(),
        pki = pki.display(),
    );
    let config_path = dir.path().join("config.yml");
    fs::write(&config_path, config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("registry.log")).unwrap())
        .spawn()
        .unwrap();
    let registry = Registry {
        child,
        addr,
        _dir: dir,
    };
    wait_for(
        "the TLS registry to listen",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(&registry.addr).is_ok(),
    );
    registry
}

/// A mirror over TLS with the registries.yaml's own CA and client certificate (rustls), and
/// what happens without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_through_tls_mirror_with_ca_and_client_certificate() {
    if missing_program(
        "pull_through_tls_mirror_with_ca_and_client_certificate",
        &["docker-registry", "skopeo"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pki = tmp.path().join("pki");
    fs::create_dir(&pki).unwrap();
    write_test_pki(&pki);
    let registry = start_tls_registry(&pki);
    // skopeo reads a client certificate from a directory (*.cert, *.key, CA *.crt).
    let certs = tmp.path().join("skopeo-certs");
    fs::create_dir(&certs).unwrap();
    fs::copy(pki.join("client.pem"), certs.join("client.cert")).unwrap();
    fs::copy(pki.join("client-key.pem"), certs.join("client.key")).unwrap();
    fs::copy(pki.join("ca.pem"), certs.join("ca.crt")).unwrap();
    let layout = tmp.path().join("layout");
    fs::create_dir(&layout).unwrap();
    let manifest = write_oci_layout(&layout, "foo:tag", &config(), &layers(), true).unwrap();
    skopeo_copy(
        &layout,
        &format!("docker://{}/docker.io/library/foo:tag", registry.addr),
        &[format!("--dest-cert-dir={}", certs.display())],
    );

    let conf = tmp.path().join("conf");
    fs::create_dir(&conf).unwrap();
    let with_tls = |tls: &str| {
        let yaml = format!(
            "mirrors:\n  docker.io:\n    endpoint: [\"https://{addr}\"]\n    rewrite:\n      \"^(.*)$\": \"docker.io/$1\"\nconfigs:\n  \"{addr}\":\n    tls: {tls}\n",
            addr = registry.addr,
        );
        registry_config(&conf, &yaml, true)
    };
    let pki_dir = pki.display();
    // CA and client certificate (paths relative to the file's directory work too).
    let full = format!(
        "{{ca_file: ../pki/ca.pem, cert_file: {pki_dir}/client.pem, key_file: {pki_dir}/client-key.pem}}"
    );
    let store = ImageStore::open_with(tmp.path().join("s1"), with_tls(&full)).unwrap();
    let image = store.pull("foo:tag", None).await.unwrap();
    assert_eq!(image.manifest_digest, manifest);
    check_image(&store, "docker.io/library/foo:tag");

    // The CA but no client certificate: the registry refuses the handshake.
    let ca_only = format!("{{ca_file: {pki_dir}/ca.pem}}");
    let store = ImageStore::open_with(tmp.path().join("s2"), with_tls(&ca_only)).unwrap();
    let err = store.pull("foo:tag", None).await.unwrap_err();
    assert!(err.to_string().contains(&registry.addr), "{err}");

    // A client certificate but not the CA: the server is not trusted ...
    let no_ca = format!("{{cert_file: {pki_dir}/client.pem, key_file: {pki_dir}/client-key.pem}}");
    let store = ImageStore::open_with(tmp.path().join("s3"), with_tls(&no_ca)).unwrap();
    let err = store.pull("foo:tag", None).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // ... unless verification is skipped.
    let skip = format!(
        "{{cert_file: {pki_dir}/client.pem, key_file: {pki_dir}/client-key.pem, insecure_skip_verify: true}}"
    );
    let store = ImageStore::open_with(tmp.path().join("s4"), with_tls(&skip)).unwrap();
    store.pull("foo:tag", None).await.unwrap();
}
