//! Attachment rules, sans-IO: which media types are taken and whether the bytes are what the
//! upload says ([`Sniffer`]), file names, HTTP byte ranges, `Content-Disposition`; plus the
//! configuration and the sweeper of uploads no message took.

use crate::blobs::ByteRange;
use std::path::PathBuf;
use std::time::Duration;

/// The default largest upload: 25 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 25 * 1024 * 1024;
/// Uploads no message has taken, per user, beyond which new uploads are refused.
pub const MAX_UNSENT_PER_USER: i64 = 50;
/// The longest file name kept, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// Where attachment bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentStore {
    /// Files under this directory (uploads are staged in `<dir>/.staging`).
    Local(PathBuf),
    /// An S3 bucket; uploads are staged in `staging` on this machine first.
    S3 {
        config: crate::blobs_s3::S3Config,
        staging: PathBuf,
    },
}

/// Attachments: where they go and how large they may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentConfig {
    pub store: AttachmentStore,
    /// The largest upload, in bytes.
    pub max_bytes: u64,
    /// Uploads no message took are deleted after this long.
    pub unsent_ttl: Duration,
    /// How often such uploads (and staged files of cut-off uploads) are looked for.
    pub sweep_every: Duration,
}

impl Default for AttachmentConfig {
    /// Local files in the system's temporary directory (embedders and tests; `convoy dev` and
    /// `convoy control-plane` name a directory).
    fn default() -> Self {
        Self {
            store: AttachmentStore::Local(std::env::temp_dir().join("convoy-attachments")),
            max_bytes: DEFAULT_MAX_BYTES,
            unsent_ttl: Duration::from_secs(24 * 3600),
            sweep_every: Duration::from_secs(600),
        }
    }
}

/// How the first bytes of each allowed media type look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signature {
    Jpeg,
    Png,
    Gif,
    Webp,
    /// ISO base media (MP4, M4A, MOV, HEIC): a box type at offset 4.
    IsoBmff,
    Ogg,
    Mpeg,
    Aac,
    Webm,
    Wav,
    Pdf,
    /// UTF-8 text, checked all the way through.
    Utf8,
}

/// The media types an upload may declare, and the bytes each must start with.
const ALLOWED: &[(&str, Signature)] = &[
    ("image/jpeg", Signature::Jpeg),
    ("image/png", Signature::Png),
    ("image/gif", Signature::Gif),
    ("image/webp", Signature::Webp),
    ("image/heic", Signature::IsoBmff),
    ("image/heif", Signature::IsoBmff),
    ("audio/ogg", Signature::Ogg),
    ("audio/opus", Signature::Ogg),
    ("audio/mpeg", Signature::Mpeg),
    ("audio/mp4", Signature::IsoBmff),
    ("audio/aac", Signature::Aac),
    ("audio/webm", Signature::Webm),
    ("audio/wav", Signature::Wav),
    ("video/mp4", Signature::IsoBmff),
    ("video/quicktime", Signature::IsoBmff),
    ("video/webm", Signature::Webm),
    ("application/pdf", Signature::Pdf),
    ("text/plain", Signature::Utf8),
];

/// The allowed media types, for error messages and documentation.
pub fn allowed_types() -> impl Iterator<Item = &'static str> {
    ALLOWED.iter().map(|(t, _)| *t)
}

/// The media type of a `Content-Type` header (`type/subtype`, lowercase, parameters dropped),
/// if it is one attachments may have.
pub fn media_type(header: &str) -> Option<&'static str> {
    let essence = header.split(';').next()?.trim().to_ascii_lowercase();
    ALLOWED.iter().find(|(t, _)| *t == essence).map(|(t, _)| *t)
}

/// Checks, as the bytes stream in, that an upload is what its media type says.
#[derive(Debug)]
pub struct Sniffer {
    signature: Signature,
    head: Vec<u8>,
    /// For text: the bytes of a character split across chunks.
    carry: Vec<u8>,
    bad: bool,
}

/// How many leading bytes the signatures look at.
const HEAD: usize = 12;

impl Sniffer {
    /// For a media type [`media_type`] returned.
    pub fn new(media_type: &str) -> Self {
        let signature = ALLOWED
            .iter()
            .find(|(t, _)| *t == media_type)
            .map_or(Signature::Utf8, |(_, s)| *s);
        Self {
            signature,
            head: Vec::with_capacity(HEAD),
            carry: Vec::new(),
            bad: false,
        }
    }

