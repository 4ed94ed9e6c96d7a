//! Two media nodes behind one control plane, through the in-process registry and through Redis:
//! a drained node keeps its sessions and gets no new ones.
//!
//! The Redis half needs `CONVOY_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379`).

use control_plane::{ControlPlane, InProcessRegistry, NodeRegistry, RedisRegistry};
use media_plane::{Heartbeat, MediaNode, NodeConfig};
use protocol::NodeId;
use protocol::node::NodeState;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tests::api::User;

type Refresh = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

struct Cluster {
    base: String,
    registry: Arc<dyn NodeRegistry>,
    refresh: Refresh,
    nodes: Vec<MediaNode>,
}

/// `GET /v1/sessions/{session}/participants` as `token`.
async fn participants(
    base: &str,
    session: protocol::SessionId,
    token: &str,
) -> Vec<protocol::api::ParticipantView> {
    reqwest::Client::new()
        .get(format!("{base}/v1/sessions/{session}/participants"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn redis_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A control plane's config on a fresh SQLite file under the temp folder.
fn sqlite_config(tag: &str) -> control_plane::Config {
    let dir = std::env::temp_dir().join(format!("convoy-{tag}-{}", uuid::Uuid::now_v7()));
    control_plane::Config::new(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        format!("sqlite://{}?mode=rwc", dir.join("cp.db").display()),
    )
}

impl Cluster {
    /// A control plane on SQLite and two one-core media nodes `a` and `b`.
    /// With `redis` (url, prefix), session events travel on the Redis stream; else in process.
    async fn start(
        registry: Arc<dyn NodeRegistry>,
        refresh: Refresh,
        beat: impl Fn() -> Pin<Box<dyn Future<Output = Heartbeat> + Send>>,
        redis: Option<(String, String)>,
    ) -> Self {
        let config = sqlite_config("reg");
        let cp = ControlPlane::new(&config, registry.clone()).await.unwrap();
        let events: media_plane::EventSink = match &redis {
            Some((url, prefix)) => {
                cp.consume_redis_events(url, prefix).await.unwrap();
                media_plane::registry::redis_event_sink(url, prefix)
                    .await
                    .unwrap()
            }
            None => {
                let ingest = cp.session_events();
                Arc::new(move |e| ingest.submit(e))
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(control_plane::serve(listener, cp, std::future::pending()));
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let mut nodes = Vec::new();
        for name in ["a", "b"] {
            let config = NodeConfig {
                http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                udp_bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                udp_base_port: 0,
                cores: 1,
                ..NodeConfig::local(
                    NodeId::new(format!("{name}-{}", &tag[..8])).unwrap(),
                    format!("{base}/.well-known/jwks.json"),
                )
            };
            let hooks = media_plane::Hooks {
                heartbeat: Some(beat().await),
                events: Some(events.clone()),
            };
            nodes.push(MediaNode::start(config, hooks).await.unwrap());
        }
        let cluster = Cluster {
            base,
            registry,
            refresh,
            nodes,
        };
        for n in &cluster.nodes {
            let id = n.record().id;
            cluster
                .until(|r| r.get(&id).is_some(), "both nodes registered")
                .await;
        }
        cluster
    }

    /// Refreshes the registry until `cond` holds (10 s at most).
    async fn until(&self, cond: impl Fn(&dyn NodeRegistry) -> bool, what: &str) {
        let wait = async {
            loop {
                (self.refresh)().await;
                if cond(&*self.registry) {
                    return;
                }
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
    }
}

fn offer() -> String {
    let mut rtc = str0m::Rtc::builder().build(std::time::Instant::now());
    let mut api = rtc.sdp_api();
    api.add_media(
        str0m::media::MediaKind::Audio,
        str0m::media::Direction::SendRecv,
        None,
        None,
        None,
    );
    api.apply().unwrap().0.to_sdp_string()
}

async fn a_drained_node_keeps_its_sessions_and_gets_no_new_ones(cluster: Cluster) {
    let alice = User::register(&cluster.base, "alice").await.unwrap();
    let bob = User::register(&cluster.base, "bob").await.unwrap();
    let group = alice.create_group("Club ride").await.unwrap();
    bob.accept(&alice.invite(&group).await.unwrap())
        .await
        .unwrap();
    let (status, first) = alice.allocate(&group).await.unwrap();
    assert_eq!(status, 201);
    let hosting = first.session.node_id.clone();
    let (drained, other) = if cluster.nodes[0].record().id == hosting {
        (&cluster.nodes[0], &cluster.nodes[1])
    } else {
        (&cluster.nodes[1], &cluster.nodes[0])
    };
    assert_eq!(
        first.candidates[0].node_id, hosting,
        "the join token's node comes first"
    );

    // Joining over WHIP: the node's session event puts alice in the participants table.
    let res = reqwest::Client::new()
        .post(&first.candidates[0].whip_url)
        .header("content-type", "application/sdp")
        .bearer_auth(&first.join_token)
        .body(offer())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let listed = async {
        loop {
            let list = participants(&cluster.base, first.session.id, &bob.token).await;
            if list.len() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .expect("the participant reaches the control plane through the session events");

    drained.drain();
    let id = drained.record().id;
    cluster
        .until(
            |r| r.get(&id).is_some_and(|n| n.state == NodeState::Draining),
            "the control plane sees the node draining",
        )
        .await;

    let (status, again) = bob.allocate(&group).await.unwrap();
    assert_eq!(status, 200, "the active session is joined");
    assert_eq!(
        again.session, first.session,
        "and stays on its (draining) node"
    );
    for i in 0..6 {
        let g = alice.create_group(&format!("Ride {i}")).await.unwrap();
        let (status, alloc) = alice.allocate(&g).await.unwrap();
        assert_eq!(status, 201);
        assert_eq!(
            alloc.session.node_id,
            other.record().id,
            "new sessions avoid the draining node"
        );
        assert!(alloc.candidates.iter().all(|c| c.node_id != id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_registry_two_nodes_one_drained() {
    let registry = Arc::new(InProcessRegistry::new());
    let beat_to = registry.clone();
    let beat = move || -> Pin<Box<dyn Future<Output = Heartbeat> + Send>> {
        let r = beat_to.clone();
        Box::pin(async move {
            let beat: Heartbeat = Arc::new(move |rec| r.heartbeat(rec));
            beat
        })
    };
    let cluster = Cluster::start(registry, Box::new(|| Box::pin(async {})), beat, None).await;
    a_drained_node_keeps_its_sessions_and_gets_no_new_ones(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_registry_two_nodes_one_drained() {
    let Some(url) = tests::external("CONVOY_TEST_REDIS_URL", "Redis node registry") else {
        return;
    };
    // A key prefix of its own, so parallel runs never see each other's nodes.
    let prefix = format!("convoy-test-{}:", uuid::Uuid::new_v4().simple());
    let registry = RedisRegistry::connect(&url, &prefix).await.unwrap();
    let refresher = registry.clone();
    let (url2, prefix2) = (url.clone(), prefix.clone());
    let cluster = Cluster::start(
        registry,
        Box::new(move || {
            let r = refresher.clone();
            Box::pin(async move {
                r.refresh().await.expect("Redis answers");
            })
        }),
        move || {
            let (u, p) = (url2.clone(), prefix2.clone());
            Box::pin(async move {
                media_plane::registry::redis_heartbeat(&u, &p)
                    .await
                    .unwrap()
            })
        },
        Some((url.clone(), prefix.clone())),
    )
    .await;
    a_drained_node_keeps_its_sessions_and_gets_no_new_ones(cluster).await;
    // Node records expire on their own; the stream and the index do not.
    let mut conn = redis_connection(&url).await;
    let _: () = redis::cmd("DEL")
        .arg(protocol::events::redis_stream_key(&prefix))
        .arg(protocol::node::redis_index_key(&prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A control plane that read a session event and died before acknowledging it (here a consumer
/// that reads and walks away) does not lose it: another takes it over once it has sat idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_event_left_pending_by_a_dead_consumer_is_taken_over() {
    use protocol::events::{ParticipantChange, REDIS_EVENT_FIELD, SessionEvent, redis_stream_key};
    let Some(url) = tests::external("CONVOY_TEST_REDIS_URL", "Redis session events") else {
        return;
    };
    let prefix = format!("convoy-test-{}:", uuid::Uuid::new_v4().simple());
    let key = redis_stream_key(&prefix);
    let registry = Arc::new(InProcessRegistry::new());
    let config = sqlite_config("reclaim");
    let cp = ControlPlane::new(&config, registry.clone()).await.unwrap();
    // The control plane that takes over: a second one on the same database, consuming only.
    let taker = ControlPlane::new(&config, registry.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let node_id = NodeId::new(format!("n-{}", &prefix[12..20])).unwrap();
    registry.heartbeat(protocol::node::NodeRecord {
        id: node_id.clone(),
        region: "eu".into(),
        http_url: "http://127.0.0.1:9".into(),
        udp_ports: vec![9],
        version: "test".into(),
        cores: 1,
        stress: 0.1,
        state: NodeState::Serving,
    });

    let mut conn = redis_connection(&url).await;
    // The dead control plane's consumer reads the entry and never acknowledges it.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(control_plane::session_events::CONSUMER_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::spawn(control_plane::serve(listener, cp, std::future::pending()));
    let alice = User::register(&base, "alice").await.unwrap();
    let group = alice.create_group("Reclaim").await.unwrap();
    let (status, alloc) = alice.allocate(&group).await.unwrap();
    assert_eq!(status, 201);
    let participant = protocol::ParticipantId::from_uuid(uuid::Uuid::now_v7());
    let event = SessionEvent {
        node: node_id,
        session: alloc.session.id,
        participant,
        user: alice.id,
        at_ms: 1_700_000_000_000,
        change: ParticipantChange::Joined,
    };
    let _: String = redis::cmd("XADD")
        .arg(&key)
        .arg("*")
        .arg(REDIS_EVENT_FIELD)
        .arg(serde_json::to_string(&event).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(control_plane::session_events::CONSUMER_GROUP)
        .arg("dead")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        read.keys[0].ids.len(),
        1,
        "the dead consumer holds the entry"
    );

    // A live control plane starts consuming: nothing new arrives, the pending entry is taken
    // over once idle for the reclaim time, applied and acknowledged.
    taker
        .consume_redis_events_reclaiming(&url, &prefix, Duration::from_millis(300))
        .await
        .unwrap();
    let listed = async {
        loop {
            let list = participants(&base, alloc.session.id, &alice.token).await;
            if let Some(p) = list.first() {
                return p.id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let id = tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .expect("the pending event is taken over and applied");
    assert_eq!(id, participant);
    let pending = async {
        loop {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(&key)
                .arg(control_plane::session_events::CONSUMER_GROUP)
                .query_async(&mut conn)
                .await
                .unwrap();
            if let redis::Value::Array(v) = &summary
                && v.first() == Some(&redis::Value::Int(0))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("and acknowledged");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}
