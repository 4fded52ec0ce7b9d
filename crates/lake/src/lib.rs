//! Where the lake lives: a local directory or any `object_store` URL (`s3://`, `gs://`,
//! `az://`, `file://`, `memory://`), behind the few operations the stages need.
//!
//! Keys are `/`-separated paths relative to the lake's root (`rollups/hour=…/x.parquet`).
//! Every write is whole-file and atomic, on either backend: a reader sees the old bytes or
//! the new ones, never part of them.
//! - On a directory, a file is written under a temporary name, fsynced, then renamed (or
//!   hard-linked, for a create) into place and its directory fsynced.
//! - On an object store, a PUT is atomic by itself; nothing is renamed (a rename there is
//!   a copy and a delete). A create is a conditional PUT (`If-None-Match: *`) and a
//!   replacement of a known version a compare-and-swap (`If-Match`), which is how two
//!   writers that each believe they own a file are told apart without a lock.
//!
//! The operations are blocking: the aggregator is synchronous, and rating writes its files
//! after its DataFusion plans have run. An object store's requests run on one runtime of
//! this crate's own, so calling them from inside another runtime's task is safe.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use url::Url;

pub use object_store;
pub use url;

/// Suffix of a directory lake's files while they are written; a crash can leave one,
/// which the writer that owns the name removes.
pub const TEMP_SUFFIX: &str = ".tmp";

/// How many files a directory lake fsyncs at once in [`Lake::put_many`], and how many
/// requests an object store has in flight.
const PARALLEL_WRITES: usize = 8;

/// The lake's storage. Cheap to clone: clones share the store.
#[derive(Clone)]
pub struct Lake {
    backend: Backend,
    on_write: Option<fn(WriteStep, &str)>,
}

#[derive(Clone)]
enum Backend {
    Directory(PathBuf),
    Store(Arc<Store>),
}

struct Store {
    store: Arc<dyn ObjectStore>,
    /// `scheme://authority/` of the store: what DataFusion registers it under.
    base: Url,
    /// The lake's root inside the store (the URL's path; empty for the whole bucket).
    root: StorePath,
}

/// Where a write is, for a fault test that wants the process to die exactly there
/// ([`Lake::with_write_hook`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStep {
    /// The bytes are durable under a temporary name (an object store: about to be put);
    /// nothing a reader sees has changed.
    Durable,
    /// The file is in place (a directory lake has not fsynced the directory yet).
    InPlace,
}

/// The version of a file that a compare-and-swap replaces ([`Lake::replace`]). A
/// directory lake has no versions: its writers are kept apart by a lock instead.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    e_tag: Option<String>,
    version: Option<String>,
}

/// The outcome of a conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Written(Version),
    /// A create found the file there, or a replacement found another version than the
    /// one it expected: someone else wrote it. Nothing was changed.
    Conflict,
}

/// A failed operation, naming what was done where.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {location}: {source}")]
pub struct Error {
    pub action: &'static str,
    pub location: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl std::fmt::Debug for Lake {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Lake({self})")
    }
}

impl std::fmt::Display for Lake {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Directory(root) => write!(formatter, "{}", root.display()),
            Backend::Store(store) => write!(formatter, "{}", store.url_of("")),
        }
    }
}

impl From<PathBuf> for Lake {
    fn from(root: PathBuf) -> Self {
        Self::directory(root)
    }
}

impl From<&PathBuf> for Lake {
    fn from(root: &PathBuf) -> Self {
        Self::directory(root.clone())
    }
}

impl From<&Path> for Lake {
    fn from(root: &Path) -> Self {
        Self::directory(root.to_owned())
    }
}

impl Lake {
    /// A lake in a local directory (created when first written).
    pub fn directory(root: impl Into<PathBuf>) -> Self {
        Self {
            backend: Backend::Directory(root.into()),
            on_write: None,
        }
    }

