//! `/livez` (the process answers) and `/readyz` (the database answers too).

use super::AppState;
use super::error::AppError;
use axum::extract::State;
use axum::http::StatusCode;
use std::time::Duration;

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) async fn livez() -> StatusCode {
    StatusCode::OK
}

pub(super) async fn readyz(State(state): State<AppState>) -> Result<StatusCode, AppError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(StatusCode::OK),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "database ping failed");
            Err(AppError::NotReady)
        }
        Err(_) => Err(AppError::NotReady),
    }
}
