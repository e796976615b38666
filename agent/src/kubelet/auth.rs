//! Authentication and authorization of the kubelet endpoint, as the kubelet does them with
//! `authentication.x509.clientCAFile`, `authentication.webhook` and `authorization.mode:
//! Webhook`:
//!
//! - **Who**: a client certificate that the cluster CA signed (its CommonName is the user, its
//!   Organizations the groups; judged once per connection by the TLS layer, [`PeerIdentity`]),
//!   else a bearer token, which the API server identifies through a TokenReview (results
//!   cached for 2 minutes, refusals for 10 seconds, keyed by a hash of the token). Nothing
//!   else: 401.
//! - **May they**: a SubjectAccessReview through the API for the attributes the kubelet derives
//!   from the request ([`request_attributes`]): resource `nodes`, name this node, the
//!   subresource its path maps to, the verb its method maps to (allowed answers cached for 5
//!   minutes, denials for 30 seconds). Denied: 403
//!   `Forbidden (user=U, verb=V, resource=nodes, subresource=S)`.
//!
//! With `--kubeconfig`, the kubeconfig's bearer token (skiff's admin token, which the API server
//! used to call the agent with) is accepted as it was, without a round trip.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::Api;
use sha2::Digest as _;

/// The group every authenticated user is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// How long a TokenReview's user is trusted.
pub const AUTHN_TTL: Duration = Duration::from_secs(120);
/// How long a refused token stays refused.
pub const AUTHN_FAILURE_TTL: Duration = Duration::from_secs(10);
/// How long an allowed SubjectAccessReview is trusted.
pub const AUTHZ_ALLOW_TTL: Duration = Duration::from_secs(300);
/// How long a denial is kept.
pub const AUTHZ_DENY_TTL: Duration = Duration::from_secs(30);
/// Entries a cache holds at most.
const CACHE_CAPACITY: usize = 4096;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// The UID.
    pub uid: String,
    /// The groups (with `system:authenticated`).
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user in `groups`, plus `system:authenticated`.
    pub fn new(name: impl Into<String>, groups: impl IntoIterator<Item = String>) -> Self {
        let mut user = Self {
            name: name.into(),
            groups: groups.into_iter().collect(),
            ..Self::default()
        };
        user.add_authenticated();
        user
    }

    fn add_authenticated(&mut self) {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_owned());
        }
    }
}

/// What the TLS layer established about a connection's client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// None was presented (or client certificates are not asked for).
    None,
    /// One the cluster CA signed.
    User(Arc<UserInfo>),
    /// One that does not verify (another CA, expired, not for client auth).
    Invalid(String),
}

/// The authorization attributes of a request to the kubelet endpoint: the verb and the
/// subresources of `nodes/<this node>` to try in order (any one allowing is enough).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    /// The verb.
    pub verb: String,
    /// The subresources, most specific first.
    pub subresources: Vec<&'static str>,
}

/// Whether `path` is `prefix` or below it (the kubelet's `isSubpath`).
fn is_subpath(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The subresources the kubelet checks for a path (with fine-grained kubelet authorization):
/// `/stats` → `stats`, `/metrics` → `metrics`, `/logs` → `log`, `/spec` → `spec`,
/// `/checkpoint` → `checkpoint`; `/pods` and `/runningpods` → `pods` then `proxy`, `/healthz`
/// → `healthz` then `proxy`, `/configz` → `configz` then `proxy`, `/statusz` → `statusz` then
/// `proxy`; everything else (`/containerLogs`, `/exec`, `/attach`, `/portForward`, `/run`, ...)
/// → `proxy`.
pub fn subresources(path: &str) -> Vec<&'static str> {
    let mut out = Vec::with_capacity(2);
    for (prefix, fine) in [
        ("/pods", "pods"),
        ("/healthz", "healthz"),
        ("/configz", "configz"),
        ("/statusz", "statusz"),
        ("/runningpods/", "pods"),
    ] {
        if is_subpath(path, prefix) {
            out.push(fine);
            break;
        }
    }
    let coarse = [
        ("/stats/", "stats"),
        ("/metrics", "metrics"),
        ("/logs/", "log"),
        ("/spec/", "spec"),
        ("/checkpoint/", "checkpoint"),
    ]
    .into_iter()
    .find(|(prefix, _)| is_subpath(path, prefix))
    .map_or("proxy", |(_, s)| s);
    out.push(coarse);
    out
}

