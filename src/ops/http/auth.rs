//! Who may scrape `/metrics`: the caller's bearer token must pass a `TokenReview` and the user
//! must be allowed `get` on the non-resource URL `/metrics` by a `SubjectAccessReview`, the same
//! delegated authn/authz that controller-runtime's `WithAuthenticationAndAuthorization` filter
//! (and kube-rbac-proxy before it) applies. The operator's own ServiceAccount therefore needs
//! `create` on `tokenreviews` and `subjectaccessreviews`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

/// How long an allowed token is trusted without asking the API server again. A revoked token
/// or binding is honoured after at most this long (controller-runtime uses one minute too).
pub const ALLOW_CACHE_TTL: Duration = Duration::from_secs(60);
/// Bound on the cache, so a stream of distinct (valid) tokens cannot grow memory for ever.
const MAX_CACHED: usize = 1024;

/// The verb and path a scraper must be allowed.
const VERB: &str = "get";
const PATH: &str = "/metrics";

/// What the API server said about a caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// No token, or one the TokenReview did not accept.
    Unauthenticated(String),
    /// A known user without `get /metrics`.
    Forbidden {
        user: String,
        reason: String,
    },
}

pub struct Authorizer {
    client: kube::Client,
    allowed: Mutex<HashMap<[u8; 32], Instant>>,
    ttl: Duration,
}

impl Authorizer {
    pub fn new(client: kube::Client) -> Self {
        Authorizer {
            client,
            allowed: Mutex::new(HashMap::new()),
            ttl: ALLOW_CACHE_TTL,
        }
    }

    /// Decide for the request's `Authorization` header. An error means the API server could
    /// not be asked (the caller answers 500: we do not know).
    pub async fn decide(&self, headers: &HeaderMap) -> Result<Decision, kube::Error> {
        let Some(token) = bearer_token(headers) else {
            return Ok(Decision::Unauthenticated(
                "no bearer token in the Authorization header".to_owned(),
            ));
        };
        let key = digest(token);
        if self.is_cached(&key) {
            return Ok(Decision::Allowed);
        }
        let user = match self.authenticate(token).await? {
            Ok(user) => user,
            Err(reason) => return Ok(Decision::Unauthenticated(reason)),
        };
        let decision = self.authorize(user).await?;
        if decision == Decision::Allowed {
            self.remember(key);
        }
        Ok(decision)
    }

    async fn authenticate(&self, token: &str) -> Result<Result<UserInfo, String>, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let status = api.create(&PostParams::default(), &review).await?.status;
        Ok(authenticated_user(status))
    }

    async fn authorize(&self, user: UserInfo) -> Result<Decision, kube::Error> {
        let name = user.username.clone().unwrap_or_default();
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(PATH.to_owned()),
                    verb: Some(VERB.to_owned()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let status = api.create(&PostParams::default(), &review).await?.status;
        Ok(match status {
            Some(s) if s.allowed => Decision::Allowed,
            Some(s) => Decision::Forbidden {
                user: name,
                reason: s.reason.or(s.evaluation_error).unwrap_or_default(),
            },
            None => Decision::Forbidden {
                user: name,
                reason: "the SubjectAccessReview returned no status".to_owned(),
            },
        })
    }

    fn is_cached(&self, key: &[u8; 32]) -> bool {
        let cache = self.allowed.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(key).is_some_and(|until| Instant::now() < *until)
    }

    fn remember(&self, key: [u8; 32]) {
        let mut cache = self.allowed.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, until| now < *until);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, now + self.ttl);
    }
}

/// The user a TokenReview accepted, or why not.
fn authenticated_user(
    status: Option<k8s_openapi::api::authentication::v1::TokenReviewStatus>,
) -> Result<UserInfo, String> {
    let Some(status) = status else {
        return Err("the TokenReview returned no status".to_owned());
    };
    if let Some(error) = status.error.filter(|e| !e.is_empty()) {
        return Err(error);
    }
    match (status.authenticated, status.user) {
        (Some(true), Some(user)) if user.username.as_deref().is_some_and(|u| !u.is_empty()) => {
            Ok(user)
        }
        _ => Err("the token was not authenticated".to_owned()),
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, as RFC 6750 allows).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The cache is keyed by a hash so raw tokens are not kept around longer than a request.
fn digest(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(d.as_ref());
    key
}

/// axum middleware guarding the metrics route.
pub async fn require_metrics_reader(
    State(authorizer): State<std::sync::Arc<Authorizer>>,
    request: Request,
    next: Next,
) -> Response {
    match authorizer.decide(request.headers()).await {
        Ok(Decision::Allowed) => next.run(request).await,
        Ok(Decision::Unauthenticated(reason)) => {
            tracing::debug!(%reason, "metrics: unauthenticated request");
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "Unauthorized\n",
            )
                .into_response()
        }
        Ok(Decision::Forbidden { user, reason }) => {
            tracing::debug!(%user, %reason, "metrics: forbidden");
            (
                StatusCode::FORBIDDEN,
                format!("Forbidden (user={user}, verb={VERB}, path={PATH})\n"),
            )
                .into_response()
        }
        Err(err) => {
            tracing::warn!(error = %err, "metrics: cannot review the caller's token");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error: cannot authenticate or authorize the request\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn bearer_tokens_are_found_whatever_the_scheme_case() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn only_an_authenticated_review_with_a_user_yields_a_user() {
        let user = UserInfo {
            username: Some("system:serviceaccount:ns:prom".to_owned()),
            ..Default::default()
        };
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(user.clone()),
            ..Default::default()
        };
        assert_eq!(authenticated_user(Some(ok)), Ok(user.clone()));

        let rejected = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token expired".to_owned()),
            ..Default::default()
        };
        assert_eq!(
            authenticated_user(Some(rejected)),
            Err("token expired".to_owned())
        );
        let anonymous = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo::default()),
            ..Default::default()
        };
        assert!(authenticated_user(Some(anonymous)).is_err());
        assert!(authenticated_user(None).is_err());
    }

    #[test]
    fn distinct_tokens_have_distinct_cache_keys() {
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest("a"), digest("a"));
    }
}
