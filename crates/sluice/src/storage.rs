//! Where data lives: locations written in specs, and the object stores behind them.
//!
//! A location is a local path (relative to the pipeline file), a glob, or a
//! URL: `file://`, `memory://` (an in-process store shared by one
//! [`crate::Engine`]) or `s3://bucket/prefix` (configured from `AWS_*`
//! variables and `[settings.s3]`). Every store is registered with DataFusion so
//! its scans can read it too.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use url::Url;

use crate::spec::S3Settings;

/// A parsed location: a store and a prefix inside it, maybe with a glob.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    /// What the user wrote.
    pub original: String,
    /// Scheme and authority, e.g. `file://`, `s3://bucket`.
    pub store_url: ObjectStoreUrl,
    /// The prefix (or single object) inside the store.
    pub prefix: ObjectPath,
    /// A glob the object paths must match, when the location had one.
    pub glob: Option<glob::Pattern>,
}

impl Location {
    /// Parses `text`, resolving relative local paths against `base_dir`.
    pub(crate) fn parse(text: &str, base_dir: &Path) -> Result<Self, String> {
        let original = text.to_string();
        if let Some((scheme, rest)) = text.split_once("://") {
            let url = Url::parse(text).map_err(|e| format!("`{text}` is not a valid URL: {e}"))?;
            return match scheme {
                "file" => Self::local(
                    Path::new(&format!("/{}", rest.trim_start_matches('/'))),
                    original,
                ),
                "memory" | "s3" => {
                    let authority = url.host_str().unwrap_or("");
                    if scheme == "s3" && authority.is_empty() {
                        return Err(format!(
                            "`{text}` has no bucket; write s3://<bucket>/<prefix>"
                        ));
                    }
                    let store_url = ObjectStoreUrl::parse(format!("{scheme}://{authority}"))
                        .map_err(|e| format!("`{text}`: {e}"))?;
                    let path = url.path().trim_start_matches('/');
                    let (prefix, glob) = split_glob(path)?;
                    Ok(Location {
                        original,
                        store_url,
                        prefix: ObjectPath::from(prefix.as_str()),
                        glob,
                    })
                }
                other => Err(format!(
                    "unsupported URL scheme `{other}://` in `{text}`; use a local path, file://, memory:// or s3://"
                )),
            };
        }
        let path = Path::new(text);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            absolute(base_dir).join(path)
        };
        Self::local(&normalize(&abs), original)
    }

    fn local(path: &Path, original: String) -> Result<Self, String> {
        let text = path.to_string_lossy();
        let (prefix, glob) = split_glob(text.trim_start_matches('/'))?;
        Ok(Location {
            original,
            store_url: ObjectStoreUrl::local_filesystem(),
            prefix: ObjectPath::from(prefix.as_str()),
            glob,
        })
    }

    /// The URL of the prefix, e.g. `file:///data/in` or `s3://bucket/in`.
    pub(crate) fn url(&self) -> String {
        let base = self.base();
        if self.prefix.as_ref().is_empty() {
            format!("{base}/")
        } else {
            format!("{base}/{}", self.prefix)
        }
    }

    /// The URL of an object in this location's store.
    pub(crate) fn object_url(&self, path: &ObjectPath) -> String {
        format!("{}/{}", self.base(), path)
    }

    /// The store URL without its one trailing slash (`file://`, `s3://bucket`).
    fn base(&self) -> &str {
        let s = self.store_url.as_str();
        s.strip_suffix('/').unwrap_or(s)
    }

    /// A path under the prefix.
    pub(crate) fn child(&self, relative: &str) -> ObjectPath {
        if self.prefix.as_ref().is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{}", self.prefix, relative))
        }
    }

    /// Whether this is a local path.
    pub(crate) fn is_local(&self) -> bool {
        self.store_url.as_str().starts_with("file://")
    }

    /// The local filesystem path of the prefix, for local locations.
    pub(crate) fn local_path(&self) -> Option<PathBuf> {
        self.is_local()
            .then(|| PathBuf::from(format!("/{}", self.prefix)))
    }
}

/// Splits `a/b/*.csv` into the literal prefix `a/b` and the glob of the whole path.
fn split_glob(path: &str) -> Result<(String, Option<glob::Pattern>), String> {
    let is_glob = |s: &str| s.contains(['*', '?', '[', '{']);
    if !is_glob(path) {
        return Ok((path.trim_end_matches('/').to_string(), None));
    }
    let parts: Vec<&str> = path.split('/').collect();
    let first_glob = parts.iter().position(|p| is_glob(p)).unwrap_or(parts.len());
    let prefix = parts[..first_glob].join("/");
    let pattern = glob::Pattern::new(path.trim_start_matches('/'))
        .map_err(|e| format!("bad glob `{path}`: {e}"))?;
    Ok((prefix, Some(pattern)))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Removes `.` and `..` without touching the filesystem (the path may not exist yet).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The object stores one engine uses, created on first use and registered
/// with every DataFusion context the engine makes.
pub(crate) struct StoreRegistry {
    memory: Arc<InMemory>,
    local: Arc<LocalFileSystem>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    /// The stores sluice made whose multipart uploads it tracks (S3): the
    /// same object as in `stores`, seen as a `MultipartStore`.
    multipart: Mutex<HashMap<String, Arc<dyn MultipartStore>>>,
}

impl std::fmt::Debug for StoreRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stores: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("StoreRegistry")
            .field("stores", &stores)
            .finish_non_exhaustive()
    }
}

