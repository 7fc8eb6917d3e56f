//! Connecting: which `Origin`s may connect, and token authentication.
//!
//! Tokens are standard HS256 JWTs with `exp`, signed with one of the app's
//! secrets (several may be valid at once, for rotation), so any backend can
//! mint them; `roost token` does too. Their claims reach guests as
//! `context.claims`, and `sub` gives the socket id `users_socket:<sub>`.
//! Nothing here logs a token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::config::{AppConfig, CheckOrigin, Secret};
use crate::metrics::refusal;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

/// Who connected: what a session needs of a verified token.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `users_socket:<sub>` when the token has a subject.
    pub socket_id: Option<String>,
    /// The verified claims, a JSON object (`{}` when anonymous).
    pub claims: String,
}

impl Identity {
    pub fn anonymous() -> Self {
        Self {
            socket_id: None,
            claims: "{}".to_owned(),
        }
    }
}

/// Why a connection was refused; logged, never sent to the client.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("no token, and the app does not allow anonymous sockets")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (its `nbf` is in the future)")]
    NotYetValid,
    #[error("the token's signature does not match any of the app's secrets")]
    BadSignature,
    #[error("the token is not a valid HS256 JWT with `exp`: {0}")]
    Malformed(String),
    #[error("origin `{0}` is not allowed")]
    Origin(String),
}

impl AuthError {
    /// The `reason` label of `roost_connect_refusals_total`.
    pub fn metric(&self) -> &'static str {
        match self {
            Self::Missing => refusal::TOKEN_MISSING,
            Self::Expired => refusal::TOKEN_EXPIRED,
            Self::NotYetValid => refusal::TOKEN_NOT_YET_VALID,
            Self::BadSignature => refusal::TOKEN_SIGNATURE,
            Self::Malformed(_) => refusal::TOKEN_MALFORMED,
            Self::Origin(_) => refusal::ORIGIN,
        }
    }
}

/// Verifies a token (if any) for `app`.
pub fn authenticate(app: &AppConfig, token: Option<&str>) -> Result<Identity, AuthError> {
    let token = token.filter(|t| !t.is_empty());
    match token {
        None if app.allows_anonymous() => Ok(Identity::anonymous()),
        None => Err(AuthError::Missing),
        // An app without secrets cannot verify tokens: it is anonymous only.
        Some(_) if app.secrets.is_empty() => Ok(Identity::anonymous()),
        Some(token) => verify(&app.secrets, token),
    }
}

/// Checks a token against each secret in turn.
pub fn verify(secrets: &[Secret], token: &str) -> Result<Identity, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // `exp` is required and checked; `nbf`, if present, too (RFC 7519
    // §4.1.5: a token must not be accepted before it), with the same leeway.
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    let mut error = AuthError::BadSignature;
    for secret in secrets {
        match jsonwebtoken::decode::<Map<String, Value>>(
            token,
            &DecodingKey::from_secret(secret.bytes()),
            &validation,
        ) {
            Ok(data) => return Ok(identity(data.claims)),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature => continue,
                ErrorKind::ExpiredSignature => error = AuthError::Expired,
                ErrorKind::ImmatureSignature => error = AuthError::NotYetValid,
                _ => return Err(AuthError::Malformed(e.to_string())),
            },
        }
    }
    Err(error)
}

fn identity(claims: Map<String, Value>) -> Identity {
    let socket_id = match claims.get("sub") {
        Some(Value::String(sub)) => Some(format!("users_socket:{sub}")),
        Some(Value::Number(sub)) => Some(format!("users_socket:{sub}")),
        _ => None,
    };
    Identity {
        socket_id,
        claims: Value::Object(claims).to_string(),
    }
}

/// Signs a token for `sub` valid for `ttl`, with extra claims.
pub fn mint(
    secret: &Secret,
    sub: &str,
    ttl: Duration,
    claims: Map<String, Value>,
) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut claims = claims;
    claims.insert("sub".into(), sub.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl.as_secs()).into());
    sign(secret, &claims)
}

/// Signs claims as they are (HS256).
pub fn sign(secret: &Secret, claims: &Map<String, Value>) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.bytes()),
    )?)
}

/// Phoenix's `check_origin`: no `Origin` header is always allowed; `true`
/// compares the origin's host with the request's; a list compares scheme,
/// host and port where an entry gives them, and `*.x` matches `x` and its
/// subdomains.
pub fn check_origin(app: &AppConfig, headers: &HeaderMap) -> Result<(), AuthError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let allowed = match &app.check_origin {
        CheckOrigin::Enabled(false) => true,
        CheckOrigin::Enabled(true) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| Url::parse(&format!("//{h}")).host);
            Some(Url::parse(origin).host) == host
        }
        CheckOrigin::Allowed(entries) => {
            let origin = Url::parse(origin);
            entries
                .iter()
                .any(|entry| Url::parse(entry).admits(&origin))
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(AuthError::Origin(origin.to_owned()))
    }
}

/// The parts of an origin (`scheme://host:port`) `check_origin` compares.
#[derive(Debug, PartialEq)]
struct Url {
    scheme: Option<String>,
    host: String,
    port: Option<String>,
}

impl Url {
    fn parse(text: &str) -> Self {
        let (scheme, rest) = match text.split_once("//") {
            Some((scheme, rest)) => (scheme.strip_suffix(':').filter(|s| !s.is_empty()), rest),
            None => (None, text),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => (host, Some(port)),
            _ => (authority, None),
        };
        Self {
            scheme: scheme.map(str::to_ascii_lowercase),
            host: host.to_ascii_lowercase(),
            port: port.map(str::to_owned),
        }
    }

