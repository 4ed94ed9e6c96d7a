//! The object store on S3 or any server that speaks its API (MinIO, Ceph RGW, R2…):
//! path-style requests signed with AWS Signature Version 4.
//!
//! [`sign`] is sans-IO (the time is an argument) and checked against the example in the
//! S3 API reference; [`S3Store`] is the thin shell that sends requests with reqwest.

use crate::blobs::{ByteRange, ByteStream, ObjectStore, bad_key, valid_key};
use futures_util::TryStreamExt as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io;
use std::path::Path;
use time::OffsetDateTime;

/// Where the bucket is and the credentials to reach it. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000`…: scheme, host, port.
    pub endpoint: String,
    pub bucket: String,
    /// `us-east-1` for servers that do not care.
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of an empty payload, the `x-amz-content-sha256` of bodiless requests.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// One request to sign.
#[derive(Debug)]
pub(crate) struct Unsigned<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The path as sent: already percent-encoded where needed.
    pub path: &'a str,
    /// Query parameters, not yet encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign besides `host`, `x-amz-content-sha256` and `x-amz-date`
    /// (lowercase names).
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
}

/// The `Authorization` and `x-amz-date` values for `req` at `now` (SigV4, service `s3`).
pub(crate) fn sign(
    access_key: &str,
    secret_key: &str,
    region: &str,
    req: &Unsigned<'_>,
    now: OffsetDateTime,
) -> (String, String) {
    let now = now.to_offset(time::UtcOffset::UTC);
    let date = format!(
        "{:04}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let amz_date = format!(
        "{date}T{:02}{:02}{:02}Z",
        now.hour(),
        now.minute(),
        now.second()
    );

    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
        .chain([
            ("host".to_owned(), req.host.to_owned()),
            (
                "x-amz-content-sha256".to_owned(),
                req.payload_sha256.to_owned(),
            ),
            ("x-amz-date".to_owned(), amz_date.clone()),
        ])
        .collect();
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();

    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    let canonical_request = format!(
        "{}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method, req.path, req.payload_sha256
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    (
        format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, \
             SignedHeaders={signed_headers}, Signature={signature}"
        ),
        amz_date,
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// RFC 3986 percent-encoding of everything but the unreserved characters, as SigV4 wants.
fn uri_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A bucket reached over HTTP.
#[derive(Debug)]
pub(crate) struct S3Store {
    config: S3Config,
    /// `host[:port]` of the endpoint, as the `Host` header carries it.
    host: String,
    http: reqwest::Client,
}

impl S3Store {
    pub(crate) fn new(config: S3Config) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| format!("S3 endpoint {:?}: {e}", config.endpoint))?;
        if !matches!(url.scheme(), "http" | "https") || url.path() != "/" {
            return Err(format!(
                "S3 endpoint {:?}: expected scheme://host[:port] with no path",
                config.endpoint
            ));
        }
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(format!("S3 endpoint {:?}: no host", config.endpoint)),
        };
        if config.bucket.is_empty() || !config.bucket.bytes().all(bucket_byte) {
            return Err(format!("S3 bucket {:?}: not a bucket name", config.bucket));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { config, host, http })
    }

    /// A signed request for `/<bucket>/<key>` (or the bucket itself when `key` is empty).
    fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        payload_sha256: &str,
    ) -> reqwest::RequestBuilder {
        let path = if key.is_empty() {
            format!("/{}", self.config.bucket)
        } else {
            format!("/{}/{key}", self.config.bucket)
        };
        let (authorization, amz_date) = sign(
            &self.config.access_key,
            &self.config.secret_key,
            &self.config.region,
            &Unsigned {
                method: method.as_str(),
                host: &self.host,
                path: &path,
                query,
                headers,
                payload_sha256,
            },
            OffsetDateTime::now_utc(),
        );
        let mut url = format!("{}{path}", self.config.endpoint.trim_end_matches('/'));
        if !query.is_empty() {
            url.push('?');
            url.push_str(
                &query
                    .iter()
                    .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        }
        let mut builder = self
            .http
            .request(method, url)
            .header("authorization", authorization)
            .header("x-amz-date", amz_date)
            .header("x-amz-content-sha256", payload_sha256);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder
    }

    /// Keys under `prefix`, one page of a listing at a time.
    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(token) = &token {
                query.push(("continuation-token", token));
            }
            let response = self
                .request(reqwest::Method::GET, "", &query, &[], EMPTY_SHA256)
                .send()
                .await
                .map_err(io::Error::other)?;
            let body = checked(response)
                .await?
                .text()
                .await
                .map_err(io::Error::other)?;
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            let truncated = xml_values(&body, "IsTruncated")
                .first()
                .is_some_and(|v| v == "true");
            if !truncated || token.is_none() {
                return Ok(keys);
            }
        }
    }
}