impl Default for StoreRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreRegistry {
    /// A registry with a fresh in-memory store.
    pub(crate) fn new() -> Self {
        Self {
            memory: Arc::new(InMemory::new()),
            local: Arc::new(LocalFileSystem::new()),
            stores: Mutex::new(HashMap::new()),
            multipart: Mutex::new(HashMap::new()),
        }
    }

    /// The multipart uploads of the store behind `loc`, when sluice made
    /// that store and can track them (S3).
    pub(crate) fn multipart_for(&self, loc: &Location) -> Option<Arc<dyn MultipartStore>> {
        self.multipart
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(loc.store_url.as_str())
            .cloned()
    }

    /// Registers a store for a URL prefix such as `s3://bucket`, replacing the default.
    pub(crate) fn register(&self, store_url: &str, store: Arc<dyn ObjectStore>) {
        let key = ObjectStoreUrl::parse(store_url)
            .map(|u| u.as_str().to_string())
            .unwrap_or_else(|_| store_url.to_string());
        // a store of the embedder's: its uploads are its own
        self.multipart
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.lock().insert(key, store);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn ObjectStore>>> {
        // a poisoned lock only means another thread panicked mid-insert; the map is still usable
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store behind a location, creating S3 clients on first use.
    pub(crate) fn store_for(
        &self,
        loc: &Location,
        s3: &S3Settings,
    ) -> Result<Arc<dyn ObjectStore>, String> {
        let key = loc.store_url.as_str().to_string();
        if let Some(store) = self.lock().get(&key) {
            return Ok(Arc::clone(store));
        }
        let store: Arc<dyn ObjectStore> = match key.split_once("://").map(|(s, _)| s) {
            Some("file") => self.local.clone(),
            Some("memory") => self.memory.clone(),
            Some("s3") => {
                let bucket = key.trim_start_matches("s3://").trim_end_matches('/');
                let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(e) = &s3.endpoint {
                    b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
                }
                if let Some(r) = &s3.region {
                    b = b.with_region(r);
                } else if std::env::var("AWS_REGION").is_err()
                    && std::env::var("AWS_DEFAULT_REGION").is_err()
                {
                    b = b.with_region("us-east-1");
                }
                if let Some(h) = s3.allow_http {
                    b = b.with_allow_http(h);
                }
                let s3 = Arc::new(
                    b.build()
                        .map_err(|e| format!("cannot configure S3 for `{}`: {e}", loc.original))?,
                );
                self.multipart
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), Arc::clone(&s3) as Arc<dyn MultipartStore>);
                s3
            }
            _ => return Err(format!("no object store for `{}`", loc.original)),
        };
        self.lock().insert(key, Arc::clone(&store));
        Ok(store)
    }

    /// Registers every store created so far, and the local and memory stores,
    /// with a DataFusion context.
    pub(crate) fn register_all(&self, ctx: &SessionContext) {
        let register = |url: &str, store: Arc<dyn ObjectStore>| {
            if let Ok(u) = Url::parse(url) {
                ctx.register_object_store(&u, store);
            }
        };
        register("memory://", self.memory.clone());
        register("file://", self.local.clone());
        for (url, store) in self.lock().iter() {
            register(url, Arc::clone(store));
        }
    }
}

/// Lists the objects a location names: one file, every file under a prefix,
/// or every file matching a glob. Names starting with `_` or `.` (such as
/// sluice's `_sluice/` folder) are skipped under a prefix.
pub(crate) async fn list_objects(
    store: &dyn ObjectStore,
    loc: &Location,
) -> object_store::Result<Vec<ObjectMeta>> {
    if loc.glob.is_none() && !loc.prefix.as_ref().is_empty() {
        match store.head(&loc.prefix).await {
            Ok(meta) => return Ok(vec![meta]),
            Err(object_store::Error::NotFound { .. }) => {}
            // local stores refuse `head` on a directory: fall through to listing it
            Err(_) if loc.is_local() => {}
            Err(e) => return Err(e),
        }
    }
    let prefix = (!loc.prefix.as_ref().is_empty()).then_some(&loc.prefix);
    let mut all: Vec<ObjectMeta> = store.list(prefix).try_collect().await?;
    all.retain(|m| {
        let rel = relative_to(&m.location, &loc.prefix);
        let hidden = rel
            .split('/')
            .any(|seg| seg.starts_with('_') || seg.starts_with('.'));
        match &loc.glob {
            Some(g) => g.matches_with(m.location.as_ref(), GLOB_OPTIONS) && !hidden,
            None => !hidden,
        }
    });
    all.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
    Ok(all)
}

