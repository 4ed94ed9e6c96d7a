//! Schemathesis (PyPI, others' code) against the control plane's own `/v1/openapi.json`, with a
//! real media node behind it: every operation is called with data generated from the document
//! (valid and invalid), and every answer must be no server error and match the document in
//! status, media type, headers and body. Real ids (a group with a message and a file, a voice
//! session, a member) are handed in so the calls reach past the 404s.
//!
//! Needs `CONVOY_TEST_PYTHON`: a Python with `schemathesis` (`tests/clients/requirements.txt`).

use convoy::dev::{DevConfig, DevStack};
use std::process::Stdio;
use tests::api::User;

/// Test cases per operation and phase.
const MAX_EXAMPLES: &str = "25";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_departure_from_the_document() {
    let Some(python) = tests::external("CONVOY_TEST_PYTHON", "schemathesis on /v1/openapi.json")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("convoy-openapi-{}", uuid::Uuid::now_v7()));
    let stack = DevStack::start(DevConfig::ephemeral(dir.join("data")))
        .await
        .unwrap();
    let base = stack.control_plane_url.clone();

    // Things for the generated calls to find.
    let ann = User::register(&base, "schemaann").await.unwrap();
    let bob = User::register(&base, "schemabob").await.unwrap();
    let carl = User::register(&base, "schemacarl").await.unwrap();
    let group = ann.create_group("Fuzzed").await.unwrap();
    bob.accept(&ann.invite(&group).await.unwrap())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let message: serde_json::Value = http
        .post(format!("{base}/v1/groups/{}/messages", group.id))
        .bearer_auth(&ann.token)
        .json(&serde_json::json!({"client_msg_id": "seed", "body": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file: serde_json::Value = http
        .post(format!(
            "{base}/v1/groups/{}/attachments?name=a.txt",
            group.id
        ))
        .bearer_auth(&ann.token)
        .header("content-type", "text/plain")
        .body("some text")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_, session) = ann.allocate(&group).await.unwrap();

    let config = format!(
        r#"
# Hypothesis's checks of its own generation (slow on a loaded CI machine), not of the server.
suppress-health-check = ["too_slow", "filter_too_much", "data_too_large"]

[generation]
max-examples = {MAX_EXAMPLES}

[[operations]]
include-path-regex = "^/v1/groups/\\{{id\\}}"
parameters = {{ "path.id" = "{group}", "path.message" = {message}, "path.user" = "{bob}" }}

[[operations]]
include-path-regex = "^/v1/attachments/"
parameters = {{ "path.id" = "{file}" }}

[[operations]]
include-path-regex = "^/v1/sessions/"
parameters = {{ "path.id" = "{session}" }}

[[operations]]
include-path = "/v1/users/{{id}}"
parameters = {{ "path.id" = "{bob}" }}
"#,
        group = group.id,
        message = message["id"],
        bob = bob.id,
        file = file["id"].as_str().unwrap(),
        session = session.session.id,
    );
    let config_file = dir.join("schemathesis.toml");
    std::fs::write(&config_file, config).unwrap();

    // Logging out and ending a sign-in session (schemathesis finds the caller's own in
    // GET /v1/auth/sessions) end the caller's access token at once: those run apart, last, as
    // another user.
    const SIGN_OUTS: &str = r"^/v1/auth/(logout|sessions/\{id\})$";
    let everything_else = schemathesis(
        &python,
        &config_file,
        &base,
        &ann.token,
        &["--exclude-path-regex", SIGN_OUTS],
    )
    .await;
    let sign_outs = schemathesis(
        &python,
        &config_file,
        &base,
        &carl.token,
        &["--include-path-regex", SIGN_OUTS],
    )
    .await;
    stack.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        everything_else && sign_outs,
        "schemathesis found server errors or answers that depart from /v1/openapi.json (above)"
    );
}

/// Runs schemathesis on the document at `base` with a bearer `token`; whether it found nothing.
async fn schemathesis(
    python: &str,
    config_file: &std::path::Path,
    base: &str,
    token: &str,
    only: &[&str],
) -> bool {
    tokio::process::Command::new(python)
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(config_file)
        .args([
            "run",
            &format!("{base}/v1/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
            "--header",
            &format!("Authorization: Bearer {token}"),
            "--no-color",
        ])
        .args(only)
        .current_dir(config_file.parent().unwrap())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .status()
        .await
        .expect("schemathesis runs")
        .success()
}
