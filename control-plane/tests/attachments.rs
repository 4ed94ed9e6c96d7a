//! Attachments through the HTTP API, on SQLite and PostgreSQL: streaming uploads with size and
//! type limits, download by membership (ranges, ETag), messages that carry files, and the
//! bytes deleted with their message, their group or by the sweeper; on the local filesystem
//! and on S3 (moto's S3 server, `tests/clients/s3_server.py`, needs `CONVOY_TEST_PYTHON`).

mod support;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use control_plane::{AttachmentConfig, AttachmentStore, InProcessRegistry};
use futures_util::StreamExt as _;
use protocol::api::{AttachmentView, AuthResponse, MessagePage, MessageView};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use support::{App, Reply, with_each_backend};
use tokio::io::{AsyncBufReadExt as _, BufReader};

type TestApp = App<InProcessRegistry>;

/// A PNG signature and some bytes: enough for the type check.
fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..len.saturating_sub(8)).map(|i| (i * 7 % 251) as u8));
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn upload(
    app: &TestApp,
    group: &str,
    user: &AuthResponse,
    query: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> Reply {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/groups/{group}/attachments{query}"))
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", user.access_token),
        )
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .unwrap();
    app.send(request).await
}

async fn download(app: &TestApp, id: &str, user: &AuthResponse, extra: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder()
        .uri(format!("/v1/attachments/{id}"))
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", user.access_token),
        );
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    app.send(request.body(Body::empty()).unwrap()).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} in {reply:?}"))
}

/// Where the bytes of `attachment` are, in the test control planes' local store.
fn local_path(attachment: &AttachmentView) -> PathBuf {
    match AttachmentConfig::default().store {
        AttachmentStore::Local(dir) => dir
            .join(attachment.group.to_string())
            .join(attachment.id.to_string()),
        AttachmentStore::S3 { .. } => unreachable!("tests store locally by default"),
    }
}