/// `*` stops at `/`, as in a shell; `**` crosses folders.
const GLOB_OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// The part of `path` under `prefix`.
pub(crate) fn relative_to<'a>(path: &'a ObjectPath, prefix: &ObjectPath) -> &'a str {
    let p = path.as_ref();
    let pre = prefix.as_ref();
    if pre.is_empty() {
        return p;
    }
    p.strip_prefix(pre)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(p)
}

/// Bytes per read of a local file.
const LOCAL_READ_BYTES: u64 = 1 << 20;

/// The bytes of a `get`, as a stream. A local file is read in 1 MiB blocking
/// reads on tokio's blocking pool: `GetResult::into_stream` reads 8 KiB per
/// blocking task, and those thread hand-offs cost more than the CSV parsing
/// they feed (measured with `perf` on a 860 MB CSV scan).
pub(crate) fn byte_stream(
    result: object_store::GetResult,
) -> BoxStream<'static, std::io::Result<Bytes>> {
    use std::io::{Read, Seek, SeekFrom};

    match result.payload {
        object_store::GetResultPayload::File(file, _) => {
            let range = result.range;
            let state = (file, range.end - range.start, Some(range.start));
            futures::stream::try_unfold(state, |(mut file, left, seek_to)| async move {
                if left == 0 {
                    return Ok(None);
                }
                tokio::task::spawn_blocking(move || {
                    if let Some(at) = seek_to {
                        file.seek(SeekFrom::Start(at))?;
                    }
                    let mut buf = Vec::with_capacity(left.min(LOCAL_READ_BYTES) as usize);
                    (&mut file)
                        .take(left.min(LOCAL_READ_BYTES))
                        .read_to_end(&mut buf)?;
                    if buf.is_empty() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the file is shorter than listed",
                        ));
                    }
                    let read = buf.len() as u64;
                    Ok(Some((Bytes::from(buf), (file, left - read, None))))
                })
                .await
                .map_err(std::io::Error::other)?
            })
            .boxed()
        }
        object_store::GetResultPayload::Stream(s) => s.map_err(std::io::Error::other).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_relative_absolute_glob_and_urls() {
        let l = Location::parse("data/../in/*.csv", Path::new("/p")).unwrap();
        assert_eq!(l.store_url.as_str(), "file:///");
        assert_eq!(l.prefix.as_ref(), "p/in");
        assert!(
            l.glob
                .as_ref()
                .unwrap()
                .matches_with("p/in/a.csv", GLOB_OPTIONS)
        );
        let l = Location::parse("s3://bucket/raw/orders", Path::new(".")).unwrap();
        assert_eq!(l.store_url.as_str(), "s3://bucket/");
        assert_eq!(l.prefix.as_ref(), "raw/orders");
        assert_eq!(l.url(), "s3://bucket/raw/orders");
        let l = Location::parse("memory:///t/x", Path::new(".")).unwrap();
        assert_eq!(l.url(), "memory:///t/x");
        assert!(
            Location::parse("ftp://x/y", Path::new("."))
                .unwrap_err()
                .contains("ftp")
        );
        assert!(Location::parse("s3:///nobucket", Path::new(".")).is_err());
    }

    #[tokio::test]
    async fn lists_files_dirs_and_globs_skipping_hidden() -> object_store::Result<()> {
        let store = InMemory::new();
        for p in [
            "in/a.csv",
            "in/b.json",
            "in/sub/c.csv",
            "in/_sluice/commits/0.json",
            "in/.hidden.csv",
        ] {
            store.put(&ObjectPath::from(p), "x".into()).await?;
        }
        let names = |v: Vec<ObjectMeta>| {
            v.into_iter()
                .map(|m| m.location.to_string())
                .collect::<Vec<_>>()
        };
        let dir = Location::parse("memory:///in", Path::new(".")).unwrap();
        assert_eq!(
            names(list_objects(&store, &dir).await?),
            vec!["in/a.csv", "in/b.json", "in/sub/c.csv"]
        );
        let glob = Location::parse("memory:///in/*.csv", Path::new(".")).unwrap();
        assert_eq!(names(list_objects(&store, &glob).await?), vec!["in/a.csv"]);
        let one = Location::parse("memory:///in/b.json", Path::new(".")).unwrap();
        assert_eq!(names(list_objects(&store, &one).await?), vec!["in/b.json"]);
        Ok(())
    }
}
