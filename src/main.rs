//! `convoy`: parses the command line and calls into the libraries.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "convoy", version, about = "Groups that move and talk together")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// The whole stack in one process on embedded defaults (SQLite, in-process registry).
    Dev {
        /// Folder for the SQLite database and the signing key.
        #[arg(long, env = "CONVOY_DATA_DIR", default_value = ".convoy")]
        data_dir: PathBuf,
        /// Control plane HTTP port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Media node HTTP port (WHIP).
        #[arg(long, default_value_t = 8090)]
        media_port: u16,
        /// Location engine port (WebSocket stream and HTTP batch ingest).
        #[arg(long, default_value_t = 8070)]
        location_port: u16,
        /// First UDP port of the media node; core i uses base + i.
        #[arg(long, default_value_t = 40_000)]
        udp_base_port: u16,
        /// Address clients reach the media node at, put in ICE candidates.
        #[arg(long, env = "CONVOY_ADVERTISE_IP", default_value = "127.0.0.1")]
        advertise_ip: IpAddr,
        /// Media cores (default: all).
        #[arg(long)]
        cores: Option<usize>,
        /// Run each media core at this real-time (SCHED_FIFO) priority, 1–99: nothing of normal
        /// priority preempts it. Needs CAP_SYS_NICE or root; refused, the core warns and runs
        /// at normal priority.
        #[arg(long, env = "CONVOY_MEDIA_REALTIME_PRIORITY", value_parser = clap::value_parser!(u8).range(1..=99))]
        realtime_priority: Option<u8>,
        /// On SIGTERM/Ctrl-C, wait at most this long for calls to end (a second signal exits).
        #[arg(long, default_value_t = 300)]
        drain_timeout_secs: u64,
    },
    /// The control plane alone.
    ControlPlane {
        #[arg(long, env = "CONVOY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "sqlite://.convoy/convoy.db?mode=rwc"
        )]
        database_url: String,
        #[arg(
            long,
            env = "CONVOY_SIGNING_KEY_FILE",
            default_value = ".convoy/signing.key"
        )]
        signing_key_file: PathBuf,
        /// The AES-256-GCM key sealing sensitive columns (TOTP secrets): a 32-byte file,
        /// created when missing.
        #[arg(
            long,
            env = "CONVOY_DATA_KEY_FILE",
            default_value = ".convoy/data.key",
            conflicts_with = "data_key"
        )]
        data_key_file: PathBuf,
        /// The data key itself, 32 bytes in base64 (instead of the file).
        #[arg(long, env = "CONVOY_DATA_KEY", hide_env_values = true)]
        data_key: Option<String>,
        /// Redis for the node registry (media nodes in other processes), the shared attempt
        /// budgets and event fan-out across control planes; in-process without it.
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// Region whose media nodes new sessions prefer.
        #[arg(long, env = "CONVOY_REGION")]
        region: Option<String>,
        /// The location engine's stream URL handed out with location tokens
        /// (e.g. wss://location.example.org/v1/stream).
        #[arg(long, env = "CONVOY_LOCATION_URL")]
        location_url: Option<String>,
        /// Reverse proxies whose X-Forwarded-For names the client (comma-separated addresses).
        #[arg(long, env = "CONVOY_TRUSTED_PROXIES", value_delimiter = ',')]
        trusted_proxies: Vec<std::net::IpAddr>,
        /// Accept http:// Web Push endpoints (a push service on a private network); https only
        /// otherwise.
        #[arg(long, env = "CONVOY_PUSH_ALLOW_HTTP")]
        push_allow_http: bool,
        /// STUN server URLs handed to 1:1 calls (comma-separated, e.g. stun:stun.example.org).
        #[arg(long, env = "CONVOY_STUN_URLS", value_delimiter = ',')]
        stun_url: Vec<String>,
        /// TURN server URLs handed to 1:1 calls with time-limited credentials (needs the secret).
        #[arg(long, env = "CONVOY_TURN_URLS", value_delimiter = ',')]
        turn_url: Vec<String>,
        /// The secret shared with the TURN server (coturn static-auth-secret).
        #[arg(long, env = "CONVOY_TURN_SECRET", hide_env_values = true)]
        turn_secret: Option<String>,
        /// Lifetime of TURN credentials, seconds.
        #[arg(long, env = "CONVOY_TURN_TTL_SECS", default_value_t = control_plane::DEFAULT_TURN_TTL_SECS)]
        turn_ttl_secs: u64,
        /// The contact push services see with every Web Push (VAPID sub: mailto: or https:).
        #[arg(
            long,
            env = "CONVOY_PUSH_SUBJECT",
            default_value = "mailto:ops@convoy.invalid"
        )]
        push_subject: String,
        /// Attachment bytes go under this directory (or, with --s3-bucket, are staged here on
        /// their way to the bucket).
        #[arg(
            long,
            env = "CONVOY_ATTACHMENTS_DIR",
            default_value = ".convoy/attachments"
        )]
        attachments_dir: PathBuf,
        /// The largest attachment, bytes.
        #[arg(long, env = "CONVOY_ATTACHMENT_MAX_BYTES", default_value_t = control_plane::attachments::DEFAULT_MAX_BYTES)]
        attachment_max_bytes: u64,
        /// Keep attachments in this S3 bucket instead of the directory.
        #[arg(long, env = "CONVOY_S3_BUCKET", requires = "s3_endpoint")]
        s3_bucket: Option<String>,
        /// The S3 endpoint: https://s3.<region>.amazonaws.com, or a MinIO/Ceph/R2 URL.
        #[arg(long, env = "CONVOY_S3_ENDPOINT")]
        s3_endpoint: Option<String>,
        #[arg(long, env = "CONVOY_S3_REGION", default_value = "us-east-1")]
        s3_region: String,
        #[arg(long, env = "AWS_ACCESS_KEY_ID", default_value = "")]
        s3_access_key: String,
        #[arg(
            long,
            env = "AWS_SECRET_ACCESS_KEY",
            default_value = "",
            hide_env_values = true
        )]
        s3_secret_key: String,
    },
    /// A media node alone.
    MediaPlane {
        #[arg(long, env = "CONVOY_NODE_ID", default_value = "media-1")]
        node_id: String,
        #[arg(long, env = "CONVOY_REGION", default_value = "local")]
        region: String,
        #[arg(long, env = "CONVOY_MEDIA_LISTEN", default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        #[arg(long, env = "CONVOY_UDP_BASE_PORT", default_value_t = 40_000)]
        udp_base_port: u16,
        #[arg(long, env = "CONVOY_ADVERTISE_IP", default_value = "127.0.0.1")]
        advertise_ip: IpAddr,
        #[arg(long)]
        cores: Option<usize>,
        /// Run each media core at this real-time (SCHED_FIFO) priority, 1–99: nothing of normal
        /// priority preempts it. Needs CAP_SYS_NICE or root; refused, the core warns and runs
        /// at normal priority.
        #[arg(long, env = "CONVOY_MEDIA_REALTIME_PRIORITY", value_parser = clap::value_parser!(u8).range(1..=99))]
        realtime_priority: Option<u8>,
        /// On SIGTERM/Ctrl-C, wait at most this long for calls to end (a second signal exits).
        #[arg(long, env = "CONVOY_DRAIN_TIMEOUT_SECS", default_value_t = 300)]
        drain_timeout_secs: u64,
        /// Redis to heartbeat into (the control plane's node registry).
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// The control plane's JWKS, for join tokens.
        #[arg(
            long,
            env = "CONVOY_JWKS_URL",
            default_value = "http://127.0.0.1:8080/.well-known/jwks.json"
        )]
        jwks_url: String,
    },
    /// A location engine alone.
    LocationEngine {
        #[arg(long, env = "CONVOY_LOCATION_LISTEN", default_value = "127.0.0.1:8070")]
        listen: SocketAddr,
        /// The control plane's JWKS, for location tokens.
        #[arg(
            long,
            env = "CONVOY_JWKS_URL",
            default_value = "http://127.0.0.1:8080/.well-known/jwks.json"
        )]
        jwks_url: String,
        /// Redis to put alerts on for the control planes (and to hear of changed places);
        /// without it alerts reach only the members' open streams.
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// The control plane's base URL, where groups' places are fetched; without it the
        /// engine knows no places.
        #[arg(
            long,
            env = "CONVOY_CONTROL_PLANE_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        control_plane_url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,str0m=warn,sqlx=warn".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Dev {
            data_dir,
            port,
            media_port,
            location_port,
            udp_base_port,
            advertise_ip,
            cores,
            realtime_priority,
            drain_timeout_secs,
        } => {
            let mut config = convoy::dev::DevConfig::new(data_dir);
            config.realtime_priority = realtime_priority;
            config.control_plane_listen.set_port(port);
            config.media_http_listen.set_port(media_port);
            config.location_listen.set_port(location_port);
            config.udp_base_port = udp_base_port;
            config.advertise_ip = advertise_ip;
            if let Some(c) = cores {
                config.cores = c;
            }
            let stack = convoy::dev::DevStack::start(config).await?;
            println!("Convoy dev stack is up.");
            println!("  control plane  {}", stack.control_plane_url);
            println!(
                "  JWKS           {}/.well-known/jwks.json",
                stack.control_plane_url
            );
            println!("  media node     {} ({})", stack.media_url, stack.node_id);
            println!(
                "  WHIP           {}/v1/whip/{{session_id}}",
                stack.media_url
            );
            println!("  media UDP      {:?} on {}", stack.udp_ports, advertise_ip);
            println!(
                "  location       {} (stream ws://{}/v1/stream)",
                stack.location_url,
                stack.location_url.trim_start_matches("http://")
            );
            println!("Press Ctrl-C to stop (a second Ctrl-C skips draining).");
            stop_signal().await;
            if let Some(node) = stack.media() {
                drain(node, Duration::from_secs(drain_timeout_secs)).await;
            }
            stack.shutdown().await
        }
        Command::ControlPlane {
            listen,
            database_url,
            signing_key_file,
            data_key_file,
            data_key,
            redis_url,
            region,
            location_url,
            trusted_proxies,
            push_allow_http,
            stun_url,
            turn_url,
            turn_secret,
            turn_ttl_secs,
            push_subject,
            attachments_dir,
            attachment_max_bytes,
            s3_bucket,
            s3_endpoint,
            s3_region,
            s3_access_key,
            s3_secret_key,
        } => {
            let attachment_store = match (s3_bucket, s3_endpoint) {
                (Some(bucket), Some(endpoint)) => control_plane::AttachmentStore::S3 {
                    config: control_plane::S3Config {
                        endpoint,
                        bucket,
                        region: s3_region,
                        access_key: s3_access_key,
                        secret_key: s3_secret_key,
                    },
                    staging: attachments_dir,
                },
                _ => control_plane::AttachmentStore::Local(attachments_dir),
            };
            let registry: std::sync::Arc<dyn control_plane::NodeRegistry> = match &redis_url {
                Some(url) => {
                    control_plane::RedisRegistry::connect(url, protocol::node::REDIS_PREFIX)
                        .await
                        .context("connecting to Redis")?
                }
                None => std::sync::Arc::new(control_plane::InProcessRegistry::new()),
            };
            let config = control_plane::Config {
                signing_key_file: Some(signing_key_file),
                region_hint: region,
                location_url,
                redis_url: redis_url.clone(),
                data_key: match data_key {
                    Some(key) => control_plane::DataKeySource::Base64(key),
                    None => control_plane::DataKeySource::File(data_key_file),
                },
                trusted_proxies,
                push_allow_http,
                ice: control_plane::IceConfig {
                    stun_urls: stun_url,
                    turn_urls: turn_url,
                    turn_secret,
                    turn_ttl_secs,
                },
                push: control_plane::PushConfig {
                    subject: push_subject,
                    ..control_plane::PushConfig::default()
                },
                attachments: control_plane::AttachmentConfig {
                    store: attachment_store,
                    max_bytes: attachment_max_bytes,
                    ..control_plane::AttachmentConfig::default()
                },
                ..control_plane::Config::new(listen, database_url)
            };
            let cp = control_plane::ControlPlane::new(&config, registry).await?;
            if let Some(url) = &redis_url {
                cp.consume_redis_events(url, protocol::node::REDIS_PREFIX)
                    .await
                    .context("consuming session events from Redis")?;
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            control_plane::serve(listener, cp, stop_signal()).await
        }
        Command::MediaPlane {
            node_id,
            region,
            listen,
            udp_base_port,
            advertise_ip,
            cores,
            realtime_priority,
            drain_timeout_secs,
            redis_url,
            jwks_url,
        } => {
            let mut config =
                media_plane::NodeConfig::local(protocol::NodeId::new(node_id)?, jwks_url);
            config.realtime_priority = realtime_priority;
            config.region = region;
            config.http_listen = listen;
            config.udp_base_port = udp_base_port;
            config.advertise_ip = advertise_ip;
            if let Some(c) = cores {
                config.cores = c;
            }
            let mut hooks = media_plane::Hooks::default();
            match redis_url {
                Some(url) => {
                    let prefix = protocol::node::REDIS_PREFIX;
                    hooks.heartbeat = Some(
                        media_plane::registry::redis_heartbeat(&url, prefix)
                            .await
                            .context("connecting to Redis")?,
                    );
                    hooks.events = Some(
                        media_plane::registry::redis_event_sink(&url, prefix)
                            .await
                            .context("connecting to Redis")?,
                    );
                }
                None => println!("no --redis-url: this node registers with no control plane"),
            }
            let node = media_plane::MediaNode::start(config, hooks).await?;
            println!(
                "media node {} listening on {}",
                node.record().id,
                node.http_addr()
            );
            stop_signal().await;
            drain(&node, Duration::from_secs(drain_timeout_secs)).await;
            node.shutdown().await;
            Ok(())
        }
        Command::LocationEngine {
            listen,
            jwks_url,
            redis_url,
            control_plane_url,
        } => {
            use location_engine::server::{
                LocationServer, ServerConfig, redis_alert_sink, redis_history_sink,
                redis_places_listener,
            };
            let prefix = protocol::node::REDIS_PREFIX;
            let (alerts, history) = match &redis_url {
                Some(url) => (
                    Some(
                        redis_alert_sink(url, prefix, 100_000)
                            .await
                            .context("connecting to Redis")?,
                    ),
                    Some(
                        redis_history_sink(url, prefix, 100_000)
                            .await
                            .context("connecting to Redis")?,
                    ),
                ),
                None => (None, None),
            };
            let server = LocationServer::start(ServerConfig {
                listen,
                jwks_url,
                alerts,
                history,
                control_plane_url: Some(control_plane_url),
            })
            .await
            .with_context(|| format!("binding {listen}"))?;
            if let Some(url) = &redis_url {
                redis_places_listener(url, prefix, server.places_hook())
                    .await
                    .context("subscribing to places notices on Redis")?;
            }
            tracing::info!(addr = %server.addr(), "location engine up");
            stop_signal().await;
            server.shutdown().await;
            Ok(())
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Drains a media node: no new sessions, calls in progress go on; returns when the node is empty,
/// at the deadline, or at a second signal.
async fn drain(node: &media_plane::MediaNode, deadline: Duration) {
    node.drain();
    println!(
        "draining: {} participant(s) left, waiting up to {}s (signal again to stop now)",
        node.participant_count(),
        deadline.as_secs()
    );
    tokio::select! {
        _ = node.empty() => println!("drained: no participant left"),
        _ = tokio::time::sleep(deadline) => println!("drain deadline reached"),
        _ = stop_signal() => println!("second signal: stopping now"),
    }
}