#[tokio::test]
async fn members_share_files_in_messages_and_only_members_can_read_them() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let eve = app.register("eve").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let bytes = png(5000);

        let reply = upload(
            &app,
            &g,
            &ann,
            "?name=..%2Ftrip%20photo.png",
            "image/png",
            bytes.clone(),
        )
        .await;
        let photo: AttachmentView = reply.parse(StatusCode::CREATED);
        assert_eq!(
            header(&reply, "location"),
            format!("/v1/attachments/{}", photo.id)
        );
        assert_eq!(photo.name, "_trip photo.png");
        assert_eq!(photo.size, 5000);
        assert_eq!(photo.sha256, sha256_hex(&bytes));
        assert_eq!(photo.content_type, "image/png");
        assert_eq!(photo.message_id, None);
        assert!(local_path(&photo).exists());
        let id = photo.id.to_string();

        // A member reads it whole, in part, or learns it has not changed.
        let whole = download(&app, &id, &bob, &[]).await;
        assert_eq!(whole.status, StatusCode::OK);
        assert!(whole.raw[..] == bytes[..], "the file came back changed");
        assert_eq!(header(&whole, "content-type"), "image/png");
        assert_eq!(header(&whole, "content-length"), "5000");
        assert_eq!(header(&whole, "x-content-type-options"), "nosniff");
        assert!(
            header(&whole, "content-disposition")
                .starts_with("inline; filename=\"_trip photo.png\"")
        );
        let etag = header(&whole, "etag").to_owned();
        assert_eq!(etag, format!("\"{}\"", photo.sha256));
        let part = download(&app, &id, &bob, &[("range", "bytes=100-199")]).await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(header(&part, "content-range"), "bytes 100-199/5000");
        assert_eq!(&part.raw[..], &bytes[100..200]);
        let tail = download(&app, &id, &bob, &[("range", "bytes=-10")]).await;
        assert_eq!(&tail.raw[..], &bytes[4990..]);
        let stale_if_range = download(
            &app,
            &id,
            &bob,
            &[("range", "bytes=0-0"), ("if-range", "\"other\"")],
        )
        .await;
        assert_eq!(
            stale_if_range.status,
            StatusCode::OK,
            "a changed If-Range gets everything"
        );
        let outside = download(&app, &id, &bob, &[("range", "bytes=5000-")]).await;
        outside.problem(StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(header(&outside, "content-range"), "bytes */5000");
        let same = download(&app, &id, &bob, &[("if-none-match", &etag)]).await;
        assert_eq!(same.status, StatusCode::NOT_MODIFIED);
        assert!(same.raw.is_empty());

        // Someone outside the group, or nobody at all, gets nothing.
        download(&app, &id, &eve, &[])
            .await
            .problem(StatusCode::NOT_FOUND);
        let anonymous = app
            .call(Method::GET, &format!("/v1/attachments/{id}"), None, None)
            .await;
        anonymous.problem(StatusCode::UNAUTHORIZED);
        upload(&app, &g, &eve, "", "image/png", png(100))
            .await
            .problem(StatusCode::NOT_FOUND);

        // A message takes the file; its view (live and in the history) carries it.
        let messages = format!("/v1/groups/{g}/messages");
        let sent: MessageView = app
            .post(
                &messages,
                &ann.access_token,
                json!({"client_msg_id": "m1", "body": "", "attachments": [id]}),
            )
            .await
            .parse(StatusCode::CREATED);
        assert_eq!(sent.body.as_deref(), Some(""));
        assert_eq!(sent.attachments.len(), 1);
        assert_eq!(sent.attachments[0].id, photo.id);
        assert_eq!(sent.attachments[0].message_id, Some(sent.id));
        let history: MessagePage = app
            .get(&messages, &bob.access_token)
            .await
            .parse(StatusCode::OK);
        let listed = history.messages.iter().find(|m| m.id == sent.id).unwrap();
        assert_eq!(listed.attachments, sent.attachments);
        let again: MessageView = app
            .post(
                &messages,
                &ann.access_token,
                json!({"client_msg_id": "m1", "body": "", "attachments": [id]}),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(
            again.attachments, sent.attachments,
            "a retry answers the original"
        );

        // A file goes with one message, and only its uploader's.
        let reused = app
            .post(
                &messages,
                &ann.access_token,
                json!({"client_msg_id": "m2", "body": "again", "attachments": [id]}),
            )
            .await;
        reused.problem(StatusCode::BAD_REQUEST);
        let bobs: AttachmentView = upload(
            &app,
            &g,
            &bob,
            "?name=notes.txt",
            "text/plain",
            "ça va ✓".as_bytes().to_vec(),
        )
        .await
        .parse(StatusCode::CREATED);
        let borrowed = app
            .post(
                &messages,
                &ann.access_token,
                json!({"client_msg_id": "m3", "body": "x", "attachments": [bobs.id]}),
            )
            .await;
        borrowed.problem(StatusCode::BAD_REQUEST);
        let twice = app
            .post(
                &messages,
                &bob.access_token,
                json!({"client_msg_id": "m4", "body": "x", "attachments": [bobs.id, bobs.id]}),
            )
            .await;
        twice.problem(StatusCode::BAD_REQUEST);
        let nothing = app
            .post(
                &messages,
                &bob.access_token,
                json!({"client_msg_id": "m5", "body": ""}),
            )
            .await;
        nothing.problem(StatusCode::BAD_REQUEST);
        let text = download(&app, &bobs.id.to_string(), &ann, &[]).await;
        assert_eq!(header(&text, "content-type"), "text/plain; charset=utf-8");
        assert!(header(&text, "content-disposition").starts_with("attachment;"));

        // An attached file goes only with its message; deleting the message deletes the bytes.
        app.delete(&format!("/v1/attachments/{id}"), &ann.access_token)
            .await
            .problem(StatusCode::CONFLICT);
        let deleted = app
            .delete(&format!("{messages}/{}", sent.id), &ann.access_token)
            .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        download(&app, &id, &bob, &[])
            .await
            .problem(StatusCode::NOT_FOUND);
        assert!(
            !local_path(&photo).exists(),
            "the bytes went with the message"
        );
        let history: MessagePage = app
            .get(&messages, &bob.access_token)
            .await
            .parse(StatusCode::OK);
        let tombstone = history.messages.iter().find(|m| m.id == sent.id).unwrap();
        assert!(tombstone.attachments.is_empty());

        // An unsent upload: its uploader or an admin may delete it, another member may not.
        let uri = format!("/v1/attachments/{}", bobs.id);
        let unsent: AttachmentView = upload(
            &app,
            &g,
            &ann,
            "",
            "application/pdf",
            b"%PDF-1.7 x".to_vec(),
        )
        .await
        .parse(StatusCode::CREATED);
        app.delete(&format!("/v1/attachments/{}", unsent.id), &bob.access_token)
            .await
            .problem(StatusCode::FORBIDDEN);
        assert_eq!(
            app.delete(&uri, &ann.access_token).await.status,
            StatusCode::NO_CONTENT
        );
        assert!(!local_path(&bobs).exists());
        app.delete(&uri, &bob.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);

        // Deleting the group deletes every file in it.
        assert!(local_path(&unsent).exists());
        assert_eq!(
            app.delete(&format!("/v1/groups/{g}"), &ann.access_token)
                .await
                .status,
            StatusCode::NO_CONTENT
        );
        assert!(!local_path(&unsent).exists());
        assert!(!local_path(&unsent).parent().unwrap().exists());
    })
    .await;
}

