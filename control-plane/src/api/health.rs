//! `/livez` (the process answers) and `/readyz` (the database answers too). `/readyz` says in
//! its body whether the shared ephemeral state is degraded: Redis configured but not answering,
//! so attempt budgets are kept per process. That is still ready: nothing durable depends on it.

use super::AppState;
use super::error::AppError;
use super::extract::Json;
use super::openapi::AnyJson;
use crate::clock::Now;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use std::time::Duration;

/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/livez", tag = "operations", summary = "The process is up", security(()), responses((status = 200, description = "Alive")))]
pub(super) async fn livez() -> StatusCode {
    StatusCode::OK
}

#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "The database answers (and whether Redis does)", security(()), responses((status = 200, description = "Ready, or `degraded` without Redis", body = AnyJson)))]
pub(super) async fn readyz(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, AppError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {
            // Attempt budgets and fan-out each fall back to this replica when Redis fails.
            let fanout = state.fanout.redis_ok();
            let redis = match &state.throttle {
                t if !t.uses_redis() && fanout.is_none() => "off",
                t if (!t.uses_redis() || t.shared(Now::read().ms)) && fanout != Some(false) => "ok",
                _ => "degraded",
            };
            let status = if redis == "degraded" {
                "degraded"
            } else {
                "ok"
            };
            Ok(Json(
                json!({"status": status, "database": "ok", "redis": redis}),
            ))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "database ping failed");
            Err(AppError::NotReady)
        }
        Err(_) => Err(AppError::NotReady),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ControlPlane, InProcessRegistry};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use std::sync::Arc;
    use tower::ServiceExt as _;

    async fn get(cp: &ControlPlane, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        cp.router().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn readyz_follows_the_database_and_livez_does_not() {
        let dir = std::env::temp_dir().join(format!("convoy-health-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config::new(
            "127.0.0.1:0".parse().unwrap(),
            format!("sqlite://{}?mode=rwc", dir.join("db").display()),
        );
        let cp = ControlPlane::new(&config, Arc::new(InProcessRegistry::new()))
            .await
            .unwrap();
        assert_eq!(get(&cp, "/readyz").await, StatusCode::OK);

        cp.state.store.close().await;
        assert_eq!(get(&cp, "/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&cp, "/livez").await, StatusCode::OK);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
