//! Input newtypes that validate on construction: once a handler holds a [`Username`], an
//! [`Email`], a [`Password`] or a [`GroupName`], it is valid. Messages are safe to show callers.

use std::fmt;

/// Why an input was refused; the message names the rule, never echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Invalid(pub &'static str);

/// 3 to 32 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Username(String);

impl Username {
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (3..=32).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Invalid(
                "username must be 3 to 32 characters of letters, digits, '_', '.' or '-'",
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plausible address, stored lowercased: one `@` with something on each side, at most 254
/// bytes, no whitespace or control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Email(String);

impl Email {
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        const RULE: &str = "email must be an address like name@example.org (at most 254 bytes)";
        if s.is_empty() || s.len() > 254 {
            return Err(Invalid(RULE));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Invalid(RULE));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(Invalid(RULE));
        };
        let domain_ok = !domain.is_empty()
            && !domain.contains('@')
            && !domain.starts_with('.')
            && !domain.ends_with('.');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(Invalid(RULE));
        }
        Ok(Self(s.to_lowercase()))
    }

    /// How an email typed at login is looked up: lowercased, as stored.
    pub(crate) fn normalize(s: &str) -> String {
        s.to_lowercase()
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// 8 to 128 characters (Unicode scalar values), kept exactly as typed: no trimming, no
/// truncation, no composition rules (OWASP ASVS 6.2). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Password(String);

/// The common-password list, `#` lines and blanks aside (see the file's header).
const COMMON_PASSWORDS: &str = include_str!("common_passwords.txt");

impl Password {
    /// 8 to 128 characters (not bytes; nothing is truncated), not a common password, not one
    /// character repeated and not a run of consecutive characters. No composition rules (NIST SP
    /// 800-63B §3.1.1.2).
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        if !(8..=128).contains(&s.chars().count()) {
            return Err(Invalid("password must be 8 to 128 characters"));
        }
        if is_common(s) {
            return Err(Invalid(
                "this password is among the most common ones; choose another (a few unrelated \
                 words make a good one)",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The password may not be the account's own name or email (or the email's local part).
    pub(crate) fn check_context(&self, username: &str, email: &str) -> Result<(), Invalid> {
        let p = self.0.to_lowercase();
        let local = email.split('@').next().unwrap_or("");
        if [username, email, local]
            .iter()
            .any(|w| !w.is_empty() && p == w.to_lowercase())
        {
            return Err(Invalid("the password may not be the username or the email"));
        }
        Ok(())
    }

    pub(crate) fn into_inner(self) -> String {
        self.0
    }
}

/// A listed password, one character repeated, or a run like `12345678`, `abcdefgh`, `87654321`.
fn is_common(s: &str) -> bool {
    let lower = s.to_lowercase();
    if COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|l| l == lower)
    {
        return true;
    }
    let chars: Vec<u32> = lower.chars().map(u32::from).collect();
    let steps: Vec<i64> = chars
        .windows(2)
        .map(|w| i64::from(w[1]) - i64::from(w[0]))
        .collect();
    steps.iter().all(|&d| d == 0) || steps.iter().all(|&d| d == 1) || steps.iter().all(|&d| d == -1)
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// 1 to 100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupName(String);

impl GroupName {
    pub(crate) fn parse(s: &str) -> Result<Self, Invalid> {
        let s = s.trim();
        if !(1..=100).contains(&s.chars().count()) {
            return Err(Invalid("group name must be 1 to 100 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(Invalid("group name must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// 0 (no proximity alerts) or a radius in the range the engine takes.
pub(crate) fn proximity_radius(m: u32) -> Result<u32, Invalid> {
    use protocol::api::{MAX_PROXIMITY_RADIUS_M, MIN_PROXIMITY_RADIUS_M};
    if m == 0 || (MIN_PROXIMITY_RADIUS_M..=MAX_PROXIMITY_RADIUS_M).contains(&m) {
        Ok(m)
    } else {
        Err(Invalid(
            "proximity_radius_m must be 0 (no proximity alerts) or 25 to 10000 metres",
        ))
    }
}

/// At most 500 characters; line breaks and tabs allowed, other control characters not.
pub(crate) fn group_description(s: &str) -> Result<String, Invalid> {
    if s.chars().count() > 500 {
        return Err(Invalid("description must be at most 500 characters"));
    }
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Invalid("description must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// An `https://` URL of at most 2,048 bytes with a host and no whitespace or control
/// characters, or the empty string (no picture: `None`).
pub(crate) fn avatar_url(s: &str) -> Result<Option<String>, Invalid> {
    image_url(
        s,
        "avatar_url must be an https:// URL of at most 2048 bytes, or empty",
    )
}

/// A user's picture: like [`avatar_url`].
pub(crate) fn picture_url(s: &str) -> Result<Option<String>, Invalid> {
    image_url(
        s,
        "picture_url must be an https:// URL of at most 2048 bytes, or empty",
    )
}

fn image_url(s: &str, rule: &'static str) -> Result<Option<String>, Invalid> {
    if s.is_empty() {
        return Ok(None);
    }
    let host = s.strip_prefix("https://").unwrap_or("");
    let ok = s.len() <= 2048
        && !host.is_empty()
        && !host.starts_with('/')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(Some(s.to_owned()))
    } else {
        Err(Invalid(rule))
    }
}

/// An APNs or FCM device token: 1 to 4,096 printable ASCII characters without spaces.
pub(crate) fn device_token(s: &str) -> Result<String, Invalid> {
    let ok = (1..=4096).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Invalid(
            "token must be 1 to 4096 printable ASCII characters without spaces",
        ))
    }
}

/// A Web Push subscription, checked: the endpoint is an `https://` URL (or `http://` when the
/// server allows it, for a push service on a private network or in tests), `p256dh` a P-256
/// public key in uncompressed form and `auth` a 16-byte secret, both base64url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushSubscription {
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

impl PushSubscription {
    pub(crate) fn parse(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        allow_http: bool,
    ) -> Result<Self, Invalid> {
        let rest = endpoint
            .strip_prefix("https://")
            .or_else(|| endpoint.strip_prefix("http://").filter(|_| allow_http));
        let endpoint_ok = endpoint.len() <= 2048
            && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            && endpoint.bytes().all(|b| b.is_ascii_graphic());
        if !endpoint_ok {
            return Err(Invalid(
                "subscription.endpoint must be an https:// URL of at most 2048 bytes",
            ));
        }
        let key = b64url(p256dh);
        if !key.is_some_and(|k| k.len() == 65 && k[0] == 4) {
            return Err(Invalid(
                "subscription.keys.p256dh must be a P-256 public key, uncompressed (65 bytes), base64url",
            ));
        }
        if b64url(auth).is_none_or(|a| a.len() != 16) {
            return Err(Invalid(
                "subscription.keys.auth must be 16 bytes, base64url",
            ));
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            p256dh: p256dh.trim_end_matches('=').to_owned(),
            auth: auth.trim_end_matches('=').to_owned(),
        })
    }
}

/// Base64url, padded or not.
pub(crate) fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// A message text: 1 to 4,000 characters, not only whitespace; line breaks and tabs allowed,
/// other control characters not.
pub(crate) fn message_body(s: &str) -> Result<String, Invalid> {
    if s.trim().is_empty() || s.chars().count() > 4000 {
        return Err(Invalid(
            "body must be 1 to 4000 characters, not only whitespace",
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(Invalid("body must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// A client message id: 1 to 64 characters of `[A-Za-z0-9_-]` (a UUID fits).
pub(crate) fn client_msg_id(s: &str) -> Result<String, Invalid> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Invalid(
            "client_msg_id must be 1 to 64 characters of letters, digits, '-' or '_'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_fields() {
        assert!(message_body("hi\nthere").is_ok());
        for bad in ["", "  \n", "a\u{0}b", &"x".repeat(4001)] {
            assert!(message_body(bad).is_err(), "{bad:?}");
        }
        assert!(
            message_body(&"é".repeat(4000)).is_ok(),
            "characters, not bytes"
        );
        assert!(client_msg_id("0b9c2f4e-1f7a-4c55-9d1e-6a2f0c1d2e3f").is_ok());
        for bad in ["", "a b", "a/b", &"a".repeat(65)] {
            assert!(client_msg_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn group_fields() {
        assert_eq!(avatar_url("").unwrap(), None);
        assert!(
            avatar_url("https://img.example.org/a.png")
                .unwrap()
                .is_some()
        );
        for bad in [
            "http://x.org/a.png",
            "https://",
            "https:///x",
            "javascript:alert(1)",
            "https://a b",
        ] {
            assert!(avatar_url(bad).is_err(), "{bad:?}");
        }
        assert!(group_description("Road trip\n2026").is_ok());
        assert!(group_description("\u{7}").is_err());
        assert!(group_description(&"d".repeat(501)).is_err());
    }

    #[test]
    fn usernames() {
        for ok in ["abc", "a.b-c_d", "X9_", &"a".repeat(32)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", &"a".repeat(33), "a b", "ab@c", "émile", "ab\n"] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn emails_are_plausible_and_lowercased() {
        assert_eq!(
            Email::parse("Ann@Example.ORG").unwrap().as_str(),
            "ann@example.org"
        );
        assert!(Email::parse("a@localhost").is_ok());
        let long = format!("{}@{}", "a".repeat(64), "b".repeat(189));
        assert_eq!(long.len(), 254);
        assert!(Email::parse(&long).is_ok());
        let too_long = format!("{}@{}", "a".repeat(64), "b".repeat(190));
        for bad in [
            "",
            "plain",
            "@example.org",
            "a@",
            "a@b@c",
            "a b@c.d",
            "a@.c",
            "a@c.",
            "a\u{0}@c",
            too_long.as_str(),
            &format!("{}@c", "a".repeat(65)),
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Email::normalize("A@B.C"), "a@b.c");
    }

    #[test]
    fn common_repeated_and_sequential_passwords_and_the_accounts_own_names_are_refused() {
        for p in [
            "password",
            "Password1",
            "QWERTYUIOP",
            "iloveyou",
            "12345678",
            "87654321",
            "abcdefghij",
            "aaaaaaaaaaaa",
            "éééééééé",
        ] {
            assert!(Password::parse(p).is_err(), "{p}");
        }
        for p in [
            "correct horse battery",
            "12345679",
            "password-rally-2031",
            "aaaaaaab",
        ] {
            assert!(Password::parse(p).is_ok(), "{p}");
        }
        let p = Password::parse("AnnRides2031").unwrap();
        assert!(p.check_context("annrides2031", "x@example.org").is_err());
        assert!(p.check_context("ann", "AnnRides2031@example.org").is_err());
        assert!(p.check_context("ann", "ann@example.org").is_ok());
        // The list file parses: comments aside, every entry is lowercase and 8+ characters.
        let entries: Vec<&str> = COMMON_PASSWORDS
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        assert!(entries.len() > 200, "{}", entries.len());
        for e in entries {
            assert_eq!(e, e.to_lowercase());
            assert!(e.chars().count() >= 8, "{e}");
        }
    }

    #[test]
    fn passwords_count_characters_and_keep_them_as_typed() {
        assert!(Password::parse("1234567").is_err());
        assert_eq!(
            Password::parse(" 1234567").unwrap().into_inner(),
            " 1234567"
        );
        assert!(
            Password::parse(&"éü".repeat(64)).is_ok(),
            "128 chars of 2 bytes"
        );
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert!(
            Password::parse("ééééééé").is_err(),
            "7 chars even if 14 bytes"
        );
        assert_eq!(
            format!("{:?}", Password::parse("secret-secret").unwrap()),
            "Password(..)"
        );
    }

    #[test]
    fn push_subscriptions_need_an_https_endpoint_and_well_formed_keys() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut point = [7u8; 65];
        point[0] = 4;
        let (key, auth) = (b64(&point), b64(&[1; 16]));
        let ok = PushSubscription::parse("https://push.example/a", &key, &auth, false).unwrap();
        assert_eq!(ok.endpoint, "https://push.example/a");
        assert!(PushSubscription::parse("http://127.0.0.1:9/a", &key, &auth, false).is_err());
        assert!(PushSubscription::parse("http://127.0.0.1:9/a", &key, &auth, true).is_ok());
        assert!(PushSubscription::parse("https:///a", &key, &auth, false).is_err());
        assert!(PushSubscription::parse("https://p.example/a b", &key, &auth, false).is_err());
        assert!(
            PushSubscription::parse("https://p.example", &b64(&[4; 33]), &auth, false).is_err()
        );
        point[0] = 2;
        assert!(PushSubscription::parse("https://p.example", &b64(&point), &auth, false).is_err());
        assert!(PushSubscription::parse("https://p.example", &key, &b64(&[1; 15]), false).is_err());
        assert!(PushSubscription::parse("https://p.example", &key, "!!", false).is_err());
        assert!(device_token("abc123").is_ok());
        assert!(device_token("a b").is_err());
        assert!(device_token("").is_err());
        assert_eq!(picture_url("").unwrap(), None);
        assert!(picture_url("http://x.example/p.png").is_err());
    }

    #[test]
    fn group_names_are_trimmed() {
        assert_eq!(
            GroupName::parse("  Road trip ").unwrap().as_str(),
            "Road trip"
        );
        assert!(GroupName::parse("   ").is_err());
        assert!(GroupName::parse(&"g".repeat(100)).is_ok());
        assert!(GroupName::parse(&"g".repeat(101)).is_err());
        assert!(GroupName::parse("a\u{7}b").is_err());
    }
}
