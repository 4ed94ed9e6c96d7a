//! The OpenAPI 3.1 description of the REST API, served at `/v1/openapi.json`: generated from the
//! handlers' `#[utoipa::path]` attributes and the protocol crate's types (`ToSchema`), so it
//! moves with the code. Every operation also answers RFC 9457 problem+json for any error status
//! (the `default` response), and every one but the public ones needs a bearer access token.

use axum::response::IntoResponse;
use std::sync::LazyLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// A file's bytes: a binary string of any allowed media type.
pub(crate) struct FileBytes;

impl PartialSchema for FileBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl ToSchema for FileBytes {}

/// A JSON object described elsewhere (the JWKS of RFC 7517, the readiness report).
pub(crate) struct AnyJson;

impl PartialSchema for AnyJson {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::Object).into()
    }
}

impl ToSchema for AnyJson {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Convoy control plane",
        description = "Accounts, groups, messages, attachments, calls and voice sessions. \
            Errors are RFC 9457 problem+json. Realtime events: the WebSocket at /v1/events.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::health::livez,
        super::health::readyz,
        super::auth::jwks,
        super::auth::register,
        super::auth::login,
        super::auth::login_mfa,
        super::auth::change_password,
        super::auth::refresh,
        super::auth::logout,
        super::auth::sessions,
        super::auth::revoke_session,
        super::auth::revoke_other_sessions,
        super::totp::status,
        super::totp::enroll,
        super::totp::confirm,
        super::totp::disable,
        super::totp::renew_recovery_codes,
        super::users::me,
        super::users::update_me,
        super::users::update_settings,
        super::users::profile,
        super::users::register_device,
        super::users::devices,
        super::users::delete_device,
        super::users::vapid_public_key,
        super::calls::create,
        super::location::token,
        super::location::history,
        super::location::delete_history,
        super::groups::create,
        super::groups::list,
        super::groups::get,
        super::groups::update,
        super::groups::delete,
        super::groups::join,
        super::groups::members,
        super::groups::presence,
        super::groups::set_role,
        super::groups::remove_member,
        super::groups::invite,
        super::groups::accept,
        super::messages::send,
        super::messages::list,
        super::messages::edit,
        super::messages::delete,
        super::messages::markers,
        super::sessions::allocate,
        super::participants::list,
        super::participants::mute,
        super::participants::speak,
        super::participants::remove,
        super::music::get,
        super::music::control,
        super::places::list,
        super::places::create,
        super::places::update,
        super::places::remove,
        super::places::for_engine,
        super::events::events,
        super::attachments::upload,
        super::attachments::download,
        super::attachments::delete
    ),
    components(schemas(protocol::api::Problem)),
    modifiers(&Conventions),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// Adds the bearer scheme and the problem+json `default` response of every operation.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let problem = ResponseBuilder::new()
            .description("An error: RFC 9457 problem details")
            .content(
                protocol::api::PROBLEM_JSON,
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        // The media types of files, from the one list uploads are checked against.
        let files = || {
            let mut content = ContentBuilder::new()
                .schema(Some(FileBytes::schema()))
                .build();
            content.example = None;
            crate::attachments::allowed_types()
                .map(|t| (t.to_owned(), content.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        if let Some(item) = doc.paths.paths.get_mut("/v1/attachments/{id}")
            && let Some(get) = item.get.as_mut()
        {
            for status in ["200", "206"] {
                if let Some(RefOr::T(response)) = get.responses.responses.get_mut(status) {
                    response.content = files().into_iter().collect();
                }
            }
        }
        if let Some(item) = doc.paths.paths.get_mut("/v1/groups/{id}/attachments")
            && let Some(post) = item.post.as_mut()
            && let Some(body) = post.request_body.as_mut()
        {
            body.content = files().into_iter().collect();
        }
        for item in doc.paths.paths.values_mut() {
            let operations: [&mut Option<Operation>; 5] = [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
                &mut item.put,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| problem.clone().into());
            }
        }
    }
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serialises")
});

/// `GET /v1/openapi.json`.
pub(super) async fn serve() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The document as JSON.
#[cfg(test)]
fn document() -> serde_json::Value {
    serde_json::from_str(&DOCUMENT).expect("the OpenAPI document is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_and_every_operation_has_a_problem_answer() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        for route in [
            "/v1/auth/register",
            "/v1/groups/{id}/messages",
            "/v1/groups/{id}/attachments",
            "/v1/attachments/{id}",
            "/v1/sessions/{id}/participants/{pid}/mute",
            "/v1/location/token",
            "/v1/sessions/{id}/music",
        ] {
            assert!(paths.contains_key(route), "{route} is missing");
        }
        let mut operations = 0;
        for (route, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let default =
                    &operation["responses"]["default"]["content"]["application/problem+json"];
                assert!(
                    default.is_object(),
                    "{method} {route} has no problem answer"
                );
            }
        }
        assert_eq!(operations, 62);
        assert!(doc["components"]["schemas"]["MessageView"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        let register = &doc["paths"]["/v1/auth/register"]["post"];
        assert_eq!(
            register["security"],
            serde_json::json!([{}]),
            "public routes need no token"
        );
    }
}