/// A byte S3 allows in a bucket name.
fn bucket_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.')
}

/// The response if its status is a success, else its status and body as an error.
async fn checked(response: reqwest::Response) -> io::Result<reqwest::Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Err(io::Error::other(format!(
        "S3 answered {status}: {}",
        body.chars().take(300).collect::<String>()
    )))
}

/// The text of each `<tag>…</tag>` in `xml`, entities decoded (S3 listings are flat).
pub(crate) fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        out.push(
            rest[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &rest[end + close.len()..];
    }
    out
}

impl ObjectStore for S3Store {
    fn put<'a>(
        &'a self,
        key: &'a str,
        staged: &'a Path,
        len: u64,
        sha256_hex: &'a str,
    ) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            let result = async {
                if !valid_key(key) {
                    return Err(bad_key(key));
                }
                let file = tokio::fs::File::open(staged).await?;
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
                let length = len.to_string();
                let response = self
                    .request(
                        reqwest::Method::PUT,
                        key,
                        &[],
                        &[("content-length", &length)],
                        sha256_hex,
                    )
                    .body(body)
                    .send()
                    .await
                    .map_err(io::Error::other)?;
                checked(response).await.map(drop)
            }
            .await;
            let _ = tokio::fs::remove_file(staged).await;
            result
        })
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        range: Option<ByteRange>,
    ) -> BoxFuture<'a, io::Result<Option<ByteStream>>> {
        Box::pin(async move {
            if !valid_key(key) {
                return Err(bad_key(key));
            }
            let range_header = range.map(|r| format!("bytes={}-{}", r.start, r.end));
            let headers: Vec<(&str, &str)> = range_header
                .as_deref()
                .map(|r| ("range", r))
                .into_iter()
                .collect();
            let response = self
                .request(reqwest::Method::GET, key, &[], &headers, EMPTY_SHA256)
                .send()
                .await
                .map_err(io::Error::other)?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let response = checked(response).await?;
            if range.is_some() && response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                return Err(io::Error::other(format!(
                    "S3 answered a range request with {}",
                    response.status()
                )));
            }
            let stream: ByteStream = Box::pin(response.bytes_stream().map_err(io::Error::other));
            Ok(Some(stream))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            if !valid_key(key) {
                return Err(bad_key(key));
            }
            let response = self
                .request(reqwest::Method::DELETE, key, &[], &[], EMPTY_SHA256)
                .send()
                .await
                .map_err(io::Error::other)?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(());
            }
            checked(response).await.map(drop)
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, io::Result<()>> {
        Box::pin(async move {
            if !valid_key(prefix) {
                return Err(bad_key(prefix));
            }
            for key in self.list(prefix).await? {
                if key.starts_with(prefix) && valid_key(&key) {
                    self.delete(&key).await?;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of the S3 API reference, "Signature Calculations for the
    /// Authorization Header: Transferring Payload in a Single Chunk (AWS Signature Version 4)".
    #[test]
    fn signature_matches_the_s3_reference_example() {
        let now = OffsetDateTime::from_unix_timestamp(1_369_353_600).unwrap();
        let (authorization, amz_date) = sign(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            &Unsigned {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: &[],
                headers: &[("Range", "bytes=0-9")],
                payload_sha256: EMPTY_SHA256,
            },
            now,
        );
        assert_eq!(amz_date, "20130524T000000Z");
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn listing_keys_are_read_and_unescaped() {
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated>\
                   <Contents><Key>a/b</Key></Contents><Contents><Key>a/&amp;c</Key></Contents>\
                   <NextContinuationToken>t&lt;1</NextContinuationToken></ListBucketResult>";
        assert_eq!(xml_values(xml, "Key"), ["a/b", "a/&c"]);
        assert_eq!(xml_values(xml, "NextContinuationToken"), ["t<1"]);
        assert_eq!(xml_values(xml, "IsTruncated"), ["true"]);
        assert!(xml_values("<Key>unclosed", "Key").is_empty());
    }

    #[test]
    fn endpoints_and_buckets_are_checked() {
        let config = |endpoint: &str, bucket: &str| S3Config {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            region: "us-east-1".into(),
            access_key: "a".into(),
            secret_key: "s".into(),
        };
        assert_eq!(
            S3Store::new(config("http://127.0.0.1:9000", "convoy"))
                .unwrap()
                .host,
            "127.0.0.1:9000"
        );
        assert!(S3Store::new(config("ftp://x", "convoy")).is_err());
        assert!(S3Store::new(config("http://x/path", "convoy")).is_err());
        assert!(S3Store::new(config("http://x", "Bad/Bucket")).is_err());
        assert!(!format!("{:?}", config("http://x", "b")).contains("\"s\""));
    }
}
