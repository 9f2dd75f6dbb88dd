//! Packs the workspace as tar.gz for the next stage: files, directories and symlinks (stored
//! as symlinks, never followed), in name order, without the launcher's own top-level files.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::digest::HashingWriter;

#[derive(Debug, Error)]
pub enum PackError {
    #[error(
        "the workspace is larger than {limit} bytes packed: remove what the next stage does not need (or raise the cap)"
    )]
    TooLarge { limit: u64 },
    #[error("{} cannot be packed", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the packed workspace cannot be written to {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A packed workspace.
#[derive(Debug, PartialEq, Eq)]
pub struct Packed {
    pub sha256: String,
    pub size: u64,
    /// Entries skipped because tar cannot carry them (sockets, FIFOs).
    pub skipped: Vec<PathBuf>,
}

/// Packs `root` (minus the top-level names in `exclude`) into a new file `out`, at most
/// `limit` bytes.
pub fn pack(root: &Path, exclude: &[&str], out: &Path, limit: u64) -> Result<Packed, PackError> {
    let write_error = |source| PackError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = fs::File::create(out).map_err(write_error)?;
    let hashing = HashingWriter::new(io::BufWriter::new(file), limit);
    let encoder = flate2::write::GzEncoder::new(hashing, flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let mut skipped = Vec::new();
    let walked = walk(&mut builder, root, Path::new(""), exclude, &mut skipped)
        .and_then(|()| builder.finish().map_err(write_error));
    // A write refused for the cap surfaces as whatever error tar or gzip wraps it in: ask
    // the writer itself.
    if builder.get_ref().get_ref().exceeded() {
        return Err(PackError::TooLarge { limit });
    }
    walked?;
    let mut encoder = builder.into_inner().map_err(write_error)?;
    let tried = encoder.try_finish();
    if encoder.get_ref().exceeded() {
        return Err(PackError::TooLarge { limit });
    }
    tried.map_err(write_error)?;
    let (buffered, sha256, size) = encoder.finish().map_err(write_error)?.finish();
    let file = buffered
        .into_inner()
        .map_err(|err| write_error(err.into_error()))?;
    file.sync_all().map_err(write_error)?;
    Ok(Packed {
        sha256,
        size,
        skipped,
    })
}

fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    exclude: &[&str],
    skipped: &mut Vec<PathBuf>,
) -> Result<(), PackError> {
    let dir = root.join(rel);
    let read_error = |path: &Path, source| PackError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut names = fs::read_dir(&dir)
        .map_err(|source| read_error(&dir, source))?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| read_error(&dir, source))?;
    names.sort();
    for name in names {
        if rel.as_os_str().is_empty() && exclude.iter().any(|e| name == **e) {
            continue;
        }
        let entry_rel = rel.join(&name);
        let path = root.join(&entry_rel);
        let meta = fs::symlink_metadata(&path).map_err(|source| read_error(&path, source))?;
        let kind = meta.file_type();
        if !(kind.is_dir() || kind.is_file() || kind.is_symlink()) {
            skipped.push(entry_rel);
            continue;
        }
        builder
            .append_path_with_name(&path, &entry_rel)
            .map_err(|source| read_error(&path, source))?;
        if kind.is_dir() {
            walk(builder, root, &entry_rel, exclude, skipped)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::unpack::{Limits, unpack};

    #[test]
    fn a_packed_workspace_unpacks_to_the_same_tree_without_the_excluded_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("workspace");
        fs::create_dir_all(root.join("source/.terraform")).unwrap();
        fs::create_dir_all(root.join(".spacelift")).unwrap();
        fs::write(root.join("job.json"), "{}").unwrap();
        fs::write(root.join(".spacelift/partial"), "x").unwrap();
        fs::write(root.join("source/main.tf"), "terraform {}").unwrap();
        fs::write(root.join("source/spacelift.plan"), "plan").unwrap();
        std::os::unix::fs::symlink("../main.tf", root.join("source/.terraform/link")).unwrap();
        let out = dir.path().join("ws.tar.gz");
        let packed = pack(&root, &["job.json", ".spacelift"], &out, 1 << 20).unwrap();
        assert_eq!(
            (packed.sha256.clone(), packed.size),
            crate::digest::sha256_file(&out).unwrap()
        );
        let back = dir.path().join("back");
        unpack(fs::File::open(&out).unwrap(), &back, Limits::WORKSPACE).unwrap();
        assert_eq!(
            fs::read_to_string(back.join("source/spacelift.plan")).unwrap(),
            "plan"
        );
        assert_eq!(
            fs::read_link(back.join("source/.terraform/link")).unwrap(),
            PathBuf::from("../main.tf")
        );
        assert!(!back.join("job.json").exists());
        assert!(!back.join(".spacelift").exists());
    }

    #[test]
    fn a_workspace_over_the_cap_is_refused_with_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("workspace");
        fs::create_dir_all(&root).unwrap();
        // Noise (xorshift) does not compress.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        fs::write(root.join("noise"), noise).unwrap();
        let err = pack(&root, &[], &dir.path().join("ws.tar.gz"), 10_000).unwrap_err();
        assert!(
            matches!(err, PackError::TooLarge { limit: 10_000 }),
            "{err}"
        );
        assert!(err.to_string().contains("larger than 10000 bytes packed"));
    }
}
