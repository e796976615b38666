//! ServiceAccount tokens for the pods of this node, as the kubelet's token manager
//! (`pkg/kubelet/token/token_manager.go`) keeps them: requested from the TokenRequest API
//! (`POST .../serviceaccounts/NAME/token`), bound to the pod, cached, and renewed once they are
//! older than 80% of their lifetime or older than 24 hours. A failed renewal keeps serving the
//! cached token while it has not expired. A pod's tokens are forgotten when the pod goes.
//!
//! Unlike the kubelet, the refresh has no random jitter (tests decide with an exact clock), and
//! the issue time is the time of the request (the kubelet derives it from the expiry and the
//! requested lifetime).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// A token's lifetime when the projection names none (the API's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest lifetime the API accepts for a projected token.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// A token older than this is renewed, whatever its lifetime.
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The token a pod's volume asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenSpec {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account.
    pub service_account: String,
    /// The audience (`None`: the API server's own).
    pub audience: Option<String>,
    /// The requested lifetime.
    pub expiration_seconds: i64,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its uid.
    pub pod_uid: String,
}

impl TokenSpec {
    /// The TokenRequest the API is sent: one audience or none, the lifetime, bound to the pod.
    pub fn request(&self) -> TokenRequest {
        TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(self.audience.iter().cloned().collect()),
                expiration_seconds: Some(self.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod_name.clone()),
                    uid: Some(self.pod_uid.clone()),
                }),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        }
    }

    /// What the cache is keyed by.
    fn key(&self) -> Key {
        (
            self.namespace.clone(),
            self.service_account.clone(),
            self.audience.clone(),
            self.expiration_seconds,
            self.pod_uid.clone(),
        )
    }
}

/// Namespace, service account, audience, lifetime, pod uid.
type Key = (String, String, Option<String>, i64, String);

/// Where tokens come from: the TokenRequest API ([`ApiTokens`]) or a test's fake.
pub trait TokenRequester: Send + Sync + 'static {
    /// Creates a token of `service_account` in `namespace`.
    fn create<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, String>>;
}

/// Tokens from the API server.
pub struct ApiTokens(pub kube::Client);