    /// The next bytes of the upload.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.head.len() < HEAD {
            let take = (HEAD - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        if self.signature == Signature::Utf8 && !self.bad {
            self.feed_text(chunk);
        }
    }

    fn feed_text(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        // Complete a character left over from the last chunk, one byte at a time.
        while !self.carry.is_empty() && !rest.is_empty() {
            self.carry.push(rest[0]);
            rest = &rest[1..];
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_some() => {
                    self.bad = true;
                    return;
                }
                Err(_) => {}
            }
        }
        if !self.carry.is_empty() {
            return;
        }
        match std::str::from_utf8(rest) {
            Ok(text) => self.bad = text.contains('\0'),
            Err(e) if e.error_len().is_some() => self.bad = true,
            Err(e) => {
                let (valid, tail) = rest.split_at(e.valid_up_to());
                self.bad = valid.contains(&0);
                self.carry = tail.to_vec();
            }
        }
    }

    /// Whether the whole upload, now ended, matched its media type.
    pub fn matches(&self) -> bool {
        let h = self.head.as_slice();
        let at = |offset: usize, magic: &[u8]| h.get(offset..offset + magic.len()) == Some(magic);
        match self.signature {
            Signature::Jpeg => at(0, &[0xFF, 0xD8, 0xFF]),
            Signature::Png => at(0, b"\x89PNG\r\n\x1a\n"),
            Signature::Gif => at(0, b"GIF87a") || at(0, b"GIF89a"),
            Signature::Webp => at(0, b"RIFF") && at(8, b"WEBP"),
            Signature::IsoBmff => [b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"]
                .iter()
                .any(|b| at(4, *b)),
            Signature::Ogg => at(0, b"OggS"),
            Signature::Mpeg => {
                at(0, b"ID3") || (h.len() >= 2 && h[0] == 0xFF && h[1] & 0xE0 == 0xE0)
            }
            Signature::Aac => h.len() >= 2 && h[0] == 0xFF && h[1] & 0xF6 == 0xF0,
            Signature::Webm => at(0, &[0x1A, 0x45, 0xDF, 0xA3]),
            Signature::Wav => at(0, b"RIFF") && at(8, b"WAVE"),
            Signature::Pdf => at(0, b"%PDF-"),
            Signature::Utf8 => !self.bad && self.carry.is_empty(),
        }
    }
}

/// The name to keep for an upload's `name`: path separators become `_`, leading dots and
/// surrounding spaces go, `attachment` when nothing is left. `Err` for control characters or
/// more than [`MAX_NAME_CHARS`] characters.
pub fn file_name(given: Option<&str>) -> Result<String, &'static str> {
    let Some(given) = given else {
        return Ok("attachment".to_owned());
    };
    if given.chars().count() > MAX_NAME_CHARS {
        return Err("name must be at most 255 characters");
    }
    if given.chars().any(char::is_control) {
        return Err("name must not contain control characters");
    }
    let name: String = given
        .chars()
        .map(|c| if matches!(c, '/' | '\\') { '_' } else { c })
        .collect();
    let name = name
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end();
    Ok(if name.is_empty() {
        "attachment".to_owned()
    } else {
        name.to_owned()
    })
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No range, or one to ignore (malformed, several ranges, another unit): 200, everything.
    Full,
    /// 206 with these bytes.
    Partial(ByteRange),
    /// 416.
    Unsatisfiable,
}

/// RFC 9110 §14: a single `bytes=first-last`, `bytes=first-` or `bytes=-suffix`.
pub fn range(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(header) = header else {
        return RangeAnswer::Full;
    };
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.is_empty(), last.is_empty()) {
        (true, true) => RangeAnswer::Full,
        (true, false) => match number(last) {
            None => RangeAnswer::Full,
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if size == 0 => RangeAnswer::Unsatisfiable,
            Some(suffix) => RangeAnswer::Partial(ByteRange {
                start: size - suffix.min(size),
                end: size - 1,
            }),
        },
        (false, _) => {
            let Some(start) = number(first) else {
                return RangeAnswer::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match number(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(ByteRange {
                    start,
                    end: end.min(size - 1),
                })
            }
        }
    }
}

