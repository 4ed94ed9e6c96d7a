//! Groups (details, settings, roles, leaving, removal, deletion) and messages (idempotent send,
//! cursors, edits, tombstones, markers, delivery status) through the HTTP API, on SQLite and
//! PostgreSQL.

mod support;

use axum::http::StatusCode;
use control_plane::InProcessRegistry;
use futures_util::future::join_all;
use protocol::api::{GroupView, MemberList, MessagePage, MessageView};
use serde_json::json;
use support::{App, with_each_backend};

type TestApp = App<InProcessRegistry>;

async fn members(app: &TestApp, group: &str, token: &str) -> MemberList {
    app.get(&format!("/v1/groups/{group}/members"), token)
        .await
        .parse(StatusCode::OK)
}

async fn page(app: &TestApp, group: &str, token: &str, query: &str) -> MessagePage {
    app.get(&format!("/v1/groups/{group}/messages{query}"), token)
        .await
        .parse(StatusCode::OK)
}

#[tokio::test]
async fn admins_manage_details_settings_and_roles_and_a_group_always_keeps_an_admin() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let cat = app.register("cat").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        app.join(&g, &ann, &cat).await;
        let uri = format!("/v1/groups/{g}");

        // A member cannot change the group or invite (admins invite by default).
        let change = json!({"name": "Road trip", "description": "Lyon → Turin",
            "avatar_url": "https://img.example.org/g.png",
            "settings": {"join_permission": "members", "location_sharing": false}});
        app.patch(&uri, &bob.access_token, change.clone())
            .await
            .problem(StatusCode::FORBIDDEN);
        let invite = app
            .post(&format!("{uri}/invites"), &bob.access_token, json!({}))
            .await;
        assert_eq!(invite.status, StatusCode::FORBIDDEN);

        let updated: GroupView = app
            .patch(&uri, &ann.access_token, change)
            .await
            .parse(StatusCode::OK);
        assert_eq!(updated.name, "Road trip");
        assert_eq!(updated.description, "Lyon → Turin");
        assert_eq!(
            updated.avatar_url.as_deref(),
            Some("https://img.example.org/g.png")
        );
        assert!(!updated.settings.location_sharing);
        assert!(updated.settings.music_sharing, "what was not named stays");
        assert_eq!(updated.member_count, 3);
        let seen: GroupView = app.get(&uri, &bob.access_token).await.parse(StatusCode::OK);
        assert_eq!(seen.name, "Road trip");
        assert_eq!(seen.role, protocol::api::Role::Member);
        // join_permission = members: now bob may invite.
        app.invite(&g, &bob).await;
        // Bad values are refused with the rule, and change nothing.
        for bad in [
            json!({"avatar_url": "http://img.example.org/g.png"}),
            json!({"name": ""}),
            json!({"settings": {"privacy": "secret"}}),
            json!({"colour": "red"}),
        ] {
            let reply = app.patch(&uri, &ann.access_token, bad.clone()).await;
            assert!(reply.status.is_client_error(), "{bad}: {reply:?}");
        }
        let cleared: GroupView = app
            .patch(&uri, &ann.access_token, json!({"avatar_url": ""}))
            .await
            .parse(StatusCode::OK);
        assert_eq!(
            cleared.avatar_url, None,
            "the empty string removes the picture"
        );

        // Roles: ann promotes bob; bob demotes ann; bob, now the only admin, may neither
        // demote himself nor leave.
        let role = |user: &protocol::api::AuthResponse| format!("{uri}/members/{}", user.user.id);
        let reply = app
            .patch(&role(&bob), &cat.access_token, json!({"role": "admin"}))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "members cannot promote"
        );
        let reply = app
            .patch(&role(&bob), &ann.access_token, json!({"role": "admin"}))
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
        let reply = app
            .patch(&role(&ann), &bob.access_token, json!({"role": "member"}))
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
        app.patch(&role(&bob), &bob.access_token, json!({"role": "member"}))
            .await
            .problem(StatusCode::CONFLICT);
        app.delete(&role(&bob), &bob.access_token)
            .await
            .problem(StatusCode::CONFLICT);
        let list = members(&app, &g, &cat.access_token).await;
        let roles: Vec<_> = list
            .members
            .iter()
            .map(|m| (m.username.as_str(), m.role))
            .collect();
        use protocol::api::Role::{Admin, Member};
        assert_eq!(roles, [("ann", Member), ("bob", Admin), ("cat", Member)]);

        // Removal: a member cannot remove another; the admin can; the removed member no
        // longer sees the group. Leaving: cat leaves on her own.
        app.delete(&role(&cat), &ann.access_token)
            .await
            .problem(StatusCode::FORBIDDEN);
        let reply = app.delete(&role(&ann), &bob.access_token).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{reply:?}");
        app.get(&uri, &ann.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);
        let reply = app.delete(&role(&cat), &cat.access_token).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        assert_eq!(members(&app, &g, &bob.access_token).await.members.len(), 1);
        // The last member leaving deletes the group.
        let reply = app.delete(&role(&bob), &bob.access_token).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        let pool = app.db().await;
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM groups")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(left, 0);
    })
    .await;
}

