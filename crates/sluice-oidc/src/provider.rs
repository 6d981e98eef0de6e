//! One OpenID provider as a Sluice [`Authenticator`]: discovery, the JWKS
//! (cached, refetched on an unknown `kid` at a bounded rate and when the
//! cache expires), and access-token verification.

use crate::claims::{claim_groups, claim_string};
use crate::http::HttpClient;
use crate::OidcError;
use async_trait::async_trait;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sluice_core::auth::{normalize_issuer, AuthError, Authenticator};
use sluice_core::config::OidcProviderConfig;
use sluice_core::Identity;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Mutex;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// An unknown `kid` triggers at most one JWKS fetch per this interval, so
/// that made-up key ids cannot turn the gateway into a load generator.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(3);

/// The parts of the discovery document Sluice uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub authorization_endpoint: Option<String>,
}

impl Discovery {
    /// Fetches `{issuer}/.well-known/openid-configuration` and checks that it
    /// speaks for `issuer` (OpenID Connect Discovery 1.0, section 4.3).
    pub async fn fetch(client: &HttpClient, issuer: &str) -> Result<Discovery, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            normalize_issuer(issuer)
        );
        let doc: Discovery = client.get(&url, None).await?.json("discovery")?;
        if !is_issuer(normalize_issuer(issuer), &doc.issuer) {
            return Err(OidcError::Idp(format!(
                "discovery names issuer {:?}, not {issuer:?}",
                doc.issuer
            )));
        }
        Ok(doc)
    }
}

struct Keys {
    keys: Vec<Jwk>,
    fetched: Instant,
}

#[derive(Default)]
struct Cache {
    discovery: Option<Discovery>,
    keys: Option<Keys>,
    last_attempt: Option<Instant>,
}

/// Whether `iss` is the issuer `base` (given without trailing slashes): `base`
/// itself or `base/`, nothing else (`base//`, `base.evil/` are other issuers).
/// Configurations and IdPs disagree on the slash (Auth0's `iss` ends in one).
pub(crate) fn is_issuer(base: &str, iss: &str) -> bool {
    !base.is_empty() && (iss == base || iss.strip_suffix('/') == Some(base))
}

/// A NumericDate (RFC 7519 section 2): seconds since the epoch, fractions
/// allowed; negative, non-finite and non-numeric values are not dates.
fn numeric_date(value: &Value) -> Option<f64> {
    value.as_f64().filter(|d| d.is_finite() && *d >= 0.0)
}

/// An OpenID provider whose access tokens the gateway accepts.
pub struct OidcProvider {
    config: OidcProviderConfig,
    issuer: String,
    algorithms: Vec<Algorithm>,
    client: HttpClient,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// Builds the verifier; contacts nothing yet (see [`OidcProvider::warm_up`]).
    pub fn new(config: OidcProviderConfig) -> Result<Self, OidcError> {
        let algorithms = config
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        if config.groups_separator.as_deref() == Some("") {
            return Err(OidcError::Config(format!(
                "{}: groups_separator is empty (leave it out to keep one string as one group)",
                config.issuer
            )));
        }
        if config.accept_client_id.iter().any(|c| c.trim().is_empty()) {
            return Err(OidcError::Config(format!(
                "{}: accept_client_id holds an empty client id",
                config.issuer
            )));
        }
        Ok(OidcProvider {
            client: HttpClient::new(config.ca.as_deref())?,
            issuer: normalize_issuer(&config.issuer).to_string(),
            algorithms,
            config,
            cache: Mutex::default(),
        })
    }