#[tokio::test]
async fn uploads_are_checked_against_their_type_and_the_limits() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let g = app.group(&ann).await;

        let html = upload(&app, &g, &ann, "", "text/html", b"<script>".to_vec()).await;
        let problem = html.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(
            problem.detail.unwrap().contains("image/png"),
            "the allowed types are listed"
        );
        upload(&app, &g, &ann, "", "image/png", b"<html><script>".to_vec())
            .await
            .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        upload(&app, &g, &ann, "", "text/plain", vec![b'a', 0xFF, b'b'])
            .await
            .problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        upload(&app, &g, &ann, "", "image/png", Vec::new())
            .await
            .problem(StatusCode::BAD_REQUEST);
        upload(&app, &g, &ann, "?name=a%0Ab", "image/png", png(10))
            .await
            .problem(StatusCode::BAD_REQUEST);
        upload(&app, &g, &ann, "?colour=red", "image/png", png(10))
            .await
            .problem(StatusCode::BAD_REQUEST);

        // A declared length over the limit is refused before any byte is read.
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("/v1/groups/{g}/attachments"))
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", ann.access_token),
            )
            .header(header::CONTENT_TYPE, "image/png")
            .header(
                header::CONTENT_LENGTH,
                (control_plane::attachments::DEFAULT_MAX_BYTES + 1).to_string(),
            )
            .body(Body::from(png(10)))
            .unwrap();
        app.send(request)
            .await
            .problem(StatusCode::PAYLOAD_TOO_LARGE);

        // Over HTTP, with a small limit: a chunked upload that grows past it is cut off, one
        // just under it arrives whole, characters split between chunks and all.
        let dir = std::env::temp_dir().join(format!("convoy-attachments-{}", uuid::Uuid::now_v7()));
        let addr = support::serve_replica(&control_plane::Config {
            attachments: AttachmentConfig {
                store: AttachmentStore::Local(dir.clone()),
                max_bytes: 64 * 1024,
                ..AttachmentConfig::default()
            },
            ..support::config(&app.database_url)
        })
        .await;
        let over = chunked(addr, &g, &ann, "image/png", png(65 * 1024), 1000).await;
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let text = "é✓x".repeat(64 * 1024 / 6).into_bytes();
        let fits = chunked(addr, &g, &ann, "text/plain", text.clone(), 1001).await;
        assert_eq!(fits.status(), StatusCode::CREATED);
        let fits: AttachmentView = fits.json().await.unwrap();
        assert_eq!(fits.size, text.len() as u64);
        let read = reqwest::Client::new()
            .get(format!("http://{addr}/v1/attachments/{}", fits.id))
            .bearer_auth(&ann.access_token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(read[..] == text[..], "the text came back changed");
        let staged: Vec<_> = std::fs::read_dir(dir.join(".staging")).unwrap().collect();
        assert!(staged.is_empty(), "nothing stays staged: {staged:?}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// Uploads `bytes` in chunks of `chunk` bytes with no Content-Length (chunked encoding).
async fn chunked(
    addr: SocketAddr,
    group: &str,
    user: &AuthResponse,
    content_type: &str,
    bytes: Vec<u8>,
    chunk: usize,
) -> reqwest::Response {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
    reqwest::Client::new()
        .post(format!("http://{addr}/v1/groups/{group}/attachments"))
        .bearer_auth(&user.access_token)
        .header("content-type", content_type)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn uploads_no_message_takes_are_swept() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let g = app.group(&ann).await;
        let kept: AttachmentView = upload(&app, &g, &ann, "", "image/png", png(64))
            .await
            .parse(StatusCode::CREATED);
        let sent: MessageView = app
            .post(
                &format!("/v1/groups/{g}/messages"),
                &ann.access_token,
                json!({"client_msg_id": "k", "body": "kept", "attachments": [kept.id]}),
            )
            .await
            .parse(StatusCode::CREATED);
        let unsent: AttachmentView = upload(&app, &g, &ann, "", "image/png", png(64))
            .await
            .parse(StatusCode::CREATED);
        // A replica that sweeps every 20 ms anything unsent for 0 s.
        support::serve_replica(&control_plane::Config {
            attachments: AttachmentConfig {
                unsent_ttl: Duration::ZERO,
                sweep_every: Duration::from_millis(20),
                ..AttachmentConfig::default()
            },
            ..support::config(&app.database_url)
        })
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        while local_path(&unsent).exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sweeper never came"
            );
            ticks.tick().await;
        }
        download(&app, &unsent.id.to_string(), &ann, &[])
            .await
            .problem(StatusCode::NOT_FOUND);
        let still = download(&app, &kept.id.to_string(), &ann, &[]).await;
        assert_eq!(still.status, StatusCode::OK, "a sent file stays");
        assert_eq!(sent.attachments[0].id, kept.id);
    })
    .await;
}

/// moto's S3 server with an empty bucket, until dropped.
struct S3Server {
    _child: tokio::process::Child,
    port: u16,
    bucket: String,
}

