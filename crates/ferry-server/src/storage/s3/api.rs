//! The few S3 requests `object_store` 0.14 does not make, signed with its
//! own SigV4 signer and sent through its own HTTP client:
//! - ListMultipartUploads and ListParts: what S3 really holds of pending
//!   uploads (the quota counts it; a resume is verified against it);
//! - CopyObject with `x-amz-metadata-directive: REPLACE`: the hash verified
//!   at commit is known only after CreateMultipartUpload fixed the
//!   object's metadata, so the completed object is copied onto itself with it;
//! - a bucket probe at start that tells a missing bucket from a bad key.
//!
//! Secrets never reach a message: errors carry the S3 error code, the
//! HTTP status and at most the access key id.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use object_store::ClientOptions;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

/// Everything but the unreserved characters of RFC 3986, as SigV4 wants.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
/// The same, keeping the key's `/` separators.
const STRICT_PATH: &AsciiSet = &STRICT.remove(b'/');

/// Pages of a listing followed at most: 10 million uploads or parts.
const MAX_PAGES: usize = 10_000;

/// A failed raw request: what S3 said, without any secret.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("S3 answered {status} ({code})")]
    Status { status: StatusCode, code: String },
    #[error("cannot reach S3: {0}")]
    Transport(String),
    #[error("unexpected S3 answer: {0}")]
    Parse(String),
}

impl RawError {
    /// The S3 error code (`NoSuchUpload`, `NoSuchBucket`, ...), if S3 gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RawError::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The bucket's base URL, without a trailing `/`.
    pub base: String,
    pub bucket: String,
    pub region: String,
}

impl Endpoint {
    pub fn new(endpoint: Option<&str>, bucket: &str, region: &str, path_style: bool) -> Endpoint {
        let endpoint = endpoint.map_or_else(|| format!("https://s3.{region}.amazonaws.com"), str::to_string);
        let endpoint = endpoint.trim_end_matches('/');
        let base = if path_style {
            format!("{endpoint}/{bucket}")
        } else {
            match endpoint.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{bucket}.{host}"),
                None => format!("{endpoint}/{bucket}"),
            }
        };
        Endpoint { base, bucket: bucket.to_string(), region: region.to_string() }
    }
}

/// One pending multipart upload.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
}

/// One part of a pending upload, as S3 holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPart {
    pub number: u32,
    pub etag: String,
    pub size: u64,
}