    /// One provider per `[auth.oidc]` entry.
    pub fn all_from_config(
        config: &sluice_core::Config,
    ) -> Result<Vec<std::sync::Arc<OidcProvider>>, OidcError> {
        config
            .auth
            .oidc
            .iter()
            .map(|p| OidcProvider::new(p.clone()).map(std::sync::Arc::new))
            .collect()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Fetches discovery and keys ahead of the first token; failures are only
    /// logged (tokens then wait for the IdP, and fail closed while it is away).
    pub async fn warm_up(&self) {
        let mut cache = self.cache.lock().await;
        match self.refresh(&mut cache).await {
            Ok(()) => {
                tracing::info!(message = "Identity provider keys loaded.", issuer = %self.issuer)
            }
            Err(e) => {
                tracing::warn!(message = "Identity provider not reachable yet.", issuer = %self.issuer, error = %e)
            }
        }
    }

    /// Fetches discovery (once) and the JWKS. Keeps the old keys when it fails.
    async fn refresh(&self, cache: &mut Cache) -> Result<(), OidcError> {
        cache.last_attempt = Some(Instant::now());
        let discovery = match &cache.discovery {
            Some(d) => d.clone(),
            None => {
                let d = Discovery::fetch(&self.client, &self.issuer).await?;
                cache.discovery = Some(d.clone());
                d
            }
        };
        let set: Value = match self.client.get(&discovery.jwks_uri, None).await {
            Ok(response) => response.json("jwks")?,
            Err(e) => {
                // The provider may have moved its keys: discover again next time.
                cache.discovery = None;
                return Err(e);
            }
        };
        let keys = parse_jwks(&set);
        if keys.is_empty() {
            return Err(OidcError::Idp(
                "the JWKS holds no usable signing key".into(),
            ));
        }
        tracing::debug!(message = "Fetched the identity provider's keys.", issuer = %self.issuer, keys = keys.len());
        cache.keys = Some(Keys {
            keys,
            fetched: Instant::now(),
        });
        Ok(())
    }

    /// The key for `kid`/`alg`: from the cache while it is fresh; refetched
    /// when the cache expired or the kid is unknown (rate-limited). While the
    /// IdP is unreachable, keys still within their TTL keep working.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AuthError> {
        let ttl = self.config.jwks_ttl.0;
        let mut cache = self.cache.lock().await;
        let fresh = |c: &Cache| c.keys.as_ref().is_some_and(|k| k.fetched.elapsed() < ttl);
        let mut refresh_error = None;
        let recently = |c: &Cache| {
            c.last_attempt
                .is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL)
        };
        // While the IdP is away, ask it at most once per interval.
        if !fresh(&cache) && !recently(&cache) {
            if let Err(e) = self.refresh(&mut cache).await {
                tracing::warn!(message = "Cannot refresh the identity provider's keys.", issuer = %self.issuer, error = %e);
                refresh_error = Some(e);
            }
        }
        if !fresh(&cache) {
            // A lookup error must fail closed: no fresh keys, no identity.
            return Err(AuthError::Unavailable(format!(
                "the identity provider {} cannot be reached and no unexpired signing keys are cached{}; try again later",
                self.issuer,
                refresh_error.map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
        if let Some(key) = find_key(&cache, kid, alg) {
            return key;
        }
        let recently = recently(&cache);
        if !recently {
            // Keys rotated: fetch the set again.
            if let Err(e) = self.refresh(&mut cache).await {
                tracing::warn!(message = "Cannot refresh the identity provider's keys.", issuer = %self.issuer, error = %e);
            } else if let Some(key) = find_key(&cache, kid, alg) {
                return key;
            }
        }
        Err(AuthError::Rejected(format!(
            "token is signed with key {:?}, which {} does not publish{}",
            kid.unwrap_or("(no kid)"),
            self.issuer,
            if recently {
                " (its keys were refreshed moments ago; retry in a few seconds if they just rotated)"
            } else {
                ""
            }
        )))
    }

    /// Groups from the userinfo endpoint (the claim is absent from the token).
    async fn userinfo_groups(&self, token: &str) -> Result<Vec<String>, OidcError> {
        let endpoint = {
            let cache = self.cache.lock().await;
            cache
                .discovery
                .as_ref()
                .and_then(|d| d.userinfo_endpoint.clone())
        };
        let Some(endpoint) = endpoint else {
            return Ok(Vec::new());
        };
        let info: Value = self
            .client
            .get(&endpoint, Some(token))
            .await?
            .json("userinfo")?;
        Ok(claim_groups(&info, &self.config.groups_claim, self.separator()).unwrap_or_default())
    }

    fn separator(&self) -> Option<&str> {
        self.config.groups_separator.as_deref()
    }

    /// `payload` is the token's claims as sent (unverified): it only tells
    /// whether `aud` is there at all; every claim is read again once verified.
    pub(crate) async fn verify(
        &self,
        token: &str,
        header: &RawHeader,
        payload: &Value,
    ) -> Result<Identity, AuthError> {
        let issuer = &self.issuer;
        let alg_name = header.alg.as_deref().unwrap_or("");
        if alg_name.is_empty() || alg_name.eq_ignore_ascii_case("none") {
            return Err(AuthError::Rejected(
                "token is unsigned (alg none); only signed tokens are accepted".into(),
            ));
        }
        if alg_name.to_ascii_uppercase().starts_with("HS") {
            return Err(AuthError::Rejected(format!(
                "token is signed with {alg_name}, a shared-secret algorithm; tokens from {issuer} must be signed with one of {}",
                self.config.algorithms.join(", ")
            )));
        }
        let alg = match parse_algorithm(alg_name) {
            Ok(a) if self.algorithms.contains(&a) => a,
            _ => {
                return Err(AuthError::Rejected(format!(
                    "token algorithm {alg_name:?} is not allowed for {issuer} (allowed: {})",
                    self.config.algorithms.join(", ")
                )))
            }
        };
        let key = self.key_for(header.kid.as_deref(), alg).await?;
        let skew = self.config.clock_skew.0.as_secs();
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.leeway = skew;
        validation.validate_nbf = true;
        validation.validate_exp = true;
        // Exactly the issuer with and without one trailing slash.
        validation.set_issuer(&[issuer.clone(), format!("{issuer}/")]);
        // A token without `aud` at all may stand on its `client_id` instead
        // when the provider says so (checked below, once verified); one that
        // carries `aud` (even null or malformed) must match the audience.
        let by_client_id = !self.config.accept_client_id.is_empty() && payload.get("aud").is_none();
        if by_client_id {
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp", "iss"]);
        } else {
            validation.set_audience(&self.config.audience);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError::Rejected(match e.kind() {
                K::ExpiredSignature => "token expired".into(),
                K::ImmatureSignature => "token not valid yet (nbf)".into(),
                K::InvalidSignature => {
                    format!("token signature does not verify against {issuer}'s published keys")
                }
                K::InvalidAudience => format!(
                    "token audience is not accepted here (expected {})",
                    self.config.audience.join(" or ")
                ),
                K::InvalidIssuer => format!("token issuer is not {issuer}"),
                K::MissingRequiredClaim(c) => format!("token has no {c} claim"),
                K::InvalidAlgorithm => {
                    format!("token algorithm {alg_name} does not fit the signing key it names")
                }
                _ => "token is malformed".into(),
            })
        })?;
        let claims = data.claims;
        if by_client_id {
            let client_id = claims.get("client_id").and_then(Value::as_str);
            if claims.get("aud").is_some()
                || !client_id.is_some_and(|c| self.config.accept_client_id.iter().any(|a| a == c))
            {
                return Err(AuthError::Rejected(format!(
                    "token has no aud claim, and its client_id is not one accepted here (expected audience {} or client_id {})",
                    self.config.audience.join(" or "),
                    self.config.accept_client_id.join(" or ")
                )));
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if let Some(iat) = claims.get("iat") {
            match numeric_date(iat) {
                Some(iat) if iat <= now + skew as f64 => {}
                Some(_) => {
                    return Err(AuthError::Rejected(
                        "token issued in the future (iat)".into(),
                    ))
                }
                None => return Err(AuthError::Rejected("token iat is not a number".into())),
            }
        }
        // jsonwebtoken checked `exp` (rounded to whole seconds); the session
        // ends at the exact instant.
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .and_then(|exp| Duration::try_from_secs_f64(exp).ok())
            .and_then(|exp| UNIX_EPOCH.checked_add(exp))
            .ok_or_else(|| AuthError::Rejected("token exp is not a number".into()))?;
        let subject = claim_string(&claims, &self.config.identity_claim)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                AuthError::Rejected(format!(
                    "token has no {:?} claim to identify the caller (auth.oidc identity_claim)",
                    self.config.identity_claim
                ))
            })?;
        let groups = match claim_groups(&claims, &self.config.groups_claim, self.separator()) {
            Some(groups) => groups,
            None if self.config.userinfo_fallback => match self.userinfo_groups(token).await {
                Ok(groups) => groups,
                Err(e) => {
                    // No groups means no access: this fails closed.
                    tracing::warn!(message = "Userinfo did not give the groups; the caller has none.", issuer = %issuer, subject = %subject, error = %e);
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let token_id = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) if !jti.is_empty() => jti.to_string(),
            _ => token_fingerprint(token),
        };
        Ok(Identity {
            subject,
            groups,
            // One form whichever slash the token's `iss` had (and however
            // the configuration spells it), so a caller is one identity.
            issuer: issuer.clone(),
            token_id,
            expires_at,
            connections: None,
        })
    }
}

/// The id of a token without a `jti`: a hash of it (revocable by the token).
pub fn token_fingerprint(token: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(&Sha256::digest(token.trim().as_bytes())[..16])
    )
}

fn find_key(
    cache: &Cache,
    kid: Option<&str>,
    alg: Algorithm,
) -> Option<Result<DecodingKey, AuthError>> {
    let keys = &cache.keys.as_ref()?.keys;
    let fits = |k: &&Jwk| {
        // A key that names its algorithm is used for that one only.
        k.common
            .key_algorithm
            .is_none_or(|ka| format!("{ka:?}").eq_ignore_ascii_case(&format!("{alg:?}")))
    };
    let jwk = match kid {
        Some(kid) => keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid))
            .find(fits)?,
        // Without a kid, only an unambiguous set will do.
        None => {
            let mut candidates = keys.iter().filter(fits);
            match (candidates.next(), candidates.next()) {
                (Some(one), None) => one,
                _ => return None,
            }
        }
    };
    Some(DecodingKey::from_jwk(jwk).map_err(|_| {
        AuthError::Rejected("the provider's signing key cannot be used for this token".into())
    }))
}