/// The verb for a method: GET and HEAD → get, POST → create, PUT → update, PATCH → patch,
/// DELETE → delete (others: the method in lower case). A websocket upgrade (a GET) to the
/// streaming endpoints (exec, attach, portforward) starts something: create.
pub fn verb(method: &Method, path: &str, websocket_upgrade: bool) -> String {
    let streaming = ["/exec", "/attach", "/portForward", "/portforward"]
        .iter()
        .any(|p| is_subpath(path, p));
    match *method {
        Method::GET if websocket_upgrade && streaming => "create".into(),
        Method::GET | Method::HEAD => "get".into(),
        Method::POST => "create".into(),
        Method::PUT => "update".into(),
        Method::PATCH => "patch".into(),
        Method::DELETE => "delete".into(),
        ref other => other.as_str().to_ascii_lowercase(),
    }
}

/// A request's attributes.
pub fn request_attributes(
    method: &Method,
    path: &str,
    websocket_upgrade: bool,
) -> RequestAttributes {
    RequestAttributes {
        verb: verb(method, path, websocket_upgrade),
        subresources: subresources(path),
    }
}

/// The kubelet's 403 message.
pub fn forbidden_message(user: &str, attributes: &RequestAttributes) -> String {
    match attributes.subresources.as_slice() {
        [one] => format!(
            "Forbidden (user={user}, verb={}, resource=nodes, subresource={one})",
            attributes.verb
        ),
        many => format!(
            "Forbidden (user={user}, verb={}, resource=nodes, subresource(s)=[{}])",
            attributes.verb,
            many.join(" ")
        ),
    }
}

