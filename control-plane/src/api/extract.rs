//! Extractors whose rejections are [`AppError`]s, so a malformed request gets problem+json like
//! every other error: [`Json`] (body), [`Path`] (path parameters) and [`Caller`] (the bearer
//! access token).

use super::AppState;
use super::error::{AppError, clipped};
use crate::clock::Now;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::ids::UserId;
use protocol::token::AccessClaims;
use std::net::{IpAddr, SocketAddr};
use uuid::Uuid;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// A JSON body (64 KiB at most, see [`super::BODY_LIMIT`]) or a problem+json 400/413/415/422.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub(crate) struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let detail = match &rejection {
            // Serde's message is about the caller's own bytes: where and what was wrong.
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                clipped(rejection.body_text())
            }
            JsonRejection::MissingJsonContentType(_) => {
                "expected a body with Content-Type: application/json".to_owned()
            }
            _ if status == StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the body is larger than {} bytes", super::BODY_LIMIT)
            }
            _ => "the body could not be read".to_owned(),
        };
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        AppError::BadRequest { status, detail }
    }
}

/// Path parameters, or a problem+json 400 (e.g. a group id that is not a UUID).
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub(crate) struct Path<T>(pub T);

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        match rejection {
            PathRejection::FailedToDeserializePathParams(e) => AppError::BadRequest {
                status: StatusCode::BAD_REQUEST,
                detail: clipped(e.body_text()),
            },
            other => AppError::internal(other.body_text()),
        }
    }
}

/// The user an access token speaks for: `Authorization: Bearer <access token>`, verified
/// (signature, `typ` access, aud `api`, issuer, expiry with leeway). Otherwise a 401 with
/// `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    pub user: UserId,
    /// The sign-in session the access token was issued for.
    pub session: Option<uuid::Uuid>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer(&parts.headers)?;
        let claims = authenticate(state, token, Now::read()).await?;
        Ok(Caller {
            user: claims.sub,
            session: claims.sid,
        })
    }
}

/// Checks an access token (signature, kind, audience, time, issuer) and that the sign-in
/// session it names is not signed out (see `revocations`).
pub(super) async fn authenticate(
    state: &AppState,
    token: &str,
    now: Now,
) -> Result<AccessClaims, AppError> {
    let claims = state
        .tokens
        .verify_access(token, now.secs())
        .map_err(|e| AppError::InvalidToken(e.to_string()))?;
    if let Some(session) = claims.sid
        && is_signed_out(state, session, claims.sub, now).await?
    {
        return Err(AppError::InvalidToken(
            "this access token's session is signed out; sign in again".into(),
        ));
    }
    Ok(claims)
}

/// Whether sign-in session `session` of `user` is signed out: from this replica's cache when
/// fresh, else from SQL.
async fn is_signed_out(
    state: &AppState,
    session: Uuid,
    user: UserId,
    now: Now,
) -> Result<bool, sqlx::Error> {
    match state.revocations.known(session, now.ms) {
        Some(revoked) => Ok(revoked),
        None => signed_out_in_sql(state, session, user, now).await,
    }
}

/// Whether sign-in session `session` of `user` is signed out, asked of SQL (not the cache,
/// which may predate a sign-out elsewhere); the answer is cached.
pub(super) async fn signed_out_in_sql(
    state: &AppState,
    session: Uuid,
    user: UserId,
    now: Now,
) -> Result<bool, sqlx::Error> {
    let revoked = state
        .store
        .auth_session_revoked(session, user, now.ms)
        .await?;
    state.revocations.record(session, user, revoked, now.ms);
    Ok(revoked)
}

/// The client an attempt budget is kept for: the connection's peer address or, when the peer
/// is a configured trusted proxy, the nearest address in `X-Forwarded-For` that is not one.
/// IPv6 addresses count by their /64 (one subscriber usually holds a whole /64). Without a
/// known peer (requests that did not come through a socket), all share one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientAddr(client_key(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}

/// The budget key of a request from `peer` with these headers.
pub(crate) fn client_key(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpAddr]) -> String {
    budget_key(client_ip(peer, headers, trusted))
}

/// The client's address: the peer, or walking `X-Forwarded-For` from the right past trusted
/// proxies. An entry that does not parse stops the walk at the last trusted hop.
fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let mut ip = canonical(peer?);
    if !trusted.contains(&ip) {
        return Some(ip);
    }
    let hops = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','));
    for hop in hops {
        let Ok(addr) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        ip = canonical(addr);
        if !trusted.contains(&ip) {
            break;
        }
    }
    Some(ip)
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn budget_key(ip: Option<IpAddr>) -> String {
    match ip {
        None => "unknown".to_owned(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The token of an `Authorization: Bearer` header (the scheme is case-insensitive).
pub(super) fn bearer(headers: &HeaderMap) -> Result<&str, AppError> {
    let value = headers.get(AUTHORIZATION).ok_or(AppError::MissingToken)?;
    let value = value
        .to_str()
        .map_err(|_| AppError::InvalidToken("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AppError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AppError::InvalidToken("the bearer token is empty".into()));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_forwarded_it() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let proxy = ip("10.0.0.1");
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(Some(ip("9.9.9.9")), &h, &[proxy]),
            Some(ip("9.9.9.9"))
        );
        // Behind one trusted proxy: the rightmost entry.
        assert_eq!(client_ip(Some(proxy), &h, &[proxy]), Some(ip("10.0.0.2")));
        // Behind two: past both, never the client-supplied leftmost entry.
        let both = [proxy, ip("10.0.0.2")];
        assert_eq!(client_ip(Some(proxy), &h, &both), Some(ip("1.2.3.4")));
        // Garbage stops the walk at the last trusted hop.
        let mut junk = HeaderMap::new();
        junk.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, nonsense"),
        );
        assert_eq!(client_ip(Some(proxy), &junk, &[proxy]), Some(proxy));
        assert_eq!(client_ip(None, &h, &[proxy]), None);
        // Mapped IPv4 is IPv4; IPv6 counts by /64.
        assert_eq!(
            client_ip(Some(ip("::ffff:1.2.3.4")), &h, &[]),
            Some(ip("1.2.3.4"))
        );
        assert_eq!(
            budget_key(Some(ip("2001:db8:1:2:3:4:5:6"))),
            budget_key(Some(ip("2001:db8:1:2:ffff::1")))
        );
        assert_ne!(
            budget_key(Some(ip("2001:db8:1:2::1"))),
            budget_key(Some(ip("2001:db8:1:3::1")))
        );
        assert_eq!(budget_key(None), "unknown");
    }

    #[test]
    fn bearer_tokens_are_found_case_insensitively() {
        assert_eq!(bearer(&headers("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&headers("bearer  abc ")).unwrap(), "abc");
        assert!(matches!(
            bearer(&HeaderMap::new()),
            Err(AppError::MissingToken)
        ));
        assert!(matches!(
            bearer(&headers("Basic dXNlcjpwdw==")),
            Err(AppError::MissingToken)
        ));
        assert!(matches!(
            bearer(&headers("Bearer")),
            Err(AppError::InvalidToken(_))
        ));
        assert!(matches!(
            bearer(&headers("Bearer   ")),
            Err(AppError::InvalidToken(_))
        ));
    }
}
