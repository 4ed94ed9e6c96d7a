//! [`AppError`], the one error type of every handler and extractor, rendered as RFC 9457
//! problem+json. Callers see a status, a title and a safe detail; internal causes are logged
//! (with `tracing`) and never echoed.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::{PROBLEM_JSON, Problem};

pub use protocol::api::PROBLEM_TYPE_PREFIX;

/// The challenge sent with every 401.
const BEARER_CHALLENGE: &str = "Bearer realm=\"convoy\"";
const BEARER_INVALID: &str = "Bearer realm=\"convoy\", error=\"invalid_token\"";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AppError {
    /// A field broke a validation rule (400).
    #[error("{0}")]
    InvalidInput(String),
    /// The body or a path parameter could not be read (400, 413, 415 or 422).
    #[error("{detail}")]
    BadRequest { status: StatusCode, detail: String },
    /// No bearer token (401).
    #[error("this route needs an access token: Authorization: Bearer <token>")]
    MissingToken,
    /// A bearer token that is not a valid access token (401).
    #[error("{0}")]
    InvalidToken(String),
    /// Login failed; the same answer whether or not the account exists (401).
    #[error("the email or the password is wrong")]
    BadCredentials,
    /// The password was right; the account's second factor is due (401 with `mfa_token`).
    #[error(
        "this account has a second factor: send a code with the mfa_token to /v1/auth/login/mfa"
    )]
    MfaRequired(String),
    /// A TOTP or recovery code that is wrong, outside its time step or already used (401).
    #[error("the code is wrong, expired or already used")]
    BadCode,
    /// Too many attempts on one budget (429 with `Retry-After`).
    #[error("too many attempts; try again in {} s", retry_after_secs(*.0))]
    TooManyAttempts(std::time::Duration),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Gone(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("the method is not allowed on this resource")]
    MethodNotAllowed,
    /// A byte range outside the file (416); the headers carry `Content-Range: bytes */size`.
    #[error("the range asked for lies outside the file")]
    RangeNotSatisfiable(axum::http::HeaderMap),
    /// No media node takes new sessions (503).
    #[error("no media node can take a new session now; try again shortly")]
    NoMediaNode,
    /// A media node did not carry out a relayed request (502).
    #[error("{0}")]
    BadGateway(&'static str),
    /// A media node refused a relayed request for a reason of the caller's (409 or 422); the
    /// detail is the node's, worded for clients.
    #[error("{detail}")]
    Refused { status: u16, detail: String },
    /// The database does not answer (503).
    #[error("the database does not answer")]
    NotReady,
    /// A bug or an outage; logged, shown as a bare 500.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl AppError {
    pub(crate) fn internal(e: impl Into<BoxError>) -> Self {
        AppError::Internal(e.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            AppError::InvalidInput(_) => StatusCode::BAD_REQUEST,
            AppError::BadRequest { status, .. } => *status,
            AppError::MissingToken
            | AppError::InvalidToken(_)
            | AppError::BadCredentials
            | AppError::MfaRequired(_)
            | AppError::BadCode => StatusCode::UNAUTHORIZED,
            AppError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Gone(_) => StatusCode::GONE,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            AppError::NoMediaNode | AppError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            AppError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            AppError::Refused { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::CONFLICT)
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The last segment of the problem `type` and the title that goes with it.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            AppError::InvalidInput(_) => ("invalid-input", "A field is invalid"),
            AppError::BadRequest { status, .. } => match *status {
                StatusCode::PAYLOAD_TOO_LARGE => ("body-too-large", "The body is too large"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    ("unsupported-media-type", "Unsupported media type")
                }
                StatusCode::UNPROCESSABLE_ENTITY => {
                    ("invalid-body", "The body does not match the expected shape")
                }
                _ => ("bad-request", "The request is malformed"),
            },
            AppError::MissingToken => ("unauthenticated", "Authentication required"),
            AppError::InvalidToken(_) => ("invalid-token", "The access token is not valid"),
            AppError::BadCredentials => ("invalid-credentials", "Invalid credentials"),
            AppError::MfaRequired(_) => ("mfa-required", "A second factor is required"),
            AppError::BadCode => ("invalid-code", "Invalid code"),
            AppError::TooManyAttempts(_) => ("too-many-attempts", "Too many attempts"),
            AppError::Forbidden(_) => ("forbidden", "Not allowed"),
            AppError::NotFound(_) => ("not-found", "Not found"),
            AppError::Gone(_) => ("gone", "No longer available"),
            AppError::Conflict(_) => ("conflict", "Conflict"),
            AppError::MethodNotAllowed => ("method-not-allowed", "Method not allowed"),
            AppError::RangeNotSatisfiable(_) => ("range-not-satisfiable", "Range not satisfiable"),
            AppError::NoMediaNode => ("no-media-node", "No media capacity"),
            AppError::NotReady => ("not-ready", "Not ready"),
            AppError::BadGateway(_) => ("media-node-failed", "The media node did not answer"),
            AppError::Refused { .. } => {
                ("media-node-refused", "The media node refused the request")
            }
            AppError::Internal(_) => ("internal", "Internal server error"),
        }
    }

    /// The problem body callers see.
    pub(crate) fn problem(&self) -> Problem {
        let (slug, title) = self.kind();
        let detail = match self {
            AppError::Internal(_) => None,
            AppError::Refused { detail, .. } => Some(clipped(detail.clone())),
            other => Some(other.to_string()),
        };
        Problem {
            mfa_token: match self {
                AppError::MfaRequired(token) => Some(token.clone()),
                _ => None,
            },
            ..Problem::new(self.status().as_u16(), slug, title, detail)
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            AppError::Internal(cause) => tracing::error!(error = %cause, "request failed"),
            AppError::NotReady => tracing::warn!("readiness check failed"),
            _ => tracing::debug!(%status, error = %self, "request refused"),
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        if let AppError::RangeNotSatisfiable(extra) = &self {
            headers.extend(extra.clone());
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let AppError::TooManyAttempts(wait) = self {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        let challenge = match self {
            AppError::InvalidToken(_) => Some(BEARER_INVALID),
            AppError::MissingToken
            | AppError::BadCredentials
            | AppError::MfaRequired(_)
            | AppError::BadCode => Some(BEARER_CHALLENGE),
            _ => None,
        };
        if let Some(challenge) = challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// Whole seconds to wait, rounded up, at least 1 (`Retry-After` has no fractions).
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

/// Longest detail echoed about a caller's input (a serde message can quote a huge field name).
const MAX_DETAIL_LEN: usize = 300;

/// `detail`, cut to at most [`MAX_DETAIL_LEN`] bytes on a character boundary.
pub(crate) fn clipped(mut detail: String) -> String {
    if detail.len() > MAX_DETAIL_LEN {
        let mut end = MAX_DETAIL_LEN;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    detail
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::internal(e)
    }
}

impl From<crate::passwords::PasswordError> for AppError {
    fn from(e: crate::passwords::PasswordError) -> Self {
        AppError::internal(e)
    }
}

impl From<crate::domain::Invalid> for AppError {
    fn from(e: crate::domain::Invalid) -> Self {
        AppError::InvalidInput(e.0.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_details_are_clipped_on_a_character_boundary() {
        assert_eq!(clipped("short".into()), "short");
        let long = "é".repeat(400);
        let clipped = clipped(long);
        assert!(clipped.len() <= MAX_DETAIL_LEN + '…'.len_utf8());
        assert!(clipped.ends_with('…'));
    }

    #[test]
    fn internal_errors_show_no_detail() {
        let e = AppError::internal("connection refused to 10.0.0.5 password=hunter2");
        let problem = e.problem();
        assert_eq!(problem.status, 500);
        assert_eq!(problem.detail, None);
        assert!(!serde_json::to_string(&problem).unwrap().contains("hunter2"));
    }

    #[test]
    fn problems_carry_their_status_and_a_typed_uri() {
        let p = AppError::Gone("the invite has expired").problem();
        assert_eq!(p.status, 410);
        assert_eq!(p.type_, "tag:convoy,2025:problem/gone");
        assert_eq!(p.detail.as_deref(), Some("the invite has expired"));

        let response =
            AppError::TooManyAttempts(std::time::Duration::from_millis(1_001)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");

        let response = AppError::MissingToken.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            BEARER_CHALLENGE
        );
    }
}
