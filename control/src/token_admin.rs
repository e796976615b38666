//! `skiff-control token create|list|delete`: bootstrap tokens managed through the API with
//! admin credentials, as `kubeadm token` does (the server may be running, so its store is not
//! opened directly). A token is a Secret `kube-system/bootstrap-token-<id>`; see
//! [`crate::bootstrap::token`]. Tokens are secrets: only the commands' output shows them,
//! nothing logs them.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::ResourceExt;

use crate::bootstrap::token::{self, Options, Token, TokenSecret};

/// Why a token command failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenAdminError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The arguments are unusable.
    #[error("{0}")]
    Invalid(String),
}

/// Creates a new random token with `options` (retrying on the rare id clash).
pub async fn create(client: &kube::Client, options: &Options) -> Result<Token, TokenAdminError> {
    if let Some(bad) = options
        .extra_groups
        .iter()
        .find(|g| !token::valid_extra_group(g))
    {
        return Err(TokenAdminError::Invalid(format!(
            "invalid extra group {bad:?}: must match system:bootstrappers:[a-z0-9:-]{{0,255}}[a-z0-9]"
        )));
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), token::NAMESPACE);
    for _ in 0..5 {
        let new = Token::generate();
        let secret: Secret = serde_json::from_value(token::secret(&new, options))
            .map_err(|e| TokenAdminError::Invalid(e.to_string()))?;
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => return Ok(new),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(TokenAdminError::Invalid(
        "could not find an unused token id".into(),
    ))
}

/// One token as `token list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// `<id>.<secret>`.
    pub token: String,
    /// When it expires, if ever.
    pub expires: Option<jiff::Timestamp>,
    /// `authentication`, `signing`, comma-separated.
    pub usages: String,
    /// Its description.
    pub description: String,
    /// Its extra groups, comma-separated.
    pub extra_groups: String,
}

/// The tokens there are, by id.
pub async fn list(client: &kube::Client) -> Result<Vec<Listed>, TokenAdminError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), token::NAMESPACE);
    let params = ListParams::default().fields(&format!("type={}", token::SECRET_TYPE));
    let mut out = Vec::new();
    for secret in api.list(&params).await? {
        let parsed = TokenSecret::from_json(&serde_json::to_value(&secret).unwrap_or_default());
        let Some(held) = parsed.token() else {
            continue;
        };
        let usages: Vec<&str> = [
            (token::USAGE_AUTHENTICATION, "authentication"),
            (token::USAGE_SIGNING, "signing"),
        ]
        .into_iter()
        .filter(|(key, _)| parsed.usable_for(key))
        .map(|(_, name)| name)
        .collect();
        let extra = parsed.groups().unwrap_or_default();
        out.push(Listed {
            token: held.bearer(),
            expires: parsed.expiration().ok().flatten(),
            usages: usages.join(","),
            description: parsed.get(token::KEY_DESCRIPTION),
            extra_groups: extra
                .into_iter()
                .filter(|g| g != token::GROUP)
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    out.sort_by(|a, b| a.token.cmp(&b.token));
    Ok(out)
}

/// Deletes the token `id` (or `<id>.<secret>`).
pub async fn delete(client: &kube::Client, id_or_token: &str) -> Result<(), TokenAdminError> {
    let id = id_or_token.split('.').next().unwrap_or_default();
    if !token::is_id(id) {
        return Err(TokenAdminError::Invalid(format!(
            "{id:?} is not a token id ([a-z0-9]{{6}})"
        )));
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), token::NAMESPACE);
    let name = format!("{}{id}", token::SECRET_PREFIX);
    let secret = match api.get(&name).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return Err(TokenAdminError::Invalid(format!(
                "no bootstrap token {id:?}"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if secret.type_.as_deref() != Some(token::SECRET_TYPE) {
        return Err(TokenAdminError::Invalid(format!(
            "{}/{} is not a bootstrap token",
            token::NAMESPACE,
            secret.name_any()
        )));
    }
    api.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}