/// A map whose entries expire, bounded in size; the caller passes the time.
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The value of `key` if it has not expired at `now`.
    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((v, expires)) if now < *expires => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` for `ttl` from `now`. When full, expired entries go first; if that frees
    /// nothing, everything goes (a flood of distinct keys must not grow memory).
    pub fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| now < *expires);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + ttl));
    }

    /// The number of entries (expired ones included until they are seen).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed.
    pub allowed: bool,
    /// Why (the authorizer's words).
    pub reason: String,
}

/// Who reviews tokens and access: the API server (TokenReview, SubjectAccessReview).
pub trait Reviewer: Send + Sync {
    /// The user a bearer token belongs to; `None` when it authenticates no one.
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, String>>;

    /// Whether `user` may `verb` the subresource of node `node`.
    fn review_access<'a>(
        &'a self,
        user: &'a UserInfo,
        verb: &'a str,
        node: &'a str,
        subresource: &'a str,
    ) -> BoxFuture<'a, Result<Decision, String>>;
}

/// The API server as the reviewer (through the agent's own credentials).
#[derive(Clone)]
pub struct ApiReviewer(pub kube::Client);

impl Reviewer for ApiReviewer {
    fn review_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserInfo>, String>> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.0.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: None,
                },
                ..TokenReview::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let Some(status) = answer.status else {
                return Ok(None);
            };
            if status.authenticated != Some(true) {
                return Ok(None);
            }
            let Some(user) = status.user else {
                return Ok(None);
            };
            let mut info = UserInfo {
                name: user.username.unwrap_or_default(),
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            };
            if info.name.is_empty() {
                return Ok(None);
            }
            info.add_authenticated();
            Ok(Some(info))
        })
    }

    fn review_access<'a>(
        &'a self,
        user: &'a UserInfo,
        verb: &'a str,
        node: &'a str,
        subresource: &'a str,
    ) -> BoxFuture<'a, Result<Decision, String>> {
        Box::pin(async move {
            let api: Api<SubjectAccessReview> = Api::all(self.0.clone());
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(user.name.clone()),
                    uid: (!user.uid.is_empty()).then(|| user.uid.clone()),
                    groups: Some(user.groups.clone()),
                    extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.to_owned()),
                        group: Some(String::new()),
                        version: Some("v1".into()),
                        resource: Some("nodes".into()),
                        subresource: Some(subresource.to_owned()),
                        name: Some(node.to_owned()),
                        ..ResourceAttributes::default()
                    }),
                    ..SubjectAccessReviewSpec::default()
                },
                ..SubjectAccessReview::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("SubjectAccessReview: {e}"))?;
            let status = answer.status.unwrap_or_default();
            Ok(Decision {
                allowed: status.allowed && status.denied != Some(true),
                reason: status.reason.unwrap_or_default(),
            })
        })
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401.
    Unauthorized,
    /// 403, with the kubelet's message.
    Forbidden(String),
    /// 500: the reviewer could not be asked.
    Error(String),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who.
    pub user: Arc<UserInfo>,
    /// Authorized without a review (the `--kubeconfig` admin token).
    pub trusted: bool,
}

type AuthzKey = (Arc<UserInfo>, String, &'static str);

/// The kubelet endpoint's authenticator and authorizer.
pub struct KubeletAuth {
    node: String,
    reviewer: Option<Arc<dyn Reviewer>>,
    static_token: Option<String>,
    authn: TtlCache<[u8; 32], Option<Arc<UserInfo>>>,
    authz: TtlCache<AuthzKey, Decision>,
}

impl KubeletAuth {
    /// The node whose endpoint this guards.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// For node `node`: tokens and access reviewed by `reviewer`; `static_token` (the
    /// `--kubeconfig` admin token) accepted as an administrator without review.
    pub fn new(
        node: impl Into<String>,
        reviewer: Option<Arc<dyn Reviewer>>,
        static_token: Option<String>,
    ) -> Self {
        Self {
            node: node.into(),
            reviewer,
            static_token: static_token.filter(|t| !t.is_empty()),
            authn: TtlCache::new(CACHE_CAPACITY),
            authz: TtlCache::new(CACHE_CAPACITY),
        }
    }

    /// Who the request is: its connection's certificate, else its bearer token.
    pub async fn authenticate(
        &self,
        peer: &PeerIdentity,
        bearer: Option<&str>,
        now: Instant,
    ) -> Result<Caller, Refusal> {
        if let PeerIdentity::User(user) = peer {
            return Ok(Caller {
                user: user.clone(),
                trusted: false,
            });
        }
        let token = bearer.map(str::trim).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(Refusal::Unauthorized);
        };
        if let Some(admin) = &self.static_token {
            if constant_time_eq(token.as_bytes(), admin.as_bytes()) {
                return Ok(Caller {
                    user: Arc::new(UserInfo::new("admin", ["system:masters".to_owned()])),
                    trusted: true,
                });
            }
        }
        let Some(reviewer) = &self.reviewer else {
            return Err(Refusal::Unauthorized);
        };
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let user = match self.authn.get(&key, now) {
            Some(cached) => cached,
            None => {
                let reviewed = reviewer.review_token(token).await.map_err(|e| {
                    tracing::warn!(error = %e, "authenticating a kubelet API request failed");
                    Refusal::Unauthorized
                })?;
                let user = reviewed.map(Arc::new);
                let ttl = if user.is_some() {
                    AUTHN_TTL
                } else {
                    AUTHN_FAILURE_TTL
                };
                self.authn.insert(key, user.clone(), ttl, now);
                user
            }
        };
        user.map(|user| Caller {
            user,
            trusted: false,
        })
        .ok_or(Refusal::Unauthorized)
    }

    /// Whether `caller` may make a request with these attributes.
    pub async fn authorize(
        &self,
        caller: &Caller,
        attributes: &RequestAttributes,
        now: Instant,
    ) -> Result<(), Refusal> {
        if caller.trusted {
            return Ok(());
        }
        let forbidden = || Refusal::Forbidden(forbidden_message(&caller.user.name, attributes));
        let Some(reviewer) = &self.reviewer else {
            return Err(forbidden());
        };
        for subresource in &attributes.subresources {
            let key = (caller.user.clone(), attributes.verb.clone(), *subresource);
            let decision = match self.authz.get(&key, now) {
                Some(d) => d,
                None => {
                    let d = reviewer
                        .review_access(&caller.user, &attributes.verb, &self.node, subresource)
                        .await
                        .map_err(|e| {
                            tracing::warn!(error = %e, user = %caller.user.name, "authorizing a kubelet API request failed");
                            Refusal::Error(format!(
                                "Authorization error (user={}, verb={}, resource=nodes, subresource={subresource})",
                                caller.user.name, attributes.verb
                            ))
                        })?;
                    let ttl = if d.allowed {
                        AUTHZ_ALLOW_TTL
                    } else {
                        AUTHZ_DENY_TTL
                    };
                    self.authz.insert(key, d.clone(), ttl, now);
                    d
                }
            };
            if decision.allowed {
                return Ok(());
            }
            tracing::debug!(user = %caller.user.name, verb = %attributes.verb, subresource, reason = %decision.reason, "kubelet API access denied");
        }
        Err(forbidden())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn paths_map_to_the_kubelets_subresources() {
        let cases: &[(&str, &[&str])] = &[
            ("/stats/summary", &["stats"]),
            ("/stats", &["stats"]),
            ("/statsx", &["proxy"]),
            ("/metrics", &["metrics"]),
            ("/metrics/cadvisor", &["metrics"]),
            ("/metrics/probes", &["metrics"]),
            ("/logs/syslog", &["log"]),
            ("/logs", &["log"]),
            ("/spec/", &["spec"]),
            ("/checkpoint/default/p/c", &["checkpoint"]),
            ("/pods", &["pods", "proxy"]),
            ("/pods/", &["pods", "proxy"]),
            ("/podsx", &["proxy"]),
            ("/runningpods/", &["pods", "proxy"]),
            ("/healthz", &["healthz", "proxy"]),
            ("/healthz/ping", &["healthz", "proxy"]),
            ("/configz", &["configz", "proxy"]),
            ("/statusz", &["statusz", "proxy"]),
            ("/containerLogs/default/web/app", &["proxy"]),
            ("/exec/default/web/app", &["proxy"]),
            ("/attach/default/web/app", &["proxy"]),
            ("/portForward/default/web", &["proxy"]),
            ("/run/default/web/app", &["proxy"]),
            ("/", &["proxy"]),
        ];
        for (path, want) in cases {
            assert_eq!(subresources(path), *want, "{path}");
        }
    }

    #[test]
    fn methods_map_to_verbs() {
        let v = |m: Method, path: &str, ws: bool| verb(&m, path, ws);
        assert_eq!(v(Method::GET, "/pods", false), "get");
        assert_eq!(v(Method::HEAD, "/pods", false), "get");
        assert_eq!(v(Method::POST, "/exec/a/b/c", false), "create");
        assert_eq!(v(Method::PUT, "/x", false), "update");
        assert_eq!(v(Method::PATCH, "/x", false), "patch");
        assert_eq!(v(Method::DELETE, "/x", false), "delete");
        assert_eq!(v(Method::OPTIONS, "/x", false), "options");
        // A websocket exec, attach or port-forward creates; a websocket elsewhere gets.
        assert_eq!(v(Method::GET, "/exec/a/b/c", true), "create");
        assert_eq!(v(Method::GET, "/attach/a/b/c", true), "create");
        assert_eq!(v(Method::GET, "/portForward/a/b", true), "create");
        assert_eq!(v(Method::GET, "/exec/a/b/c", false), "get");
        assert_eq!(v(Method::GET, "/containerLogs/a/b/c", true), "get");
    }

    #[test]
    fn the_403_names_user_verb_resource_and_subresource() {
        let a = request_attributes(&Method::GET, "/containerLogs/a/b/c", false);
        assert_eq!(
            forbidden_message("system:serviceaccount:default:x", &a),
            "Forbidden (user=system:serviceaccount:default:x, verb=get, resource=nodes, subresource=proxy)"
        );
        let a = request_attributes(&Method::GET, "/pods", false);
        assert_eq!(
            forbidden_message("bob", &a),
            "Forbidden (user=bob, verb=get, resource=nodes, subresource(s)=[pods proxy])"
        );
    }

    #[test]
    fn cache_entries_expire_and_the_cache_stays_bounded() {
        let c: TtlCache<u32, &str> = TtlCache::new(3);
        let t0 = Instant::now();
        c.insert(1, "a", Duration::from_secs(10), t0);
        assert_eq!(c.get(&1, t0 + Duration::from_secs(9)), Some("a"));
        assert_eq!(c.get(&1, t0 + Duration::from_secs(10)), None);
        assert!(c.is_empty());
        c.insert(1, "a", Duration::from_secs(1), t0);
        c.insert(2, "b", Duration::from_secs(100), t0);
        c.insert(3, "c", Duration::from_secs(100), t0);
        // Full: the expired entry makes room.
        c.insert(
            4,
            "d",
            Duration::from_secs(100),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&2, t0), Some("b"));
        // Full of live entries: cleared.
        c.insert(
            5,
            "e",
            Duration::from_secs(100),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(&5, t0 + Duration::from_secs(6)), Some("e"));
    }

    /// Knows one token (`good` → alice in `devs`) and allows alice `get` on `proxy` only.
    #[derive(Default)]
    struct CountingReviewer {
        token_reviews: AtomicUsize,
        access_reviews: AtomicUsize,
    }

    impl Reviewer for CountingReviewer {
        fn review_token<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<UserInfo>, String>> {
            self.token_reviews.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match token {
                    "good" => Ok(Some(UserInfo::new("alice", ["devs".to_owned()]))),
                    "broken" => Err("the API is down".into()),
                    _ => Ok(None),
                }
            })
        }

        fn review_access<'a>(
            &'a self,
            user: &'a UserInfo,
            verb: &'a str,
            node: &'a str,
            subresource: &'a str,
        ) -> BoxFuture<'a, Result<Decision, String>> {
            self.access_reviews.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                assert_eq!(node, "n1");
                Ok(Decision {
                    allowed: user.name == "alice" && verb == "get" && subresource == "proxy",
                    reason: String::new(),
                })
            })
        }
    }

    #[tokio::test]
    async fn token_reviews_are_cached_two_minutes_and_refusals_ten_seconds() {
        let reviewer = Arc::new(CountingReviewer::default());
        let auth = KubeletAuth::new("n1", Some(reviewer.clone()), None);
        let t0 = Instant::now();
        let caller = auth
            .authenticate(&PeerIdentity::None, Some("good"), t0)
            .await
            .unwrap();
        assert_eq!(caller.user.name, "alice");
        assert_eq!(caller.user.groups, ["devs", "system:authenticated"]);
        assert!(!caller.trusted);
        for s in [1, 60, 119] {
            auth.authenticate(
                &PeerIdentity::None,
                Some("good"),
                t0 + Duration::from_secs(s),
            )
            .await
            .unwrap();
        }
        assert_eq!(reviewer.token_reviews.load(Ordering::SeqCst), 1);
        auth.authenticate(
            &PeerIdentity::None,
            Some("good"),
            t0 + Duration::from_secs(120),
        )
        .await
        .unwrap();
        assert_eq!(reviewer.token_reviews.load(Ordering::SeqCst), 2);

        let bad = |s: u64| {
            auth.authenticate(
                &PeerIdentity::None,
                Some("bad"),
                t0 + Duration::from_secs(s),
            )
        };
        assert_eq!(bad(0).await, Err(Refusal::Unauthorized));
        assert_eq!(bad(9).await, Err(Refusal::Unauthorized));
        assert_eq!(reviewer.token_reviews.load(Ordering::SeqCst), 3);
        assert_eq!(bad(10).await, Err(Refusal::Unauthorized));
        assert_eq!(reviewer.token_reviews.load(Ordering::SeqCst), 4);
        // Errors are not cached; nothing at all is a 401 without a review.
        for _ in 0..2 {
            assert_eq!(
                auth.authenticate(&PeerIdentity::None, Some("broken"), t0)
                    .await,
                Err(Refusal::Unauthorized)
            );
        }
        assert_eq!(reviewer.token_reviews.load(Ordering::SeqCst), 6);
        assert_eq!(
            auth.authenticate(&PeerIdentity::None, None, t0).await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            auth.authenticate(&PeerIdentity::Invalid("expired".into()), None, t0)
                .await,
            Err(Refusal::Unauthorized)
        );
        assert_eq!(reviewer.token_reviews.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn a_certificate_identifies_without_review_and_the_admin_token_is_trusted() {
        let reviewer = Arc::new(CountingReviewer::default());
        let auth = KubeletAuth::new("n1", Some(reviewer.clone()), Some("admin-token".into()));
        let t0 = Instant::now();
        let cert_user = Arc::new(UserInfo::new(
            "kube-apiserver-kubelet-client",
            ["kubelet-api-admins".to_owned()],
        ));
        let caller = auth
            .authenticate(&PeerIdentity::User(cert_user.clone()), Some("whatever"), t0)
            .await
            .unwrap();
        assert_eq!(caller.user, cert_user);
        let admin = auth
            .authenticate(&PeerIdentity::None, Some("admin-token"), t0)
            .await
            .unwrap();
        assert!(admin.trusted);
        let any = request_attributes(&Method::POST, "/exec/a/b/c", false);
        auth.authorize(&admin, &any, t0).await.unwrap();
        assert_eq!(reviewer.token_reviews.load(Ordering::SeqCst), 0);
        assert_eq!(reviewer.access_reviews.load(Ordering::SeqCst), 0);
        // Without a reviewer only the admin token gets in.
        let legacy = KubeletAuth::new("n1", None, Some("admin-token".into()));
        assert_eq!(
            legacy
                .authenticate(&PeerIdentity::None, Some("good"), t0)
                .await,
            Err(Refusal::Unauthorized)
        );
        assert!(
            legacy
                .authenticate(&PeerIdentity::None, Some("admin-token"), t0)
                .await
                .unwrap()
                .trusted
        );
    }

    #[tokio::test]
    async fn access_reviews_are_cached_five_minutes_and_denials_thirty_seconds() {
        let reviewer = Arc::new(CountingReviewer::default());
        let auth = KubeletAuth::new("n1", Some(reviewer.clone()), None);
        let t0 = Instant::now();
        let alice = auth
            .authenticate(&PeerIdentity::None, Some("good"), t0)
            .await
            .unwrap();
        let logs = request_attributes(&Method::GET, "/containerLogs/a/b/c", false);
        for s in [0, 100, 299] {
            auth.authorize(&alice, &logs, t0 + Duration::from_secs(s))
                .await
                .unwrap();
        }
        assert_eq!(reviewer.access_reviews.load(Ordering::SeqCst), 1);
        auth.authorize(&alice, &logs, t0 + Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(reviewer.access_reviews.load(Ordering::SeqCst), 2);

        // /pods: `pods` is denied, then `proxy` allows.
        let pods = request_attributes(&Method::GET, "/pods", false);
        // (the `proxy` answer is cached already).
        auth.authorize(&alice, &pods, t0).await.unwrap();
        assert_eq!(reviewer.access_reviews.load(Ordering::SeqCst), 3);

        let exec = request_attributes(&Method::POST, "/exec/a/b/c", false);
        let denied = auth.authorize(&alice, &exec, t0).await;
        assert_eq!(
            denied,
            Err(Refusal::Forbidden(
                "Forbidden (user=alice, verb=create, resource=nodes, subresource=proxy)".into()
            ))
        );
        auth.authorize(&alice, &exec, t0 + Duration::from_secs(29))
            .await
            .unwrap_err();
        assert_eq!(reviewer.access_reviews.load(Ordering::SeqCst), 4);
        auth.authorize(&alice, &exec, t0 + Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(reviewer.access_reviews.load(Ordering::SeqCst), 5);
    }
}
