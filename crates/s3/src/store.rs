//! A blocking facade over `object_store`'s S3 client.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use fsqlite_error::{FrankenError, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

/// Where and how to reach an S3-compatible bucket.
#[derive(Clone)]
pub struct S3Config {
    /// Endpoint URL, e.g. `http://127.0.0.1:8333` (`None`: AWS itself).
    pub endpoint: Option<String>,
    /// Bucket name.
    pub bucket: String,
    /// Region used for signing.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (never printed).
    pub secret_access_key: String,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
    /// Virtual-hosted-style requests (`bucket.host`); `false` is path style.
    pub virtual_hosted: bool,
    /// Give up retrying a failed request after this long.
    pub retry_timeout: Duration,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &"***")
            .field("secret_access_key", &"***")
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted", &self.virtual_hosted)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// Path-style settings for an S3-compatible server at `endpoint`.
    pub fn new(
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        let endpoint = endpoint.into();
        Self {
            allow_http: endpoint.starts_with("http://"),
            endpoint: Some(endpoint),
            bucket: bucket.into(),
            region: "us-east-1".to_string(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            virtual_hosted: false,
            retry_timeout: Duration::from_secs(10),
        }
    }

    /// Reads `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (or
    /// `AWS_DEFAULT_REGION`, default `us-east-1`) and `AWS_ENDPOINT_URL` (optional).
    pub fn from_env(bucket: impl Into<String>) -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let missing = |name: &str| {
            FrankenError::cannot_open(
                PathBuf::from("s3 credentials"),
                format!("the environment variable {name} is not set"),
            )
        };
        let key = var("AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
        let secret =
            var("AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?;
        let endpoint = var("AWS_ENDPOINT_URL");
        Ok(Self {
            allow_http: endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://")),
            endpoint,
            bucket: bucket.into(),
            region: var("AWS_REGION")
                .or_else(|| var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".to_string()),
            access_key_id: key,
            secret_access_key: secret,
            virtual_hosted: false,
            retry_timeout: Duration::from_secs(10),
        })
    }
}

/// A bucket, with blocking methods. Owns a current-thread tokio runtime.
pub struct Store {
    rt: tokio::runtime::Runtime,
    s3: AmazonS3,
    bucket: String,
    /// Strings that must never appear in an error message.
    secrets: Vec<String>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// True if `e` is the error [`Store::put_if_absent`] returns for an existing key.
pub fn is_already_exists(e: &FrankenError) -> bool {
    matches!(e, FrankenError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
}

impl Store {
    /// Connects (lazily: no request is made here).
    pub fn new(cfg: &S3Config) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FrankenError::io("starting the S3 client runtime", None, e))?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&cfg.bucket)
            .with_region(&cfg.region)
            .with_access_key_id(&cfg.access_key_id)
            .with_secret_access_key(&cfg.secret_access_key)
            .with_allow_http(cfg.allow_http)
            .with_virtual_hosted_style_request(cfg.virtual_hosted)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: cfg.retry_timeout,
                ..RetryConfig::default()
            });
        if let Some(ep) = &cfg.endpoint {
            b = b.with_endpoint(ep);
        }
        let secrets = vec![cfg.secret_access_key.clone(), cfg.access_key_id.clone()];
        let s3 = b.build().map_err(|e| {
            FrankenError::cannot_open(
                PathBuf::from(format!("s3://{}", cfg.bucket)),
                redact(&e.to_string(), &secrets),
            )
        })?;
        Ok(Self {
            rt,
            s3,
            bucket: cfg.bucket.clone(),
            secrets,
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The `s3://bucket/key` URL of `key`.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key)
            .map_err(|e| FrankenError::out_of_range(format!("object key {}", self.url(key)), e))
    }

    fn err(&self, op: &'static str, key: &str, e: &object_store::Error) -> FrankenError {
        let kind = match e {
            object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::Other,
        };
        let msg = redact(&e.to_string(), &self.secrets);
        FrankenError::io(
            op,
            Some(PathBuf::from(self.url(key))),
            io::Error::new(kind, msg),
        )
    }

    /// Writes `bytes` at `key` only if no object is there (a conditional
    /// `If-None-Match: *` write). An existing key gives an error for which
    /// [`is_already_exists`] is true, and the object is left as it was.
    pub fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        self.rt
            .block_on(self.s3.put_opts(&path, payload, opts))
            .map(|_| ())
            .map_err(|e| self.err("S3 create-only PUT", key, &e))
    }

    /// Writes `bytes` at `key`, replacing any object there.
    pub fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        self.rt
            .block_on(self.s3.put(&path, payload))
            .map(|_| ())
            .map_err(|e| self.err("S3 PUT", key, &e))
    }

    /// Reads the object at `key`, `None` if there is none.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let r = self.rt.block_on(async {
            let got = self.s3.get(&path).await?;
            got.bytes().await
        });
        match r {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("S3 GET", key, &e)),
        }
    }

    /// Every object under `prefix` (whole path segments; `""` for the bucket), as
    /// `(key, size)` sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let p = if prefix.is_empty() {
            None
        } else {
            Some(self.path(prefix.trim_end_matches('/'))?)
        };
        let r = self.rt.block_on(async {
            self.s3
                .list(p.as_ref())
                .map_ok(|m| (m.location.to_string(), m.size))
                .try_collect::<Vec<_>>()
                .await
        });
        let mut v = r.map_err(|e| self.err("S3 LIST", prefix, &e))?;
        v.sort();
        Ok(v)
    }

    /// Deletes the object at `key` (no error if there is none).
    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.rt.block_on(self.s3.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("S3 DELETE", key, &e)),
        }
    }
}

