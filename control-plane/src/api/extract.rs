//! Extractors whose rejections are [`AppError`]s, so a malformed request gets problem+json like
//! every other error: [`Json`] (body), [`Path`] (path parameters) and [`Caller`] (the bearer
//! access token).

use super::AppState;
use super::error::{AppError, clipped};
use crate::clock::Now;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use protocol::ids::UserId;

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
        let claims = state
            .tokens
            .verify_access(token, Now::read().secs())
            .map_err(|e| AppError::InvalidToken(e.to_string()))?;
        Ok(Caller {
            user: claims.sub,
            session: claims.sid,
        })
    }
}

/// The token of an `Authorization: Bearer` header (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, AppError> {
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
