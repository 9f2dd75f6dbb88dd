//! Unpacks a tar.gz (the stack's source, an earlier stage's workspace) into a directory
//! without ever writing outside it.
//!
//! `init` holds the worker's key and mounts the binaries cache that other runs share, so an
//! archive must not reach anything but the workspace. The rules:
//! - entry paths are relative and have no `..`;
//! - nothing is written through a symlink: every parent of an entry must be a real directory,
//!   and an existing file or symlink in the way is removed, never opened;
//! - a directory is never replaced (so a symlink laid earlier keeps its real parents);
//! - a symlink's target is relative, made of leading `..` then names only, and its `..` do
//!   not climb above the directory it is unpacked into. With the rules above, following any
//!   chain of such symlinks stays inside;
//! - a hard link points at a regular file already unpacked;
//! - no devices, FIFOs or sparse files;
//! - caps on the unpacked bytes and the number of entries, and on the decompressed stream as
//!   a whole (long-name headers count too).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use thiserror::Error;

/// The caps of one unpack.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of file content.
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Limits {
    /// Room for a stack with its providers (`.terraform` can hold several hundred MiB).
    pub const WORKSPACE: Limits = Limits {
        max_bytes: 4 * 1024 * 1024 * 1024,
        max_entries: 200_000,
    };
}

/// Bytes of headers (long names, PAX records) allowed on top of the content.
const HEADER_ALLOWANCE: u64 = 64 * 1024 * 1024;
const MAX_PATH_LEN: usize = 4096;

#[derive(Debug, Error)]
pub enum UnpackError {
    #[error("entry {entry:?} is refused: {why}")]
    Unsafe { entry: String, why: String },
    #[error("more than {0} entries: the archive is refused")]
    TooManyEntries(u64),
    #[error("more than {0} bytes unpacked: the archive is refused")]
    TooLarge(u64),
    #[error("the archive is not a readable tar.gz")]
    Read(#[source] io::Error),
    #[error("{} cannot be written", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What an unpack laid down.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
}

/// Unpacks the tar.gz `archive` into `dest` (created if missing).
pub fn unpack(archive: impl Read, dest: &Path, limits: Limits) -> Result<Unpacked, UnpackError> {
    fs::create_dir_all(dest).map_err(|source| write_error(dest, source))?;
    let stream = Capped {
        inner: flate2::read::GzDecoder::new(archive),
        left: limits.max_bytes.saturating_add(HEADER_ALLOWANCE),
    };
    let mut tar = tar::Archive::new(stream);
    let read_error = |source: io::Error| match source.kind() {
        io::ErrorKind::FileTooLarge => UnpackError::TooLarge(limits.max_bytes),
        _ => UnpackError::Read(source),
    };
    // Copying an entry reads the archive and writes the file: say which failed.
    let copy_error = |target: &Path, source: io::Error| match source.kind() {
        io::ErrorKind::FileTooLarge
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::InvalidData
        | io::ErrorKind::InvalidInput => read_error(source),
        _ => write_error(target, source),
    };
    let mut done = Unpacked::default();
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(UnpackError::TooManyEntries(limits.max_entries));
        }
        let raw = entry.path().map_err(read_error)?.into_owned();
        let name = raw.display().to_string();
        let unsafe_entry = |why: &str| UnpackError::Unsafe {
            entry: name.clone(),
            why: why.to_string(),
        };
        if raw.as_os_str().len() > MAX_PATH_LEN {
            return Err(unsafe_entry("its path is longer than 4096 bytes"));
        }
        let rel =
            relative(&raw).ok_or_else(|| unsafe_entry("absolute paths and .. are not allowed"))?;
        if rel.as_os_str().is_empty() {
            continue; // `./`: the destination itself
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            real_dirs(dest, &rel, &name)?;
            continue;
        }
        real_dirs(dest, rel.parent().unwrap_or(Path::new("")), &name)?;
        clear_way(&target, &name)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let left = limits.max_bytes - done.bytes;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|source| write_error(&target, source))?;
                let copied = io::copy(&mut (&mut entry).take(left + 1), &mut file)
                    .map_err(|source| copy_error(&target, source))?;
                if copied > left {
                    return Err(UnpackError::TooLarge(limits.max_bytes));
                }
                done.bytes += copied;
                file.set_permissions(fs::Permissions::from_mode(mode | 0o600))
                    .map_err(|source| write_error(&target, source))?;
                if let Ok(mtime) = entry.header().mtime() {
                    // Best effort: tools compare times, nothing depends on it.
                    let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
                }
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(read_error)?
                    .ok_or_else(|| unsafe_entry("a symlink without a target"))?;
                check_symlink(&rel, &link).map_err(|why| unsafe_entry(&why))?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|source| write_error(&target, source))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(read_error)?
                    .ok_or_else(|| unsafe_entry("a hard link without a target"))?;
                let source_rel = relative(&link)
                    .filter(|p| !p.as_os_str().is_empty())
                    .ok_or_else(|| unsafe_entry("a hard link must point inside the archive"))?;
                let source = dest.join(&source_rel);
                let is_plain_file = has_real_parents(dest, &source_rel)
                    && fs::symlink_metadata(&source).is_ok_and(|m| m.file_type().is_file());
                if !is_plain_file {
                    return Err(unsafe_entry(
                        "a hard link must point at a regular file unpacked before it",
                    ));
                }
                fs::hard_link(&source, &target).map_err(|source| write_error(&target, source))?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            _ => {
                return Err(unsafe_entry(
                    "only files, directories, symlinks and hard links are allowed",
                ));
            }
        }
    }
    Ok(done)
}