/// `Content-Disposition` for a download: pictures, sound and video show inline, the rest
/// downloads; the name as an ASCII fallback and as RFC 8187 UTF-8.
pub fn content_disposition(media_type: &str, name: &str) -> String {
    let kind = if ["image/", "audio/", "video/"]
        .iter()
        .any(|p| media_type.starts_with(p))
    {
        "inline"
    } else {
        "attachment"
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniff(media: &str, chunks: &[&[u8]]) -> bool {
        let mut s = Sniffer::new(media);
        for c in chunks {
            s.feed(c);
        }
        s.matches()
    }

    #[test]
    fn declared_types_are_checked_against_the_bytes() {
        assert_eq!(media_type("Image/PNG; charset=x"), Some("image/png"));
        assert_eq!(media_type("image/svg+xml"), None);
        assert_eq!(media_type("text/html"), None);
        assert!(sniff("image/png", &[b"\x89PN", b"G\r\n\x1a\n rest"]));
        assert!(!sniff("image/png", &[b"<html>"]));
        assert!(sniff("image/jpeg", &[&[0xFF, 0xD8, 0xFF, 0xE0]]));
        assert!(!sniff("image/jpeg", &[&[0xFF, 0xD8]]));
        assert!(sniff("image/webp", &[b"RIFF\x10\0\0\0WEBPVP8 "]));
        assert!(!sniff("image/webp", &[b"RIFF\x10\0\0\0WAVEfmt "]));
        assert!(sniff("audio/wav", &[b"RIFF\x10\0\0\0WAVEfmt "]));
        assert!(sniff("video/mp4", &[b"\0\0\0\x18ftypmp42"]));
        assert!(sniff("audio/ogg", &[b"OggS\0\x02"]));
        assert!(sniff("audio/mpeg", &[b"ID3\x04"]));
        assert!(sniff("audio/mpeg", &[&[0xFF, 0xFB, 0x90]]));
        assert!(sniff("application/pdf", &[b"%PDF-1.7"]));
        assert!(!sniff("application/pdf", &[b"%PS"]));
    }

    #[test]
    fn text_must_be_utf8_throughout_even_across_chunks() {
        let text = "héllo wörld ✓".as_bytes();
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            assert!(sniff("text/plain", &[a, b]), "split at {split}");
        }
        for split in 0..=3 {
            let (a, b) = "✓".as_bytes().split_at(split);
            assert!(sniff("text/plain", &[a, &[], b]));
        }
        assert!(!sniff("text/plain", &[b"ok", &[0xC3]]), "cut short");
        assert!(!sniff("text/plain", &[b"ok", &[0xFF], b"more"]));
        assert!(!sniff("text/plain", &[&[0xE2, 0x9C], &[0x41]]));
        assert!(!sniff("text/plain", &[b"nul\0byte"]));
    }

    #[test]
    fn names_are_tidied() {
        assert_eq!(file_name(None).unwrap(), "attachment");
        assert_eq!(
            file_name(Some("../../etc/passwd")).unwrap(),
            "_.._etc_passwd"
        );
        assert_eq!(file_name(Some(" .hidden ")).unwrap(), "hidden");
        assert_eq!(file_name(Some("...")).unwrap(), "attachment");
        assert_eq!(file_name(Some(". . x ")).unwrap(), "x");
        assert_eq!(file_name(Some("été.jpg")).unwrap(), "été.jpg");
        assert!(file_name(Some("a\nb")).is_err());
        assert!(file_name(Some(&"x".repeat(256))).is_err());
        assert!(file_name(Some(&"é".repeat(255))).is_ok());
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        let p = |start, end| Partial(ByteRange { start, end });
        assert_eq!(range(None, 10), Full);
        assert_eq!(range(Some("bytes=0-4"), 10), p(0, 4));
        assert_eq!(range(Some("bytes=5-"), 10), p(5, 9));
        assert_eq!(range(Some("bytes=5-100"), 10), p(5, 9));
        assert_eq!(range(Some("bytes=-3"), 10), p(7, 9));
        assert_eq!(range(Some("bytes=-30"), 10), p(0, 9));
        assert_eq!(range(Some("BYTES = 1-1"), 10), p(1, 1));
        assert_eq!(range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(range(Some("bytes=-1"), 0), Unsatisfiable);
        for ignored in [
            "bytes=4-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
            "garbage",
        ] {
            assert_eq!(range(Some(ignored), 10), Full, "{ignored}");
        }
    }

    #[test]
    fn disposition_is_safe_for_any_name() {
        assert_eq!(
            content_disposition("image/png", "a b.png"),
            "inline; filename=\"a b.png\"; filename*=UTF-8''a%20b.png"
        );
        assert_eq!(
            content_disposition("application/pdf", "\"é\".pdf"),
            "attachment; filename=\"___.pdf\"; filename*=UTF-8''%22%C3%A9%22.pdf"
        );
    }
}