#[tokio::test]
async fn groups_are_listed_joined_when_public_and_deleted_by_admins_only() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g1 = app.group(&ann).await;
        let g2 = app.group(&ann).await;
        let list: protocol::api::GroupList = app
            .get("/v1/groups", &ann.access_token)
            .await
            .parse(StatusCode::OK);
        let ids: Vec<String> = list.groups.iter().map(|g| g.id.to_string()).collect();
        assert_eq!(ids, [g1.clone(), g2.clone()]);

        // Private: joining without an invite looks like no group at all.
        app.post(
            &format!("/v1/groups/{g1}/join"),
            &bob.access_token,
            json!({}),
        )
        .await
        .problem(StatusCode::NOT_FOUND);
        app.patch(
            &format!("/v1/groups/{g1}"),
            &ann.access_token,
            json!({"settings": {"privacy": "public"}}),
        )
        .await
        .parse::<GroupView>(StatusCode::OK);
        let joined: GroupView = app
            .post(
                &format!("/v1/groups/{g1}/join"),
                &bob.access_token,
                json!({}),
            )
            .await
            .parse(StatusCode::OK);
        assert_eq!(joined.member_count, 2);

        app.delete(&format!("/v1/groups/{g1}"), &bob.access_token)
            .await
            .problem(StatusCode::FORBIDDEN);
        let reply = app
            .delete(&format!("/v1/groups/{g1}"), &ann.access_token)
            .await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        app.get(&format!("/v1/groups/{g1}"), &bob.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);
        let list: protocol::api::GroupList = app
            .get("/v1/groups", &bob.access_token)
            .await
            .parse(StatusCode::OK);
        assert!(list.groups.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_send_is_idempotent_forever_ids_increase_and_cursors_page_both_ways() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let eve = app.register("eve").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;

        let mut ids = Vec::new();
        for i in 0..7 {
            let m: MessageView = app
                .say(&g, &ann, &format!("ann-{i}"), &format!("hello {i}"))
                .await
                .parse(StatusCode::CREATED);
            ids.push(m.id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // A retry, even with another body, answers the original.
        let again: MessageView = app
            .say(&g, &ann, "ann-3", "something else")
            .await
            .parse(StatusCode::OK);
        assert_eq!((again.id, again.body.as_deref()), (ids[3], Some("hello 3")));
        // The same client id from another sender is another message.
        let bobs: MessageView = app
            .say(&g, &bob, "ann-3", "bob's")
            .await
            .parse(StatusCode::CREATED);
        assert!(bobs.id > ids[6]);

        // Newest page first asked, oldest first within it.
        let latest = page(&app, &g, &bob.access_token, "?limit=3").await;
        let got: Vec<u64> = latest.messages.iter().map(|m| m.id).collect();
        assert_eq!(got, [ids[5], ids[6], bobs.id]);
        assert!(latest.has_more);
        let older = page(
            &app,
            &g,
            &bob.access_token,
            &format!("?before={}&limit=3", ids[5]),
        )
        .await;
        let got: Vec<u64> = older.messages.iter().map(|m| m.id).collect();
        assert_eq!(got, [ids[2], ids[3], ids[4]]);
        assert!(older.has_more);
        let oldest = page(&app, &g, &bob.access_token, &format!("?before={}", ids[2])).await;
        assert_eq!(oldest.messages.len(), 2);
        assert!(!oldest.has_more);
        let newer = page(
            &app,
            &g,
            &bob.access_token,
            &format!("?after={}&limit=4", ids[1]),
        )
        .await;
        let got: Vec<u64> = newer.messages.iter().map(|m| m.id).collect();
        assert_eq!(got, [ids[2], ids[3], ids[4], ids[5]]);
        assert!(newer.has_more);
        for bad in [
            "?limit=0",
            "?limit=201",
            "?before=-1",
            "?before=x",
            "?around=3",
        ] {
            let reply = app
                .get(&format!("/v1/groups/{g}/messages{bad}"), &bob.access_token)
                .await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {reply:?}");
        }

        // Outsiders see nothing and post nothing; bad bodies and ids are refused.
        app.say(&g, &eve, "e1", "let me in")
            .await
            .problem(StatusCode::NOT_FOUND);
        app.get(&format!("/v1/groups/{g}/messages"), &eve.access_token)
            .await
            .problem(StatusCode::NOT_FOUND);
        for (id, body) in [("ok", ""), ("ok", " \n "), ("has space", "x"), ("", "x")] {
            app.say(&g, &ann, id, body)
                .await
                .problem(StatusCode::BAD_REQUEST);
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_retries_store_one_message_and_concurrent_sends_get_distinct_consecutive_ids() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let g = app.group(&ann).await;
        let retries = join_all((0..20).map(|_| app.say(&g, &ann, "same", "once"))).await;
        let created = retries
            .iter()
            .filter(|r| r.status == StatusCode::CREATED)
            .count();
        assert_eq!(created, 1, "{retries:?}");
        let ids: std::collections::HashSet<_> = retries
            .iter()
            .map(|r| r.json["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), 1);

        // Enough at once that a batch outgrows one multi-row INSERT.
        let client_ids: Vec<String> = (0..150).map(|i| format!("m{i}")).collect();
        let sends = join_all(client_ids.iter().map(|id| app.say(&g, &ann, id, "hi"))).await;
        let mut ids: Vec<u64> = sends
            .iter()
            .map(|r| {
                assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
                r.json["id"].as_u64().unwrap()
            })
            .collect();
        ids.sort_unstable();
        let first = ids[0];
        assert_eq!(ids, (first..first + 150).collect::<Vec<_>>());

        // A client id is the sender's own: another member's "same", sent alongside a retry of
        // ann's, is a new message, and the retry still answers ann's original.
        let bob = app.register("bob").await;
        app.join(&g, &ann, &bob).await;
        let (theirs, again) = tokio::join!(
            app.say(&g, &bob, "same", "bob's"),
            app.say(&g, &ann, "same", "once")
        );
        assert_eq!(theirs.status, StatusCode::CREATED, "{theirs:?}");
        assert_eq!(theirs.json["body"], "bob's");
        assert_eq!(again.status, StatusCode::OK, "{again:?}");
        assert_eq!(again.json["body"], "once");
        assert_eq!(again.json["id"], retries[0].json["id"]);
        let pool = app.db().await;
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM group_events WHERE kind = 'message'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(stored, 152);
    })
    .await;
}

#[tokio::test]
async fn only_the_sender_edits_the_sender_or_an_admin_deletes_and_a_tombstone_keeps_no_text() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        let m: MessageView = app
            .say(&g, &bob, "b1", "see you at 9")
            .await
            .parse(StatusCode::CREATED);
        let uri = format!("/v1/groups/{g}/messages/{}", m.id);
        app.patch(&uri, &ann.access_token, json!({"body": "not mine"}))
            .await
            .problem(StatusCode::FORBIDDEN);
        let edited: MessageView = app
            .patch(&uri, &bob.access_token, json!({"body": "see you at 10"}))
            .await
            .parse(StatusCode::OK);
        assert_eq!(edited.body.as_deref(), Some("see you at 10"));
        assert!(edited.edited_at.is_some());
        app.patch(
            &format!("/v1/groups/{g}/messages/999999"),
            &bob.access_token,
            json!({"body": "x"}),
        )
        .await
        .problem(StatusCode::NOT_FOUND);

        // An admin deletes bob's message; deleting again changes nothing.
        let reply = app.delete(&uri, &ann.access_token).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        let reply = app.delete(&uri, &bob.access_token).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT);
        app.patch(&uri, &bob.access_token, json!({"body": "undo"}))
            .await
            .problem(StatusCode::GONE);
        let history = page(&app, &g, &ann.access_token, "").await;
        let tomb = history.messages.iter().find(|x| x.id == m.id).unwrap();
        assert_eq!(tomb.body, None);
        assert!(tomb.deleted_at.is_some());
        // Neither the message nor its edit keeps the text anywhere.
        let pool = app.db().await;
        let texts: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM group_events WHERE body LIKE '%see you%'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(texts, 0);
        let deletes: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM group_events WHERE kind = 'message_deleted'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(deletes, 1);
        // A member deletes only their own.
        let a: MessageView = app
            .say(&g, &ann, "a1", "admin's")
            .await
            .parse(StatusCode::CREATED);
        app.delete(
            &format!("/v1/groups/{g}/messages/{}", a.id),
            &bob.access_token,
        )
        .await
        .problem(StatusCode::FORBIDDEN);
    })
    .await;
}