    /// Whether this allow-list entry admits `origin`.
    fn admits(&self, origin: &Url) -> bool {
        let host = match self.host.strip_prefix("*.") {
            Some(domain) => origin.host == domain || origin.host.ends_with(&format!(".{domain}")),
            None => origin.host == self.host,
        };
        let scheme = self.scheme.is_none() || self.scheme == origin.scheme;
        let port = self.port.is_none() || self.port == origin.port;
        host && scheme && port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn app(extra: &str) -> AppConfig {
        let text = format!("[apps.a]\nmount = \"/s\"\nroutes = {{ x = \"x.wasm\" }}\n{extra}");
        Config::parse(&text, "/".as_ref())
            .expect("valid")
            .apps
            .remove("a")
            .expect("app")
    }

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().expect("origin"));
        h.insert(header::HOST, host.parse().expect("host"));
        h
    }

    const SECRET: &str = "value:0123456789abcdef-secret";

    #[test]
    fn tokens_round_trip_and_set_the_socket_id() {
        let app = app(&format!("secrets = [\"{SECRET}\"]"));
        let mut extra = Map::new();
        extra.insert("username".into(), "Ada".into());
        let token = mint(&app.secrets[0], "42", Duration::from_secs(60), extra).unwrap();
        let identity = authenticate(&app, Some(&token)).unwrap();
        assert_eq!(identity.socket_id.as_deref(), Some("users_socket:42"));
        let claims: Value = serde_json::from_str(&identity.claims).unwrap();
        assert_eq!(claims["username"], "Ada");
        assert_eq!(claims["sub"], "42");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let app = app(&format!("secrets = [\"{SECRET}\"]"));
        let other = app_secret("value:another-secret-of-16-bytes");
        assert_eq!(authenticate(&app, None), Err(AuthError::Missing));
        let foreign = mint(&other, "1", Duration::from_secs(60), Map::new()).unwrap();
        assert_eq!(
            authenticate(&app, Some(&foreign)),
            Err(AuthError::BadSignature)
        );
        let mut expired = Map::new();
        expired.insert("exp".into(), 1.into());
        let token = sign(&app.secrets[0], &expired).unwrap();
        assert_eq!(authenticate(&app, Some(&token)), Err(AuthError::Expired));
        let in_an_hour = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let mut early = Map::new();
        early.insert("exp".into(), (in_an_hour + 60).into());
        early.insert("nbf".into(), in_an_hour.into());
        let token = sign(&app.secrets[0], &early).unwrap();
        assert_eq!(
            authenticate(&app, Some(&token)),
            Err(AuthError::NotYetValid)
        );
        // Within the leeway, `nbf` passes.
        early.insert(
            "nbf".into(),
            (in_an_hour - 3600 + LEEWAY_SECONDS - 1).into(),
        );
        let token = sign(&app.secrets[0], &early).unwrap();
        assert!(authenticate(&app, Some(&token)).is_ok());
        assert!(matches!(
            authenticate(&app, Some("not.a.jwt")),
            Err(AuthError::Malformed(_))
        ));
        let good = mint(&app.secrets[0], "1", Duration::from_secs(60), Map::new()).unwrap();
        let (head, _) = good.rsplit_once('.').unwrap();
        let tampered = format!("{head}.AAAA");
        assert_eq!(
            authenticate(&app, Some(&tampered)),
            Err(AuthError::BadSignature)
        );
    }

    fn app_secret(source: &str) -> Secret {
        app(&format!("secrets = [\"{source}\"]")).secrets.remove(0)
    }

    #[test]
    fn any_of_several_secrets_verifies() {
        let app = app(&format!(
            "secrets = [\"value:the-new-secret-16b\", \"{SECRET}\"]"
        ));
        let token = mint(
            &app_secret(SECRET),
            "7",
            Duration::from_secs(60),
            Map::new(),
        )
        .unwrap();
        assert!(authenticate(&app, Some(&token)).is_ok());
    }

    #[test]
    fn anonymous_apps_ignore_tokens_and_token_apps_need_one() {
        let open = app("");
        assert_eq!(authenticate(&open, None), Ok(Identity::anonymous()));
        assert_eq!(
            authenticate(&open, Some("whatever")),
            Ok(Identity::anonymous())
        );
        let both = app(&format!("secrets = [\"{SECRET}\"]\nanonymous = true"));
        assert_eq!(authenticate(&both, None), Ok(Identity::anonymous()));
    }

    #[test]
    fn origin_checks_follow_phoenix() {
        let default = app("");
        assert!(check_origin(&default, &HeaderMap::new()).is_ok());
        assert!(
            check_origin(
                &default,
                &headers("http://localhost:3000", "localhost:4000")
            )
            .is_ok()
        );
        assert!(check_origin(&default, &headers("http://evil.com", "localhost:4000")).is_err());
        let off = app("check_origin = false");
        assert!(check_origin(&off, &headers("http://evil.com", "localhost:4000")).is_ok());
        let list =
            app(r#"check_origin = ["https://example.com", "//another.com:888", "//*.other.com"]"#);
        let h = |o| headers(o, "roost.local");
        assert!(check_origin(&list, &h("https://example.com")).is_ok());
        assert!(check_origin(&list, &h("http://example.com")).is_err());
        assert!(check_origin(&list, &h("https://another.com:888")).is_ok());
        assert!(check_origin(&list, &h("https://another.com")).is_err());
        assert!(check_origin(&list, &h("https://other.com")).is_ok());
        assert!(check_origin(&list, &h("http://a.b.other.com:1")).is_ok());
        assert!(check_origin(&list, &h("http://notother.com")).is_err());
    }
}