/// The path with `.` dropped, or `None` when it is absolute or has `..`.
pub(crate) fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A symlink at `link` (relative to the destination) may point at `target` only when the
/// target is relative, is leading `..` then names, and its `..` stay inside.
fn check_symlink(link: &Path, target: &Path) -> Result<(), String> {
    if target.as_os_str().is_empty() {
        return Err("a symlink without a target".into());
    }
    let depth = link.components().count().saturating_sub(1);
    let mut ups = 0;
    let mut named = false;
    for component in target.components() {
        match component {
            Component::ParentDir if named => {
                return Err(format!(
                    "symlink target {} has .. after a name: write it as leading .. then names",
                    target.display()
                ));
            }
            Component::ParentDir => ups += 1,
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "symlink target {} is absolute: only relative targets inside the archive are allowed",
                    target.display()
                ));
            }
        }
    }
    if ups > depth {
        return Err(format!(
            "symlink target {} points outside the directory it is unpacked into",
            target.display()
        ));
    }
    Ok(())
}

/// Makes `rel`'s every prefix a directory under `root`, refusing symlinks and files in the way.
pub(crate) fn real_dirs(root: &Path, rel: &Path, entry: &str) -> Result<(), UnpackError> {
    let mut path = root.to_path_buf();
    for component in rel.components() {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Unsafe {
                    entry: entry.to_string(),
                    why: format!(
                        "{} is a file or a symlink, not a directory: nothing is unpacked through it",
                        path.strip_prefix(root).unwrap_or(&path).display()
                    ),
                });
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path).map_err(|source| write_error(&path, source))?;
            }
            Err(source) => return Err(write_error(&path, source)),
        }
    }
    Ok(())
}

/// Whether every parent of `rel` under `root` is a real directory.
fn has_real_parents(root: &Path, rel: &Path) -> bool {
    let mut path = root.to_path_buf();
    let parents = rel.parent().map(|p| p.components().count()).unwrap_or(0);
    rel.components().take(parents).all(|component| {
        path.push(component);
        fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
    })
}

/// Removes a file or symlink where an entry goes (a later entry replaces an earlier one, as
/// tar does); a directory there is refused.
fn clear_way(target: &Path, entry: &str) -> Result<(), UnpackError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err(UnpackError::Unsafe {
            entry: entry.to_string(),
            why: "it would replace a directory".into(),
        }),
        Ok(_) => fs::remove_file(target).map_err(|source| write_error(target, source)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(write_error(target, source)),
    }
}

fn write_error(path: &Path, source: io::Error) -> UnpackError {
    UnpackError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// The decompressed stream, cut off after a number of bytes (a gzip bomb of headers).
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "the decompressed archive is over its cap",
            ));
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