#[tokio::test]
async fn markers_only_move_forward_and_give_the_sender_delivered_then_read() {
    with_each_backend(InProcessRegistry::new, |app| async move {
        let ann = app.register("ann").await;
        let bob = app.register("bob").await;
        let cat = app.register("cat").await;
        let g = app.group(&ann).await;
        app.join(&g, &ann, &bob).await;
        app.join(&g, &ann, &cat).await;
        let m: MessageView = app
            .say(&g, &ann, "a1", "leaving now")
            .await
            .parse(StatusCode::CREATED);
        let status = |page: MessagePage| page.messages.last().unwrap().status;
        use protocol::api::DeliveryStatus::{Delivered, Read, Sent};
        assert_eq!(m.status, Some(Sent));
        let markers = format!("/v1/groups/{g}/markers");
        let set = |user: &protocol::api::AuthResponse, body| {
            let token = user.access_token.clone();
            let app = app.clone();
            let markers = markers.clone();
            async move {
                app.post(&markers, &token, body)
                    .await
                    .parse::<protocol::api::Markers>(StatusCode::OK)
            }
        };
        let b = set(&bob, json!({"delivered": m.id})).await;
        assert_eq!((b.read_upto, b.delivered_upto), (0, m.id));
        assert_eq!(
            status(page(&app, &g, &ann.access_token, "").await),
            Some(Sent)
        );
        assert_eq!(
            status(page(&app, &g, &bob.access_token, "").await),
            None,
            "others see no status on ann's messages"
        );
        set(&cat, json!({"read": m.id})).await;
        assert_eq!(
            status(page(&app, &g, &ann.access_token, "").await),
            Some(Delivered)
        );
        let b = set(&bob, json!({"read": m.id})).await;
        assert_eq!((b.read_upto, b.delivered_upto), (m.id, m.id));
        assert_eq!(
            status(page(&app, &g, &ann.access_token, "").await),
            Some(Read)
        );
        // Never back, never beyond the group's last event.
        let b = set(&bob, json!({"read": 1})).await;
        assert_eq!(b.read_upto, m.id);
        let m2: MessageView = app
            .say(&g, &ann, "a2", "left")
            .await
            .parse(StatusCode::CREATED);
        let b = set(&bob, json!({"read": 1_000_000})).await;
        assert_eq!(b.read_upto, m2.id, "clamped to the last event");
        let list = members(&app, &g, &ann.access_token).await;
        let bob_row = list.members.iter().find(|x| x.username == "bob").unwrap();
        assert_eq!((bob_row.read_upto, bob_row.delivered_upto), (m2.id, m2.id));
    })
    .await;
}