    /// A lake at `location`: a URL with a scheme `object_store` knows (`s3://bucket/prefix`,
    /// `gs://…`, `az://…`, `memory://…`; `file:///path` is a directory), or else a local path.
    /// An object store's settings come from the environment as `object_store` names them
    /// (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, …).
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with(location, std::env::vars())
    }

    /// A lake at `location` as [`Lake::open`], with an object store's settings from
    /// `options` (`aws_endpoint`, `aws_allow_http`, …; names `object_store` does not know
    /// are ignored) instead of the environment.
    pub fn open_with<K: AsRef<str>, V: Into<String>>(
        location: &str,
        options: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        let Some((scheme, _)) = location.split_once("://") else {
            return Ok(Self::directory(location));
        };
        let url = Url::parse(location).map_err(|error| Error {
            action: "parse the lake URL",
            location: location.to_owned(),
            source: Box::new(error),
        })?;
        if scheme == "file" {
            let path = url.to_file_path().map_err(|()| Error {
                action: "use as a directory",
                location: location.to_owned(),
                source: "a file:// URL must name an absolute local path".into(),
            })?;
            return Ok(Self::directory(path));
        }
        let (store, root) = object_store::parse_url_opts(&url, options).map_err(|error| Error {
            action: "open the object store",
            location: location.to_owned(),
            source: Box::new(error),
        })?;
        let mut base = url.clone();
        base.set_path("/");
        base.set_query(None);
        base.set_fragment(None);
        Ok(Self::store(Arc::from(store), base, root))
    }

    /// A lake in `store` below `root`; `base` is the store's `scheme://authority/`.
    pub fn store(store: Arc<dyn ObjectStore>, base: Url, root: StorePath) -> Self {
        Self {
            backend: Backend::Store(Arc::new(Store { store, base, root })),
            on_write: None,
        }
    }

    /// Calls `hook` at each [`WriteStep`] of every write, with the key written.
    pub fn with_write_hook(mut self, hook: fn(WriteStep, &str)) -> Self {
        self.on_write = Some(hook);
        self
    }

    /// The directory, for a lake on local disk.
    pub fn local_root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Directory(root) => Some(root),
            Backend::Store(_) => None,
        }
    }

    /// The object store and the URL (`scheme://authority/`) DataFusion knows it by, for a
    /// lake on one.
    pub fn object_store(&self) -> Option<(Url, Arc<dyn ObjectStore>)> {
        match &self.backend {
            Backend::Directory(_) => None,
            Backend::Store(store) => Some((store.base.clone(), Arc::clone(&store.store))),
        }
    }

    /// Where `key` is, for people: a path or a URL.
    pub fn location(&self, key: &str) -> String {
        match &self.backend {
            Backend::Directory(root) => root.join(key).display().to_string(),
            Backend::Store(store) => store.url_of(key),
        }
    }

    /// `key` as a table path for DataFusion: a local path, or a URL of the registered store.
    /// A key ending in `/` stays a directory.
    pub fn table_path(&self, key: &str) -> String {
        match &self.backend {
            Backend::Directory(root) => {
                let path = root.join(key).display().to_string();
                if key.ends_with('/') && !path.ends_with('/') {
                    format!("{path}/")
                } else {
                    path
                }
            }
            Backend::Store(store) => store.url_of(key),
        }
    }

    /// The bytes of `key`, or `None` if there is no such file.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key)?.map(|(bytes, _)| bytes))
    }

    /// The bytes of `key` and the version they are, for a later [`Lake::replace`].
    pub fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>> {
        match &self.backend {
            Backend::Directory(root) => match fs::read(root.join(key)) {
                Ok(bytes) => Ok(Some((bytes, Version::default()))),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(self.error("read", key, error)),
            },
            Backend::Store(store) => {
                let path = store.path(key);
                let object_store = Arc::clone(&store.store);
                let got = block_on(async move {
                    let got = object_store.get(&path).await?;
                    let version = Version {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    Ok::<_, object_store::Error>((got.bytes().await?.to_vec(), version))
                });
                match got {
                    Ok(found) => Ok(Some(found)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(error) => Err(self.error("read", key, error)),
                }
            }
        }
    }

    /// Whether `key` is a file of the lake.
    pub fn exists(&self, key: &str) -> Result<bool> {
        match &self.backend {
            Backend::Directory(root) => Ok(root.join(key).is_file()),
            Backend::Store(store) => {
                let path = store.path(key);
                let object_store = Arc::clone(&store.store);
                match block_on(async move { object_store.head(&path).await }) {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(error) => Err(self.error("look up", key, error)),
                }
            }
        }
    }

    /// Writes `bytes` to `key`, replacing what was there.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match &self.backend {
            Backend::Directory(root) => {
                let (path, directory, temp) = self.stage(root, key, &bytes)?;
                fs::rename(&temp, &path).map_err(|e| self.error("rename into place", key, e))?;
                self.step(WriteStep::InPlace, key);
                sync_directory(&directory).map_err(|e| self.error("fsync the directory of", key, e))
            }
            Backend::Store(store) => {
                self.step(WriteStep::Durable, key);
                store
                    .put(key, bytes, PutMode::Overwrite)
                    .map_err(|error| self.error("write", key, error))?;
                self.step(WriteStep::InPlace, key);
                Ok(())
            }
        }
    }

    /// Writes many files, each as [`Lake::put`] writes one, with the costs shared: a
    /// directory lake fsyncs several temporary files at once and each directory once; an
    /// object store has several requests in flight.
    pub fn put_many(&self, files: Vec<(String, Vec<u8>)>) -> Result<()> {
        match &self.backend {
            Backend::Directory(root) => self.put_many_in_directory(root, &files),
            Backend::Store(store) => {
                let store = Arc::clone(store);
                let keys: Vec<String> = files.iter().map(|(key, _)| key.clone()).collect();
                let written = wait_for(async move {
                    futures::stream::iter(files)
                        .map(|(key, bytes)| {
                            let store = Arc::clone(&store);
                            async move {
                                let path = store.path(&key);
                                let options = PutOptions::from(PutMode::Overwrite);
                                store
                                    .store
                                    .put_opts(&path, PutPayload::from(bytes), options)
                                    .await
                                    .map_err(|error| (key, error))
                            }
                        })
                        .buffer_unordered(PARALLEL_WRITES)
                        .try_collect::<Vec<_>>()
                        .await
                });
                match written {
                    Ok(Ok(_)) => {
                        for key in &keys {
                            self.step(WriteStep::InPlace, key);
                        }
                        Ok(())
                    }
                    Ok(Err((key, error))) => Err(self.error("write", &key, error)),
                    Err(panicked) => Err(self.error("write files into", "", panicked)),
                }
            }
        }
    }

    /// Writes `bytes` to `key` unless a file is there already; then nothing is written.
    pub fn create(&self, key: &str, bytes: Vec<u8>) -> Result<Outcome> {
        match &self.backend {
            Backend::Directory(root) => {
                let (path, directory, temp) = self.stage(root, key, &bytes)?;
                // A hard link fails if the name is taken, where a rename would replace it.
                let linked = fs::hard_link(&temp, &path);
                let _ = fs::remove_file(&temp);
                match linked {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                        return Ok(Outcome::Conflict);
                    }
                    Err(error) => return Err(self.error("link into place", key, error)),
                }
                self.step(WriteStep::InPlace, key);
                sync_directory(&directory)
                    .map_err(|e| self.error("fsync the directory of", key, e))?;
                Ok(Outcome::Written(Version::default()))
            }
            Backend::Store(store) => {
                self.step(WriteStep::Durable, key);
                match store.put(key, bytes, PutMode::Create) {
                    Ok(version) => {
                        self.step(WriteStep::InPlace, key);
                        Ok(Outcome::Written(version))
                    }
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(Outcome::Conflict),
                    Err(error) => Err(self.error("create", key, error)),
                }
            }
        }
    }

    /// Replaces the `expected` version of `key` (`None`: creates it), unless someone else
    /// wrote it since. On a directory lake, whose writers hold a lock, this is a [`Lake::put`].
    pub fn replace(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: Option<&Version>,
    ) -> Result<Outcome> {
        let Backend::Store(store) = &self.backend else {
            self.put(key, bytes)?;
            return Ok(Outcome::Written(Version::default()));
        };
        let Some(expected) = expected else {
            return self.create(key, bytes);
        };
        self.step(WriteStep::Durable, key);
        let mode = PutMode::Update(UpdateVersion {
            e_tag: expected.e_tag.clone(),
            version: expected.version.clone(),
        });
        match store.put(key, bytes, mode) {
            Ok(version) => {
                self.step(WriteStep::InPlace, key);
                Ok(Outcome::Written(version))
            }
            Err(object_store::Error::Precondition { .. }) => Ok(Outcome::Conflict),
            Err(error) => Err(self.error("replace", key, error)),
        }
    }

    /// Every file below `prefix` (a directory's key, with or without the trailing `/`),
    /// as keys, sorted. A missing directory has none.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let Backend::Directory(root) = &self.backend else {
            return Ok(self
                .list_each(&[prefix.to_owned()])?
                .pop()
                .unwrap_or_default());
        };
        let prefix = prefix.trim_end_matches('/');
        let mut keys = Vec::new();
        list_directory(&root.join(prefix), prefix, &mut keys)
            .map_err(|error| self.error("list", prefix, error))?;
        keys.sort();
        Ok(keys)
    }

    /// [`Lake::list`] of each of `prefixes`, in their order; an object store's listings run
    /// several at a time (a month of hour directories is 745 requests).
    pub fn list_each(&self, prefixes: &[String]) -> Result<Vec<Vec<String>>> {
        let Backend::Store(store) = &self.backend else {
            return prefixes.iter().map(|prefix| self.list(prefix)).collect();
        };
        let store = Arc::clone(store);
        let owned: Vec<String> = prefixes.to_vec();
        let listed = wait_for(async move {
            futures::stream::iter(owned)
                .map(|prefix| {
                    let store = Arc::clone(&store);
                    async move {
                        let path = store.path(prefix.trim_end_matches('/'));
                        let metas: Vec<_> = store
                            .store
                            .list(Some(&path))
                            .try_collect()
                            .await
                            .map_err(|error| (prefix.clone(), error))?;
                        let mut keys: Vec<String> = metas
                            .iter()
                            .filter_map(|meta| store.key_of(&meta.location))
                            .collect();
                        keys.sort();
                        Ok::<_, (String, object_store::Error)>(keys)
                    }
                })
                .buffered(PARALLEL_WRITES)
                .try_collect::<Vec<_>>()
                .await
        });
        match listed {
            Ok(Ok(listings)) => Ok(listings),
            Ok(Err((prefix, error))) => Err(self.error("list", &prefix, error)),
            Err(panicked) => Err(self.error("list", "", panicked)),
        }
    }

    /// Whether anything is below `prefix`.
    pub fn has_any(&self, prefix: &str) -> Result<bool> {
        let prefix = prefix.trim_end_matches('/');
        match &self.backend {
            Backend::Directory(root) => Ok(root.join(prefix).is_dir()),
            Backend::Store(store) => {
                let listed = Arc::clone(store);
                let path = store.path(prefix);
                let first =
                    block_on(
                        async move { listed.store.list(Some(&path)).next().await.transpose() },
                    );
                match first {
                    Ok(found) => Ok(found.is_some()),
                    Err(error) => Err(self.error("list", prefix, error)),
                }
            }
        }
    }

    /// Removes `key`; a file already gone is no error.
    pub fn delete(&self, key: &str) -> Result<()> {
        match &self.backend {
            Backend::Directory(root) => match fs::remove_file(root.join(key)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    Err(self.error("remove", key, error))
                }
                _ => Ok(()),
            },
            Backend::Store(store) => {
                let path = store.path(key);
                let object_store = Arc::clone(&store.store);
                match block_on(async move { object_store.delete(&path).await }) {
                    Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
                    Err(error) => Err(self.error("remove", key, error)),
                }
            }
        }
    }

    /// Moves `from` to `to`, replacing it. Atomic on a directory; on an object store a
    /// copy, then a delete (for files no reader relies on, such as a quarantined one).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        match &self.backend {
            Backend::Directory(root) => {
                let target = root.join(to);
                self.parent_of(&target, to)?;
                fs::rename(root.join(from), &target)
                    .map_err(|error| self.error("move", from, error))
            }
            Backend::Store(store) => {
                let (source, target) = (store.path(from), store.path(to));
                let object_store = Arc::clone(&store.store);
                block_on(async move {
                    object_store.copy(&source, &target).await?;
                    object_store.delete(&source).await
                })
                .map_err(|error| self.error("move", from, error))
            }
        }
    }

    fn step(&self, step: WriteStep, key: &str) {
        if let Some(hook) = self.on_write {
            hook(step, key);
        }
    }

    fn error(
        &self,
        action: &'static str,
        key: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error {
            action,
            location: self.location(key),
            source: source.into(),
        }
    }

    /// Creates the directory a file goes into and returns it.
    fn parent_of(&self, path: &Path, key: &str) -> Result<PathBuf> {
        let directory = path.parent().map(Path::to_owned).unwrap_or_default();
        fs::create_dir_all(&directory)
            .map_err(|error| self.error("create the directory of", key, error))?;
        Ok(directory)
    }

    /// Writes `bytes` durably under the temporary name of `key` in a directory lake:
    /// returns the file's path, its directory and the temporary path.
    fn stage(&self, root: &Path, key: &str, bytes: &[u8]) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let path = root.join(key);
        let directory = self.parent_of(&path, key)?;
        let temp = self.write_temp(&path, key, bytes)?;
        self.step(WriteStep::Durable, key);
        Ok((path, directory, temp))
    }

    /// Writes and fsyncs `bytes` under the temporary name of `path`, and returns that name.
    fn write_temp(&self, path: &Path, key: &str, bytes: &[u8]) -> Result<PathBuf> {
        let temp = temp_path(path);
        File::create(&temp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_all()
            })
            .map_err(|error| self.error("write", key, error))?;
        Ok(temp)
    }

    fn put_many_in_directory(&self, root: &Path, files: &[(String, Vec<u8>)]) -> Result<()> {
        let mut directories = std::collections::BTreeSet::new();
        for (key, _) in files {
            directories.insert(self.parent_of(&root.join(key), key)?);
        }
        let chunk = files.len().div_ceil(PARALLEL_WRITES).max(1);
        std::thread::scope(|scope| {
            let writers: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || -> Result<()> {
                        for (key, bytes) in part {
                            self.write_temp(&root.join(key), key, bytes)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            writers.into_iter().try_for_each(|writer| {
                writer.join().unwrap_or_else(|_| {
                    Err(self.error("write files into", "", "a writer thread panicked"))
                })
            })
        })?;
        for (key, _) in files {
            self.step(WriteStep::Durable, key);
            let path = root.join(key);
            fs::rename(temp_path(&path), &path)
                .map_err(|error| self.error("rename into place", key, error))?;
            self.step(WriteStep::InPlace, key);
        }
        for directory in directories {
            sync_directory(&directory).map_err(|error| Error {
                action: "fsync the directory",
                location: directory.display().to_string(),
                source: Box::new(error),
            })?;
        }
        Ok(())
    }
}

impl Store {
    fn path(&self, key: &str) -> StorePath {
        key.split('/')
            .filter(|part| !part.is_empty())
            .fold(self.root.clone(), |path, part| path.clone().join(part))
    }

    /// The key of a store path below the root.
    fn key_of(&self, path: &StorePath) -> Option<String> {
        let parts: Vec<_> = path
            .prefix_match(&self.root)?
            .map(|part| part.as_ref().to_owned())
            .collect();
        Some(parts.join("/"))
    }

    fn url_of(&self, key: &str) -> String {
        let path = self.path(key);
        let mut url = format!("{}{}", self.base, path);
        if key.ends_with('/') || key.is_empty() {
            url.push('/');
        }
        url
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
    ) -> Result<Version, object_store::Error> {
        let path = self.path(key);
        let object_store = Arc::clone(&self.store);
        let result = block_on(async move {
            object_store
                .put_opts(&path, PutPayload::from(bytes), PutOptions::from(mode))
                .await
        })?;
        Ok(Version {
            e_tag: result.e_tag,
            version: result.version,
        })
    }
}

/// Runs an object store's request on this crate's runtime and waits for it.
fn block_on<T: Send + 'static>(
    future: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
) -> Result<T, object_store::Error> {
    wait_for(future).unwrap_or_else(|panicked| {
        Err(object_store::Error::Generic {
            store: "lake",
            source: panicked.into(),
        })
    })
}