impl S3Server {
    async fn start(python: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/clients/s3_server.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the S3 server starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the S3 server is ready in time")
            .unwrap()
            .expect("the S3 server runs");
        let ready: Value = serde_json::from_str(&line).unwrap();
        Self {
            _child: child,
            port: u16::try_from(ready["port"].as_u64().unwrap()).unwrap(),
            bucket: ready["bucket"].as_str().unwrap().to_owned(),
        }
    }

    /// An object as the S3 server holds it (`None` for 404), read past the control plane.
    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let response = reqwest::get(format!(
            "http://127.0.0.1:{}/{}/{key}",
            self.port, self.bucket
        ))
        .await
        .unwrap();
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => None,
            reqwest::StatusCode::OK => Some(response.bytes().await.unwrap().to_vec()),
            other => panic!("the S3 server answered {other}"),
        }
    }
}

#[tokio::test]
async fn attachments_live_in_an_s3_bucket_when_configured() {
    let Some(python) = support::external("CONVOY_TEST_PYTHON", "attachments on S3") else {
        return;
    };
    with_each_backend(InProcessRegistry::new, move |app| {
        let python = python.clone();
        async move {
            let s3 = S3Server::start(&python).await;
            let staging =
                std::env::temp_dir().join(format!("convoy-s3-staging-{}", uuid::Uuid::now_v7()));
            let addr = support::serve_replica(&control_plane::Config {
                attachments: AttachmentConfig {
                    store: AttachmentStore::S3 {
                        config: control_plane::S3Config {
                            endpoint: format!("http://127.0.0.1:{}", s3.port),
                            bucket: s3.bucket.clone(),
                            region: "us-east-1".into(),
                            access_key: "convoy".into(),
                            secret_key: "convoy-secret".into(),
                        },
                        staging: staging.clone(),
                    },
                    ..AttachmentConfig::default()
                },
                ..support::config(&app.database_url)
            })
            .await;
            let ann = app.register("ann").await;
            let g = app.group(&ann).await;
            let bytes = png(300 * 1024);
            let reply = chunked(addr, &g, &ann, "image/png", bytes.clone(), 16 * 1024).await;
            assert_eq!(reply.status(), StatusCode::CREATED);
            let photo: AttachmentView = reply.json().await.unwrap();
            let key = format!("{g}/{}", photo.id);
            assert_eq!(
                s3.object(&key).await.as_deref(),
                Some(&bytes[..]),
                "the bytes are in the bucket"
            );
            assert!(!local_path(&photo).exists(), "and not on the local disk");

            let client = reqwest::Client::new();
            let url = format!("http://{addr}/v1/attachments/{}", photo.id);
            let part = client
                .get(&url)
                .bearer_auth(&ann.access_token)
                .header("range", "bytes=1000-1999")
                .send()
                .await
                .unwrap();
            assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
            assert_eq!(&part.bytes().await.unwrap()[..], &bytes[1000..2000]);
            let mut whole = client
                .get(&url)
                .bearer_auth(&ann.access_token)
                .send()
                .await
                .unwrap()
                .bytes_stream();
            let mut read = Vec::new();
            while let Some(chunk) = whole.next().await {
                read.extend_from_slice(&chunk.unwrap());
            }
            assert!(read == bytes, "the file came back changed");

            // Deleting the message deletes the object; deleting the group, every object in it.
            let sent: MessageView = client
                .post(format!("http://{addr}/v1/groups/{g}/messages"))
                .bearer_auth(&ann.access_token)
                .json(&json!({"client_msg_id": "s3", "body": "pic", "attachments": [photo.id]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let deleted = client
                .delete(format!("http://{addr}/v1/groups/{g}/messages/{}", sent.id))
                .bearer_auth(&ann.access_token)
                .send()
                .await
                .unwrap();
            assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
            assert!(
                s3.object(&key).await.is_none(),
                "the object went with its message"
            );
            let mut keys = Vec::new();
            for _ in 0..2 {
                let reply = chunked(
                    addr,
                    &g,
                    &ann,
                    "application/pdf",
                    b"%PDF-1.4 tiny".to_vec(),
                    4,
                )
                .await;
                let unsent: AttachmentView = reply.json().await.unwrap();
                keys.push(format!("{g}/{}", unsent.id));
            }
            assert!(s3.object(&keys[0]).await.is_some());
            let gone = client
                .delete(format!("http://{addr}/v1/groups/{g}"))
                .bearer_auth(&ann.access_token)
                .send()
                .await
                .unwrap();
            assert_eq!(gone.status(), StatusCode::NO_CONTENT);
            for key in &keys {
                assert!(s3.object(key).await.is_none(), "{key} went with its group");
            }
            let _ = std::fs::remove_dir_all(&staging);
        }
    })
    .await;
}