#[derive(Debug)]
pub struct RawS3 {
    client: HttpClient,
    endpoint: Endpoint,
    credential: AwsCredential,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadsPage {
    #[serde(default)]
    upload: Vec<UploadXml>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PartsPage {
    #[serde(default)]
    part: Vec<PartXml>,
    #[serde(default)]
    is_truncated: bool,
    next_part_number_marker: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PartXml {
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: String,
    size: u64,
}

/// The ETag in a part id from `object_store`: the id itself, or (when a
/// checksum was sent) the `<e_tag>` of the small XML document it then is.
pub fn part_etag(content_id: &str) -> String {
    let inner = content_id.split_once("<e_tag>").and_then(|(_, rest)| rest.split_once("</e_tag>")).map(|(e, _)| e);
    let etag = inner.unwrap_or(content_id).replace("&quot;", "\"");
    bare_etag(&etag).to_string()
}

/// ETags come quoted; compare them bare.
pub fn bare_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

impl RawS3 {
    pub fn new(endpoint: Endpoint, credential: AwsCredential, options: &ClientOptions) -> Result<RawS3, RawError> {
        let client = ReqwestConnector::default().connect(options).map_err(|e| RawError::Transport(e.to_string()))?;
        Ok(RawS3 { client, endpoint, credential })
    }

    fn url(&self, key: Option<&str>, query: &[(&str, &str)]) -> String {
        let mut url = self.endpoint.base.clone();
        if let Some(key) = key {
            url.push('/');
            url.extend(utf8_percent_encode(key, STRICT_PATH));
        } else {
            url.push('/');
        }
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.extend(utf8_percent_encode(k, STRICT));
            url.push('=');
            url.extend(utf8_percent_encode(v, STRICT));
        }
        url
    }

    /// Sends one signed request; retries a few times on 5xx and transport
    /// errors (a Garage node that just restarted answers 503 for a moment).
    async fn send(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, &str)],
        headers: &[(&'static str, String)],
    ) -> Result<Bytes, RawError> {
        let url = self.url(key, query);
        let mut last = RawError::Transport("no attempt".into());
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << (2 * attempt))).await;
            }
            let mut builder = http::Request::builder().method(method.clone()).uri(&url);
            for (name, value) in headers {
                builder = builder.header(*name, value);
            }
            let mut request: HttpRequest =
                builder.body(HttpRequestBody::empty()).map_err(|e| RawError::Parse(e.to_string()))?;
            AwsAuthorizer::new(&self.credential, "s3", &self.endpoint.region)
                .try_authorize(&mut request, None)
                .map_err(|e| RawError::Transport(e.to_string()))?;
            if !headers.iter().any(|(n, _)| *n == "content-length") {
                request.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            let response = match self.client.execute(request).await {
                Ok(r) => r,
                Err(e) => {
                    last = RawError::Transport(e.to_string());
                    continue;
                }
            };
            let status = response.status();
            let body = match response.into_body().bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last = RawError::Transport(e.to_string());
                    continue;
                }
            };
            // CopyObject may answer 200 with an error in the body.
            let error =
                if status.is_success() { error_code(&body) } else { Some(error_code(&body).unwrap_or_default()) };
            match error {
                None => return Ok(body),
                Some(code) => {
                    last = RawError::Status { status, code };
                    if !(status.is_server_error() || status == StatusCode::OK) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Checks that the bucket exists and the key may list it: names which
    /// is wrong when not.
    pub async fn probe(&self) -> Result<(), RawError> {
        self.send(Method::GET, None, &[("list-type", "2"), ("max-keys", "1")], &[]).await.map(drop)
    }

    /// Every pending multipart upload whose key starts with `prefix`.
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, RawError> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (String::new(), String::new());
        for _ in 0..MAX_PAGES {
            let mut query = vec![("uploads", ""), ("prefix", prefix)];
            if !key_marker.is_empty() {
                query.push(("key-marker", &key_marker));
                query.push(("upload-id-marker", &id_marker));
            }
            let body = self.send(Method::GET, None, &query, &[]).await?;
            let page: UploadsPage = parse(&body)?;
            out.extend(page.upload.into_iter().map(|u| PendingUpload { key: u.key, upload_id: u.upload_id }));
            match (page.is_truncated, page.next_key_marker, page.next_upload_id_marker) {
                (true, Some(k), Some(i)) if k != key_marker || i != id_marker => (key_marker, id_marker) = (k, i),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// The parts S3 holds of one pending upload, by part number.
    /// `Ok(None)` when the upload is gone (completed or aborted).
    pub async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<StoredPart>>, RawError> {
        let mut out = Vec::new();
        let mut marker = String::new();
        for _ in 0..MAX_PAGES {
            let mut query = vec![("uploadId", upload_id)];
            if !marker.is_empty() {
                query.push(("part-number-marker", &marker));
            }
            let body = match self.send(Method::GET, Some(key), &query, &[]).await {
                Ok(b) => b,
                Err(e) if e.code() == Some("NoSuchUpload") => return Ok(None),
                Err(e) => return Err(e),
            };
            let page: PartsPage = parse(&body)?;
            out.extend(page.part.into_iter().map(|p| StoredPart {
                number: p.part_number,
                etag: bare_etag(&p.etag).to_string(),
                size: p.size,
            }));
            match (page.is_truncated, page.next_part_number_marker) {
                (true, Some(m)) if m != marker => marker = m,
                _ => break,
            }
        }
        out.sort_by_key(|p| p.number);
        Ok(Some(out))
    }

    /// Copies `key` onto itself with `metadata` (`x-amz-meta-` names)
    /// replacing what it had, only if it is still the object `etag`.
    pub async fn replace_metadata(&self, key: &str, etag: &str, metadata: &[(&str, &str)]) -> Result<(), RawError> {
        let source = format!("/{}", utf8_percent_encode(&self.source_path(key), STRICT_PATH));
        let mut headers: Vec<(&'static str, String)> = vec![
            ("x-amz-copy-source", source),
            ("x-amz-copy-source-if-match", format!("\"{}\"", bare_etag(etag))),
            ("x-amz-metadata-directive", "REPLACE".into()),
        ];
        for (name, value) in metadata {
            let header: &'static str = match *name {
                super::HASH_META => "x-amz-meta-ferry-sha256",
                _ => return Err(RawError::Parse(format!("unknown metadata {name}"))),
            };
            headers.push((header, (*value).to_string()));
        }
        self.send(Method::PUT, Some(key), &[], &headers).await.map(drop)
    }

    /// `bucket/key`, as `x-amz-copy-source` names an object.
    fn source_path(&self, key: &str) -> String {
        format!("{}/{key}", self.endpoint.bucket)
    }
}

fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<Error>") {
        return None;
    }
    quick_xml::de::from_str::<ErrorBody>(text).ok().map(|e| e.code).or_else(|| Some("Error".into()))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, RawError> {
    let text = std::str::from_utf8(body).map_err(|e| RawError::Parse(e.to_string()))?;
    quick_xml::de::from_str(text).map_err(|e| RawError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_in_both_styles() {
        let e = Endpoint::new(Some("http://127.0.0.1:3900/"), "b", "garage", true);
        assert_eq!(e.base, "http://127.0.0.1:3900/b");
        let e = Endpoint::new(Some("https://s3.example.net"), "b", "r", false);
        assert_eq!(e.base, "https://b.s3.example.net");
        let e = Endpoint::new(None, "b", "eu-west-3", true);
        assert_eq!(e.base, "https://s3.eu-west-3.amazonaws.com/b");
    }

    #[test]
    fn listings_parse() {
        let xml = r#"<?xml version="1.0"?><ListMultipartUploadsResult><Bucket>b</Bucket>
            <IsTruncated>false</IsTruncated><Upload><Key>h/a b</Key><UploadId>u1</UploadId></Upload>
            <Upload><Key>h/c</Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>"#;
        let page: UploadsPage = parse(xml.as_bytes()).unwrap();
        assert_eq!(page.upload.len(), 2);
        assert_eq!((page.upload[0].key.as_str(), page.upload[1].upload_id.as_str()), ("h/a b", "u2"));
        let xml = r#"<ListPartsResult><IsTruncated>false</IsTruncated><Part><PartNumber>1</PartNumber>
            <ETag>"abc"</ETag><Size>5242880</Size></Part></ListPartsResult>"#;
        let page: PartsPage = parse(xml.as_bytes()).unwrap();
        assert_eq!((page.part[0].part_number, bare_etag(&page.part[0].etag), page.part[0].size), (1, "abc", 5 << 20));
        let empty: PartsPage = parse(b"<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>").unwrap();
        assert!(empty.part.is_empty());
        assert_eq!(
            error_code(b"<Error><Code>NoSuchBucket</Code><Message>m</Message></Error>").as_deref(),
            Some("NoSuchBucket")
        );
        assert_eq!(
            part_etag("<PartMetadata><e_tag>\"abc\"</e_tag><checksum_sha256>x</checksum_sha256></PartMetadata>"),
            "abc"
        );
        assert_eq!(part_etag("\"abc\""), "abc");
        assert_eq!(error_code(b"<CopyObjectResult><ETag>x</ETag></CopyObjectResult>"), None);
    }
}