/// Runs `future` on this crate's runtime and waits for it on this thread; an error if it
/// panicked. The answer comes back through a channel, not a `JoinHandle`: polling one from
/// inside another runtime's task spins once that task's cooperative budget is spent. The
/// runtime is the process's for good: a runtime may not be dropped inside another's task.
fn wait_for<T: Send + 'static>(
    future: impl Future<Output = T> + Send + 'static,
) -> Result<T, &'static str> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tally-lake")
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("cannot start the lake's I/O runtime: {error}"))
    });
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        // The receiver waits until this is sent; it is gone only if it panicked itself.
        let _ = answer.send(future.await);
    });
    answered.recv().map_err(|_| "the lake's request panicked")
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(TEMP_SUFFIX);
    path.with_file_name(name)
}

fn list_directory(directory: &Path, key: &str, keys: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child = if key.is_empty() {
            name
        } else {
            format!("{key}/{name}")
        };
        if entry.file_type()?.is_dir() {
            list_directory(&entry.path(), &child, keys)?;
        } else {
            keys.push(child);
        }
    }
    Ok(())
}

/// fsyncs a directory so that a rename or link in it survives a power loss.
#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> io::Result<()> {
    Ok(()) // directories cannot be opened for fsync on this platform
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lakes(directory: &Path) -> [Lake; 2] {
        let memory = object_store::memory::InMemory::new();
        let base = Url::parse("memory:///").expect("url");
        [
            Lake::directory(directory),
            Lake::store(Arc::new(memory), base, StorePath::from("lake")),
        ]
    }

    #[test]
    fn both_backends_read_list_and_write_alike() {
        let directory = tempfile::tempdir().expect("dir");
        for lake in lakes(directory.path()) {
            assert_eq!(lake.get("a/b.json").expect("get"), None, "{lake}");
            lake.put("a/b.json", b"1".to_vec()).expect("put");
            lake.put("a/b.json", b"2".to_vec()).expect("put again");
            lake.put_many(vec![
                ("a/c/d.csv".to_owned(), b"3".to_vec()),
                ("e.csv".to_owned(), b"4".to_vec()),
            ])
            .expect("put many");
            assert_eq!(
                lake.get("a/b.json").expect("get").as_deref(),
                Some(&b"2"[..])
            );
            assert_eq!(
                lake.list("a").expect("list"),
                ["a/b.json", "a/c/d.csv"],
                "{lake}"
            );
            assert_eq!(lake.list("").expect("list").len(), 3, "{lake}");
            assert!(lake.list("missing/").expect("list").is_empty());
            let each = lake.list_each(&["a/c".to_owned(), "z".to_owned(), String::new()]);
            assert_eq!(
                each.expect("list each"),
                [
                    vec!["a/c/d.csv".to_owned()],
                    vec![],
                    lake.list("").expect("list")
                ]
            );
            assert!(lake.has_any("a/").expect("has any") && !lake.has_any("z").expect("has"));

            assert!(matches!(
                lake.create("f", b"5".to_vec()),
                Ok(Outcome::Written(_))
            ));
            assert_eq!(
                lake.create("f", b"6".to_vec()).expect("create"),
                Outcome::Conflict
            );
            assert_eq!(
                lake.get("f").expect("get").as_deref(),
                Some(&b"5"[..]),
                "{lake}"
            );

            lake.rename("f", "g/f").expect("rename");
            assert!(!lake.exists("f").expect("exists") && lake.exists("g/f").expect("exists"));
            lake.delete("g/f").expect("delete");
            lake.delete("g/f").expect("delete a missing file");
            assert!(!lake.exists("g/f").expect("exists"));
        }
        // A directory lake leaves no temporary file behind.
        let files = Lake::directory(directory.path()).list("").expect("list");
        assert!(
            files.iter().all(|key| !key.ends_with(TEMP_SUFFIX)),
            "{files:?}"
        );
    }

    #[test]
    fn a_store_replaces_only_the_version_it_read() {
        let directory = tempfile::tempdir().expect("dir");
        let [_, lake] = lakes(directory.path());
        let Outcome::Written(first) = lake.replace("m.json", b"1".to_vec(), None).expect("create")
        else {
            panic!("the first write creates the file");
        };
        assert_eq!(
            lake.replace("m.json", b"x".to_vec(), None).expect("again"),
            Outcome::Conflict
        );
        let Outcome::Written(second) = lake
            .replace("m.json", b"2".to_vec(), Some(&first))
            .expect("replace")
        else {
            panic!("the version read is replaced");
        };
        // A writer still holding the first version has lost the file to the second.
        assert_eq!(
            lake.replace("m.json", b"3".to_vec(), Some(&first))
                .expect("stale"),
            Outcome::Conflict
        );
        let (bytes, version) = lake.get_versioned("m.json").expect("get").expect("there");
        assert_eq!((bytes.as_slice(), &version), (&b"2"[..], &second));
    }

    /// Rating calls the lake from inside its runtime's tasks: more requests than a task's
    /// cooperative budget allows must still be answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_from_inside_another_runtime_are_answered() {
        let directory = tempfile::tempdir().expect("dir");
        let [_, lake] = lakes(directory.path());
        for round in 0..300 {
            lake.put("a", vec![round as u8]).expect("put");
            assert!(lake.exists("a").expect("exists"));
        }
    }

    #[test]
    fn open_tells_paths_from_urls() {
        let lake = Lake::open("/var/lib/tally/lake").expect("path");
        assert_eq!(lake.local_root(), Some(Path::new("/var/lib/tally/lake")));
        let lake = Lake::open("file:///var/lib/tally/lake").expect("file url");
        assert_eq!(lake.local_root(), Some(Path::new("/var/lib/tally/lake")));
        let lake = Lake::open("memory:///lake/a").expect("memory url");
        assert_eq!(
            lake.location("rollups/x.parquet"),
            "memory:///lake/a/rollups/x.parquet"
        );
        assert_eq!(lake.table_path("rollups/"), "memory:///lake/a/rollups/");
        let error = Lake::open("nosuch://bucket/x").expect_err("unknown scheme");
        assert!(error.to_string().contains("nosuch://bucket/x"), "{error}");
    }
}
