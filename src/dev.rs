//! The whole stack in one process on embedded defaults (DESIGN.md §2, `dev` mode): the control
//! plane, a media node and a location engine, wired through in-process registry and channels.

use anyhow::Context as _;
use control_plane::{ControlPlane, InProcessRegistry, NodeRegistry};
use location_engine::server::{LocationServer, ServerConfig};
use media_plane::{Hooks, MediaNode, NodeConfig};
use protocol::NodeId;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How to run the dev stack.
#[derive(Debug, Clone)]
pub struct DevConfig {
    /// Folder for the SQLite database and the signing key.
    pub data_dir: PathBuf,
    /// Database URL; defaults to a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Control plane HTTP address (port 0 = any free port).
    pub control_plane_listen: SocketAddr,
    /// Media node HTTP address (port 0 = any free port).
    pub media_http_listen: SocketAddr,
    /// Location engine HTTP/WebSocket address (port 0 = any free port).
    pub location_listen: SocketAddr,
    /// First UDP port of the media node (0 = free ports).
    pub udp_base_port: u16,
    /// Address put in ICE candidates.
    pub advertise_ip: IpAddr,
    /// Media cores to run.
    pub cores: usize,
    /// `SCHED_FIFO` priority of the media cores (`None`: normal priority).
    pub realtime_priority: Option<u8>,
    /// Media node id.
    pub node_id: NodeId,
}

impl DevConfig {
    /// The defaults of `convoy dev`: ports 8080, 8090 and 40000+core on loopback, data in `.convoy/`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database_url: None,
            control_plane_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            media_http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8090)),
            location_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8070)),
            udp_base_port: 40_000,
            advertise_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            realtime_priority: None,
            node_id: NodeId::new("dev-1").unwrap_or_else(|_| unreachable!()),
        }
    }

    /// Every port chosen by the OS: for tests that run several stacks at once.
    pub fn ephemeral(data_dir: PathBuf) -> Self {
        Self {
            control_plane_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            media_http_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            location_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            udp_base_port: 0,
            ..Self::new(data_dir)
        }
    }
}

/// A running dev stack.
#[derive(Debug)]
pub struct DevStack {
    /// Base URL of the control plane.
    pub control_plane_url: String,
    /// Base URL of the media node's HTTP side.
    pub media_url: String,
    /// Base URL of the location engine (`ws://` + the same host for its stream).
    pub location_url: String,
    /// The media node's UDP ports, one per core.
    pub udp_ports: Vec<u16>,
    /// The control plane's signing key (tests mint tokens with it).
    pub signer: protocol::token::Signer,
    /// The media node's id.
    pub node_id: NodeId,
    registry: Arc<InProcessRegistry>,
    media: Option<MediaNode>,
    location: Option<LocationServer>,
    control_plane: JoinHandle<anyhow::Result<()>>,
    stop: watch::Sender<bool>,
}

impl DevStack {
    /// Starts the control plane, then the media node, and waits until the node is registered.
    pub async fn start(config: DevConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let database_url = config.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                config.data_dir.join("convoy.db").display()
            )
        });
        let registry = Arc::new(InProcessRegistry::new());
        // Both listeners first: each side names the other (the control plane hands out the
        // location engine's URL; the engine fetches the control plane's keys).
        let listener = tokio::net::TcpListener::bind(config.control_plane_listen)
            .await
            .with_context(|| format!("binding {}", config.control_plane_listen))?;
        let cp_addr = listener.local_addr()?;
        let location_listener = tokio::net::TcpListener::bind(config.location_listen)
            .await
            .with_context(|| format!("binding {}", config.location_listen))?;
        let location_addr = location_listener.local_addr()?;
        let cp_config = control_plane::Config {
            location_url: Some(format!("ws://{location_addr}/v1/stream")),
            signing_key_file: Some(config.data_dir.join("signing.key")),
            data_key: control_plane::DataKeySource::File(config.data_dir.join("data.key")),
            attachments: control_plane::AttachmentConfig {
                store: control_plane::AttachmentStore::Local(config.data_dir.join("attachments")),
                ..control_plane::AttachmentConfig::default()
            },
            ..control_plane::Config::new(config.control_plane_listen, database_url)
        };
        let cp = ControlPlane::new(&cp_config, registry.clone()).await?;
        let signer = cp.signer();
        let ingest = cp.session_events();
        let alerts = cp.location_alerts();
        let history = cp.location_history();
        let control_plane_url = format!("http://{cp_addr}");
        let location = LocationServer::serve(
            location_listener,
            ServerConfig {
                listen: location_addr,
                jwks_url: format!("{control_plane_url}/.well-known/jwks.json"),
                alerts: Some(Arc::new(move |batch| alerts.submit(batch))),
                history: Some(Arc::new(move |fixes| history.submit(fixes))),
                control_plane_url: Some(control_plane_url.clone()),
            },
        )?;
        // Changes to groups' places reach the engine at once (it fetches them over HTTP).
        cp.on_places_changed(location.places_hook());
        let (stop, mut stop_rx) = watch::channel(false);
        let control_plane = tokio::spawn(control_plane::serve(listener, cp, async move {
            let _ = stop_rx.changed().await;
        }));

        let node_config = NodeConfig {
            http_listen: config.media_http_listen,
            udp_base_port: config.udp_base_port,
            advertise_ip: config.advertise_ip,
            cores: config.cores,
            realtime_priority: config.realtime_priority,
            ..NodeConfig::local(
                config.node_id.clone(),
                format!("{control_plane_url}/.well-known/jwks.json"),
            )
        };
        let beat_registry = registry.clone();
        let hooks = Hooks {
            heartbeat: Some(Arc::new(move |rec| beat_registry.heartbeat(rec))),
            events: Some(Arc::new(move |event| ingest.submit(event))),
        };
        let media = MediaNode::start(node_config, hooks).await?;
        // Register at once rather than at the first tick, so the stack is usable on return.
        registry.heartbeat(media.record());
        Ok(Self {
            control_plane_url,
            media_url: format!("http://{}", media.http_addr()),
            udp_ports: media.udp_ports(),
            signer,
            node_id: config.node_id,
            registry,
            location_url: format!("http://{location_addr}"),
            media: Some(media),
            location: Some(location),
            control_plane,
            stop,
        })
    }

    /// The media node.
    pub fn media(&self) -> Option<&MediaNode> {
        self.media.as_ref()
    }

    /// The in-process node registry.
    pub fn registry(&self) -> &Arc<InProcessRegistry> {
        &self.registry
    }

    /// Stops the media node and the control plane.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(m) = self.media.take() {
            m.shutdown().await;
        }
        if let Some(l) = self.location.take() {
            l.shutdown().await;
        }
        let _ = self.stop.send(true);
        (&mut self.control_plane).await??;
        Ok(())
    }
}