/// The signing keys of a JWKS; keys for encryption or of unknown types are skipped.
fn parse_jwks(set: &Value) -> Vec<Jwk> {
    set.get("keys")
        .and_then(Value::as_array)
        .map(|keys| {
            keys.iter()
                .filter(|k| {
                    k.get("use")
                        .and_then(Value::as_str)
                        .is_none_or(|u| u == "sig")
                })
                .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn parse_algorithm(name: &str) -> Result<Algorithm, OidcError> {
    if !sluice_core::config::OIDC_ALGORITHMS.contains(&name) {
        return Err(OidcError::Config(format!(
            "algorithm {name:?} is not allowed for identity providers"
        )));
    }
    name.parse::<Algorithm>()
        .map_err(|_| OidcError::Config(format!("unknown algorithm {name:?}")))
}

/// The JOSE header as sent (`alg` kept as text so that `none` and unknown
/// algorithms get a clear refusal rather than a parse error).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHeader {
    pub alg: Option<String>,
    pub kid: Option<String>,
}

pub(crate) fn raw_parts(token: &str) -> Option<(RawHeader, Value)> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (h, p, _s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: RawHeader = serde_json::from_slice(&engine.decode(h).ok()?).ok()?;
    let payload: Value = serde_json::from_slice(&engine.decode(p).ok()?).ok()?;
    Some((header, payload))
}

#[async_trait]
impl Authenticator for OidcProvider {
    fn name(&self) -> &str {
        &self.issuer
    }

    async fn authenticate(&self, token: &str) -> Result<Option<Identity>, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Ok(None);
        }
        let Some((header, payload)) = raw_parts(token) else {
            return Ok(None);
        };
        // Only the issuer decides whose token it is; everything else is verified.
        let Some(iss) = payload.get("iss").and_then(Value::as_str) else {
            return Ok(None);
        };
        if !is_issuer(&self.issuer, iss) {
            return Ok(None);
        }
        self.verify(token, &header, &payload).await.map(Some)
    }
}