impl TokenRequester for ApiTokens {
    fn create<'a>(
        &'a self,
        namespace: &'a str,
        service_account: &'a str,
        request: TokenRequest,
    ) -> BoxFuture<'a, Result<TokenRequest, String>> {
        Box::pin(async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.0.clone(), namespace);
            api.create_token_request(service_account, &PostParams::default(), &request)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The clock the manager reads (a test's is set by hand).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// A cached token.
#[derive(Debug, Clone)]
struct Cached {
    token: String,
    /// When it was requested.
    issued: Timestamp,
    /// Its `status.expirationTimestamp`.
    expires: Timestamp,
}

impl Cached {
    /// The kubelet's rule: renew once older than 80% of the lifetime or than 24 hours, or when
    /// the clock went back before the issue time.
    fn needs_refresh(&self, now: Timestamp) -> bool {
        let lifetime = self.expires.duration_since(self.issued);
        let age = now.duration_since(self.issued);
        let max_ttl = SignedDuration::try_from(MAX_TTL).unwrap_or(SignedDuration::MAX);
        age.is_negative() || age > max_ttl || age > lifetime.mul_f64(0.8)
    }

    fn expired(&self, now: Timestamp) -> bool {
        now > self.expires
    }
}

/// The node's ServiceAccount tokens.
pub struct TokenManager {
    requester: Arc<dyn TokenRequester>,
    clock: Clock,
    cache: Mutex<HashMap<Key, Cached>>,
}

impl TokenManager {
    /// A manager requesting from `requester`, on the wall clock.
    pub fn new(requester: Arc<dyn TokenRequester>) -> Self {
        Self::with_clock(requester, Arc::new(Timestamp::now))
    }

    /// A manager on `clock`.
    pub fn with_clock(requester: Arc<dyn TokenRequester>, clock: Clock) -> Self {
        Self {
            requester,
            clock,
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The token for `spec`: the cached one while it is fresh, else a new one. When renewing
    /// fails, the cached token serves until it expires.
    pub async fn token(&self, spec: &TokenSpec) -> Result<String, String> {
        let key = spec.key();
        let now = (self.clock)();
        let cached = {
            let mut cache = self.cache();
            cache.retain(|_, c| !c.expired(now));
            cache.get(&key).cloned()
        };
        if let Some(c) = cached.as_ref().filter(|c| !c.needs_refresh(now)) {
            return Ok(c.token.clone());
        }
        let created = self
            .requester
            .create(&spec.namespace, &spec.service_account, spec.request())
            .await
            .and_then(|tr| {
                let status = tr.status.unwrap_or_default();
                match (status.token, status.expiration_timestamp) {
                    (Some(token), Some(exp)) if !token.is_empty() => Ok((token, exp.0)),
                    _ => {
                        Err("the TokenRequest's status has no token or expirationTimestamp".into())
                    }
                }
            });
        match (created, cached) {
            (Ok((token, expires)), _) => {
                self.cache().insert(
                    key,
                    Cached {
                        token: token.clone(),
                        issued: now,
                        expires,
                    },
                );
                Ok(token)
            }
            (Err(e), None) => Err(format!(
                "requesting a token of serviceaccount {}/{}: {e}",
                spec.namespace, spec.service_account
            )),
            (Err(e), Some(c)) => {
                tracing::warn!(
                    namespace = spec.namespace,
                    service_account = spec.service_account,
                    error = %e,
                    "renewing a ServiceAccount token failed; the current one serves until it expires"
                );
                Ok(c.token)
            }
        }
    }

    /// Forgets the tokens bound to a pod (it is gone).
    pub fn forget_pod(&self, pod_uid: &str) {
        self.cache().retain(|k, _| k.4 != pod_uid);
    }

    /// How many tokens are cached.
    pub fn cached(&self) -> usize {
        self.cache().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    /// Hands out `token-1`, `token-2`, ... expiring `expirationSeconds` after the clock's time;
    /// fails while `failing` is set; records the requests.
    struct Fake {
        clock: Arc<AtomicI64>,
        issued: AtomicI64,
        failing: AtomicBool,
        requests: Mutex<Vec<(String, String, TokenRequest)>>,
    }

    impl TokenRequester for Fake {
        fn create<'a>(
            &'a self,
            namespace: &'a str,
            service_account: &'a str,
            request: TokenRequest,
        ) -> BoxFuture<'a, Result<TokenRequest, String>> {
            Box::pin(async move {
                self.requests.lock().unwrap().push((
                    namespace.to_owned(),
                    service_account.to_owned(),
                    request.clone(),
                ));
                if self.failing.load(Ordering::SeqCst) {
                    return Err("the API server is away".into());
                }
                let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
                let exp = self.clock.load(Ordering::SeqCst)
                    + request
                        .spec
                        .as_ref()
                        .and_then(|s| s.expiration_seconds)
                        .unwrap_or(3600);
                let mut tr = request;
                tr.status = Some(k8s_openapi::api::authentication::v1::TokenRequestStatus {
                    token: Some(format!("token-{n}")),
                    expiration_timestamp: Some(
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            Timestamp::from_second(exp).unwrap(),
                        ),
                    ),
                });
                Ok(tr)
            })
        }
    }

    const T0: i64 = 1_700_000_000;

    fn manager() -> (TokenManager, Arc<Fake>, Arc<AtomicI64>) {
        let clock = Arc::new(AtomicI64::new(T0));
        let fake = Arc::new(Fake {
            clock: clock.clone(),
            issued: AtomicI64::new(0),
            failing: AtomicBool::new(false),
            requests: Mutex::default(),
        });
        let c = clock.clone();
        let m = TokenManager::with_clock(
            fake.clone(),
            Arc::new(move || Timestamp::from_second(c.load(Ordering::SeqCst)).unwrap()),
        );
        (m, fake, clock)
    }

    fn spec(expiration_seconds: i64) -> TokenSpec {
        TokenSpec {
            namespace: "prod".into(),
            service_account: "default".into(),
            audience: None,
            expiration_seconds,
            pod_name: "web".into(),
            pod_uid: "uid-1".into(),
        }
    }

    #[tokio::test]
    async fn the_request_is_bound_to_the_pod() {
        let (m, fake, _) = manager();
        let mut s = spec(3607);
        assert_eq!(m.token(&s).await.unwrap(), "token-1");
        s.audience = Some("vault".into());
        m.token(&s).await.unwrap();
        let requests = fake.requests.lock().unwrap().clone();
        let (ns, sa, first) = &requests[0];
        assert_eq!((ns.as_str(), sa.as_str()), ("prod", "default"));
        assert_eq!(
            serde_json::to_value(&first.spec).unwrap(),
            serde_json::json!({
                "audiences": [],
                "expirationSeconds": 3607,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "uid-1"},
            })
        );
        assert_eq!(
            requests[1].2.spec.as_ref().unwrap().audiences,
            Some(vec!["vault".to_owned()])
        );
    }

    #[tokio::test]
    async fn a_token_is_reused_until_it_is_older_than_80_percent_of_its_lifetime() {
        let (m, fake, clock) = manager();
        let s = spec(3600);
        assert_eq!(m.token(&s).await.unwrap(), "token-1");
        // 80% of 3600 s is 2880 s: at 2880 s the token is still fresh, past it not.
        clock.store(T0 + 2880, Ordering::SeqCst);
        assert_eq!(m.token(&s).await.unwrap(), "token-1");
        clock.store(T0 + 2881, Ordering::SeqCst);
        assert_eq!(m.token(&s).await.unwrap(), "token-2");
        assert_eq!(fake.requests.lock().unwrap().len(), 2);
        // Another lifetime or another pod is another token.
        assert_eq!(m.token(&spec(7200)).await.unwrap(), "token-3");
        let mut other = spec(3600);
        other.pod_uid = "uid-2".into();
        assert_eq!(m.token(&other).await.unwrap(), "token-4");
    }

    #[tokio::test]
    async fn a_long_lived_token_is_renewed_after_24_hours() {
        let (m, _, clock) = manager();
        let s = spec(7 * 24 * 3600);
        assert_eq!(m.token(&s).await.unwrap(), "token-1");
        clock.store(T0 + 24 * 3600, Ordering::SeqCst);
        assert_eq!(m.token(&s).await.unwrap(), "token-1");
        clock.store(T0 + 24 * 3600 + 1, Ordering::SeqCst);
        assert_eq!(m.token(&s).await.unwrap(), "token-2");
    }

    #[tokio::test]
    async fn a_clock_gone_back_renews() {
        let (m, _, clock) = manager();
        let s = spec(3600);
        m.token(&s).await.unwrap();
        clock.store(T0 - 10, Ordering::SeqCst);
        assert_eq!(m.token(&s).await.unwrap(), "token-2");
    }

    #[tokio::test]
    async fn a_failed_renewal_serves_the_old_token_until_it_expires() {
        let (m, fake, clock) = manager();
        let s = spec(3600);
        m.token(&s).await.unwrap();
        fake.failing.store(true, Ordering::SeqCst);
        clock.store(T0 + 3000, Ordering::SeqCst);
        assert_eq!(m.token(&s).await.unwrap(), "token-1");
        clock.store(T0 + 3601, Ordering::SeqCst);
        let err = m.token(&s).await.unwrap_err();
        assert!(err.contains("the API server is away"), "{err}");
    }

    #[tokio::test]
    async fn a_pods_tokens_are_forgotten_when_it_goes() {
        let (m, _, _) = manager();
        m.token(&spec(3600)).await.unwrap();
        m.token(&spec(7200)).await.unwrap();
        let mut other = spec(3600);
        other.pod_uid = "uid-2".into();
        m.token(&other).await.unwrap();
        assert_eq!(m.cached(), 3);
        m.forget_pod("uid-1");
        assert_eq!(m.cached(), 1);
        // Requested anew.
        assert_eq!(m.token(&spec(3600)).await.unwrap(), "token-4");
    }
}
