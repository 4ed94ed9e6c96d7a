//! ICE servers for 1:1 calls: STUN URLs as configured, and TURN URLs with time-limited
//! credentials in the TURN REST scheme (draft-uberti-behave-turn-rest, as coturn's
//! `use-auth-secret` checks them): the username is `<expiry unix seconds>:<user id>` and the
//! password base64(HMAC-SHA1(shared secret, username)). The TURN server needs only the shared
//! secret; nothing is stored.

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use protocol::ids::UserId;
use protocol::realtime::IceServer;
use sha1::Sha1;

/// Default lifetime of TURN credentials: a day, so a long call's allocation refreshes keep
/// working.
pub const DEFAULT_TURN_TTL_SECS: u64 = 24 * 3600;

/// Where peers find STUN and TURN. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct IceConfig {
    /// `stun:host:port` URLs.
    pub stun_urls: Vec<String>,
    /// `turn:` / `turns:` URLs; used only with a secret.
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`).
    pub turn_secret: Option<String>,
    pub turn_ttl_secs: u64,
}

impl Default for IceConfig {
    fn default() -> Self {
        Self {
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_secs: DEFAULT_TURN_TTL_SECS,
        }
    }
}

impl std::fmt::Debug for IceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceConfig")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("turn_secret", &self.turn_secret.as_ref().map(|_| "***"))
            .field("turn_ttl_secs", &self.turn_ttl_secs)
            .finish()
    }
}

impl IceConfig {
    /// The ICE servers for `user` at `now_secs`, and when their credentials expire.
    pub(crate) fn servers_for(&self, user: UserId, now_secs: u64) -> (Vec<IceServer>, u64) {
        let expires = now_secs.saturating_add(self.turn_ttl_secs);
        let mut servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(secret) = &self.turn_secret
            && !self.turn_urls.is_empty()
        {
            let username = format!("{expires}:{user}");
            servers.push(IceServer {
                urls: self.turn_urls.clone(),
                credential: Some(turn_password(secret, &username)),
                username: Some(username),
            });
        }
        (servers, expires)
    }
}

/// base64(HMAC-SHA1(secret, username)).
fn turn_password(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_credentials_follow_the_rest_scheme() {
        let user = UserId::from_uuid(
            uuid::Uuid::parse_str("018f0000-0000-7000-8000-000000000001").unwrap(),
        );
        let config = IceConfig {
            stun_urls: vec!["stun:stun.example.org:3478".into()],
            turn_urls: vec!["turn:turn.example.org:3478?transport=udp".into()],
            turn_secret: Some("north-sea".into()),
            turn_ttl_secs: 86_400,
        };
        let (servers, expires) = config.servers_for(user, 1_700_000_000);
        assert_eq!(expires, 1_700_086_400);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].username, None);
        let turn = &servers[1];
        assert_eq!(
            turn.username.as_deref(),
            Some("1700086400:018f0000-0000-7000-8000-000000000001")
        );
        // Python: base64.b64encode(hmac.new(b"north-sea", username, hashlib.sha1).digest())
        assert_eq!(
            turn.credential.as_deref(),
            Some("h/U5VtwnsWiwRdpo0IbKVGYNFsA=")
        );
        assert!(!format!("{config:?}").contains("north-sea"));

        // Without a secret, TURN URLs are useless and left out.
        let stun_only = IceConfig {
            turn_secret: None,
            ..config
        };
        assert_eq!(stun_only.servers_for(user, 0).0.len(), 1);
        assert!(IceConfig::default().servers_for(user, 0).0.is_empty());
    }
}