fn redact(msg: &str, secrets: &[String]) -> String {
    let mut s = msg.to_string();
    for secret in secrets.iter().filter(|x| !x.is_empty()) {
        s = s.replace(secret.as_str(), "***");
    }
    s
}

/// Objects fetched at once by [`Store`]'s `get_many` (restores download this many files
/// concurrently).
pub const GET_CONCURRENCY: usize = 32;

impl fsqlite_replicate::replica::Objects for Store {
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        match Store::put_if_absent(self, key, bytes) {
            Ok(()) => Ok(true),
            Err(e) if is_already_exists(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Store::get(self, key)
    }

    fn get_prefix(&self, key: &str, len: usize) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let opts = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(0..len as u64)),
            ..object_store::GetOptions::default()
        };
        let r = self.rt.block_on(async {
            let got = self.s3.get_opts(&path, opts).await?;
            got.bytes().await
        });
        match r {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("S3 ranged GET", key, &e)),
        }
    }

    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        use futures::StreamExt;
        let paths = keys
            .iter()
            .map(|k| self.path(k))
            .collect::<Result<Vec<_>>>()?;
        type Fetched = std::result::Result<Option<Vec<u8>>, (usize, object_store::Error)>;
        let results: Vec<Fetched> = self.rt.block_on(async {
            futures::stream::iter(paths.iter().enumerate())
                .map(|(i, p)| async move {
                    match self.s3.get(p).await {
                        Ok(got) => match got.bytes().await {
                            Ok(b) => Ok(Some(b.to_vec())),
                            Err(e) => Err((i, e)),
                        },
                        Err(object_store::Error::NotFound { .. }) => Ok(None),
                        Err(e) => Err((i, e)),
                    }
                })
                .buffered(GET_CONCURRENCY)
                .collect()
                .await
        });
        results
            .into_iter()
            .map(|r| r.map_err(|(i, e)| self.err("S3 GET", &keys[i], &e)))
            .collect()
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Store::list(self, prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        Store::delete(self, key)
    }

    fn url(&self, key: &str) -> String {
        Store::url(self, key)
    }
}
