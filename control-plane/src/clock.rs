//! The wall clock, read in one place: handlers take `now` from here and pass it down, so the
//! store and the token code never read the time themselves.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A moment as Unix milliseconds (how the store keeps time) and seconds (how tokens do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Now {
    pub ms: i64,
}

impl Now {
    pub(crate) fn read() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Self {
            ms: i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX),
        }
    }

    /// Unix seconds, for token claims.
    pub(crate) fn secs(self) -> u64 {
        u64::try_from(self.ms / 1000).unwrap_or(0)
    }

    /// This moment plus `secs` seconds, in Unix milliseconds.
    pub(crate) fn plus_secs_ms(self, secs: u64) -> i64 {
        let add = i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000);
        self.ms.saturating_add(add)
    }
}

/// Unix milliseconds as RFC 3339 (UTC), as the API shows times.
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            rfc3339(i64::MAX),
            "1970-01-01T00:00:00Z",
            "out of range, no panic"
        );
    }

    #[test]
    fn seconds_and_offsets() {
        let now = Now {
            ms: 1_700_000_000_999,
        };
        assert_eq!(now.secs(), 1_700_000_000);
        assert_eq!(now.plus_secs_ms(7 * 24 * 3600), 1_700_604_800_999);
        assert_eq!(Now { ms: i64::MAX }.plus_secs_ms(u64::MAX), i64::MAX);
    }
}
