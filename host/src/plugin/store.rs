//! Content-addressed storage of plugin components and of their precompiled artifacts.
//!
//! A component is stored under its SHA-256 digest, so the same bytes are one plugin
//! whatever they are called, and a digest pins exactly what produced a figure. Its
//! compiled form is cached next to it, keyed by digest and by the engine's compatibility
//! hash (wasmtime version and the settings that change code), so the host compiles a
//! component once, ever, and never on the request path.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The SHA-256 of a component's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    /// Parses `sha256:<hex>` or bare hex.
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:").unwrap_or(text);
        let bytes = hex::decode(hex).ok()?;
        Some(Digest(bytes.try_into().ok()?))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.short())
    }
}

/// A directory of components and compiled artifacts.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<ContentStore> {
        let root = root.into();
        std::fs::create_dir_all(root.join("components"))?;
        std::fs::create_dir_all(root.join("artifacts"))?;
        Ok(ContentStore { root })
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores `bytes` (idempotent) and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<Digest> {
        let digest = Digest::of(bytes);
        let path = self.component_path(&digest);
        if !path.exists() {
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Reads a stored component, checking that its bytes still match the digest.
    pub fn get(&self, digest: &Digest) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(self.component_path(digest))?;
        if Digest::of(&bytes) != *digest {
            return Err(std::io::Error::other(format!("stored component {digest} is corrupt")));
        }
        Ok(bytes)
    }

    fn component_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("components").join(format!("{}.wasm", digest.hex()))
    }

    /// Path of the compiled artifact of `digest` for an engine with `engine_hash`.
    pub fn artifact_path(&self, digest: &Digest, engine_hash: &str) -> PathBuf {
        self.root.join("artifacts").join(format!("{}-{engine_hash}.cwasm", digest.hex()))
    }

    /// Writes a compiled artifact atomically, so a concurrent reader never sees half.
    pub fn put_artifact(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        write_atomically(path, bytes)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}-{:?}", std::process::id(), std::thread::current().id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_are_stored_once_under_their_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let a = store.put(b"component bytes").expect("put");
        let b = store.put(b"component bytes").expect("put");
        assert_eq!(a, b);
        assert_eq!(store.get(&a).expect("get"), b"component bytes");
        assert_eq!(Digest::parse(&a.to_string()), Some(a));
        assert_eq!(std::fs::read_dir(dir.path().join("components")).expect("dir").count(), 1);
    }

    #[test]
    fn a_corrupted_component_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let d = store.put(b"original").expect("put");
        std::fs::write(store.component_path(&d), b"tampered").expect("write");
        assert!(store.get(&d).is_err());
    }
}
