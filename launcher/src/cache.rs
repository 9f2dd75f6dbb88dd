//! The binaries cache: `<cache>/<name>/<version>/<name>`, kept across runs when
//! `binariesCacheVolume` is persistent and possibly shared by several Pods at once.
//!
//! A file counts as cached only when its SHA-256 and size are the job's. A miss downloads to a
//! temporary file in the same directory, checks it, makes it executable and renames it into
//! place: a rename is atomic, so a Pod reading the cache sees the old file or the new one,
//! never half of either, and two Pods installing at once both end up with the same bytes.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use launcher_api::{Tool, ToolCache};
use thiserror::Error;

use crate::digest::sha256_file;

#[derive(Debug, Error)]
pub enum CacheError {
    #[error(
        "the job's tool {field} {value:?} is not a plain name (letters, digits, '.', '_', '+', '-'; not starting with '.')"
    )]
    BadName { field: &'static str, value: String },
    #[error("the binaries cache at {} cannot be used", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where one tool version lives in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub path: PathBuf,
    sha256: String,
    size: u64,
}

impl Slot {
    pub fn new(cache: &Path, tool: &Tool) -> Result<Self, CacheError> {
        check_name("name", &tool.name)?;
        check_name("version", &tool.version)?;
        Ok(Self {
            path: cache.join(&tool.name).join(&tool.version).join(&tool.name),
            sha256: tool.sha256.clone(),
            size: tool.size,
        })
    }

    /// Whether the cache holds exactly this tool.
    pub fn lookup(&self) -> Result<ToolCache, CacheError> {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.is_file() && meta.len() == self.size => {}
            Ok(_) => return Ok(ToolCache::Miss),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(ToolCache::Miss),
            Err(source) => return Err(self.io_error(source)),
        }
        let (sha256, size) = sha256_file(&self.path).map_err(|source| self.io_error(source))?;
        Ok(if sha256 == self.sha256 && size == self.size {
            ToolCache::Hit
        } else {
            ToolCache::Miss
        })
    }

    /// A new temporary file beside the slot, for the download.
    pub fn temporary(&self) -> Result<PathBuf, CacheError> {
        let dir = self.dir();
        fs::create_dir_all(dir).map_err(|source| self.io_error(source))?;
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        Ok(dir.join(format!(
            ".{name}.{}.{:016x}.partial",
            std::process::id(),
            rand::random::<u64>()
        )))
    }

    /// Puts a checked download in place, executable.
    pub fn commit(&self, temporary: &Path) -> Result<(), CacheError> {
        let result = fs::set_permissions(temporary, fs::Permissions::from_mode(0o755))
            .and_then(|()| fs::rename(temporary, &self.path));
        if result.is_err() {
            let _ = fs::remove_file(temporary);
        }
        result.map_err(|source| self.io_error(source))
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    fn io_error(&self, source: io::Error) -> CacheError {
        CacheError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), CacheError> {
    let plain = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'));
    if plain {
        Ok(())
    } else {
        Err(CacheError::BadName {
            field,
            value: value.to_string(),
        })
    }
}

/// Points `<binaries>/<name>` at `target` (replacing what was there).
pub fn link_into(binaries: &Path, name: &str, target: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(binaries)?;
    let link = binaries.join(name);
    match fs::remove_file(&link) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    std::os::unix::fs::symlink(target, &link)?;
    Ok(link)
}

/// Copies the running binary to `dest` as an executable, through a temporary file and a
/// rename so the worker never runs a half-copied file.
pub fn copy_self(dest: &Path) -> io::Result<()> {
    let me = std::env::current_exe()?;
    let dir = dest.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".spacelift-worker.{}.partial", std::process::id()));
    fs::copy(&me, &temporary)?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))?;
    fs::rename(&temporary, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::hex;
    use sha2::{Digest as _, Sha256};

    fn tool(content: &[u8]) -> Tool {
        Tool {
            name: "tofu".into(),
            version: "1.12.6".into(),
            sha256: hex(&Sha256::digest(content)),
            size: content.len() as u64,
        }
    }

    #[test]
    fn only_the_exact_binary_is_a_hit() {
        let cache = tempfile::tempdir().unwrap();
        let slot = Slot::new(cache.path(), &tool(b"binary v1")).unwrap();
        assert_eq!(slot.path, cache.path().join("tofu/1.12.6/tofu"));
        assert_eq!(slot.lookup().unwrap(), ToolCache::Miss);
        let temporary = slot.temporary().unwrap();
        fs::write(&temporary, b"binary v1").unwrap();
        slot.commit(&temporary).unwrap();
        assert_eq!(slot.lookup().unwrap(), ToolCache::Hit);
        let mode = fs::metadata(&slot.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Same size, other bytes: a damaged cache entry is a miss.
        fs::write(&slot.path, b"binary v2").unwrap();
        assert_eq!(slot.lookup().unwrap(), ToolCache::Miss);
    }

    #[test]
    fn two_pods_installing_at_once_both_end_with_the_right_file() {
        let cache = tempfile::tempdir().unwrap();
        let content = vec![7u8; 4 << 20];
        let slot = Slot::new(cache.path(), &tool(&content)).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    let temporary = slot.temporary().unwrap();
                    // Written in pieces, so the installs overlap.
                    let mut file = fs::File::create(&temporary).unwrap();
                    for piece in content.chunks(64 * 1024) {
                        io::Write::write_all(&mut file, piece).unwrap();
                    }
                    slot.commit(&temporary).unwrap();
                    // Whoever renamed last, what is in place is whole.
                    assert_eq!(slot.lookup().unwrap(), ToolCache::Hit);
                });
            }
        });
        let left: Vec<_> = fs::read_dir(slot.path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("tofu")]);
    }

    #[test]
    fn tool_names_cannot_leave_the_cache() {
        for (name, version) in [("../x", "1"), ("tofu", ".."), ("a/b", "1"), ("", "1")] {
            let mut t = tool(b"");
            t.name = name.into();
            t.version = version.into();
            assert!(matches!(
                Slot::new(Path::new("/c"), &t),
                Err(CacheError::BadName { .. })
            ));
        }
    }
}
