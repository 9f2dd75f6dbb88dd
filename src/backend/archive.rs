//! Stack sources as gzipped tarballs: packing a directory (the CLI) and checking an uploaded
//! archive (the API), so a bad source is refused when it is uploaded, with the entry named,
//! rather than when a run's `init` unpacks it.
//!
//! A packed directory is deterministic (entries sorted, times, owners and modes normalised),
//! so uploading the same tree twice yields the same digest and the same blob.

use std::io::Read as _;
use std::path::{Component, Path};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Directories never packed: VCS metadata and OpenTofu's local working data (providers,
/// backend configuration), which `tofu init` recreates in the run Pod.
pub const SKIPPED_DIRS: [&str; 3] = [".git", ".terraform", ".terragrunt-cache"];
/// The most a source may hold unpacked.
pub const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;
/// The most entries a source may hold.
pub const MAX_ENTRIES: usize = 100_000;

/// Why a source is refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the source is not a gzipped tarball: {0}")]
    NotTarGz(#[source] std::io::Error),
    #[error("entry {entry:?}: {problem}")]
    Entry { entry: String, problem: String },
    #[error("the source unpacks to more than {MAX_UNPACKED_BYTES} bytes")]
    TooLarge,
    #[error("the source holds more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("the source holds no file")]
    Empty,
}

fn read_error(path: &Path, source: std::io::Error) -> ArchiveError {
    ArchiveError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Packs the files under `dir` into a gzipped tarball (paths relative to `dir`). Symbolic
/// links are kept as links; other special files are skipped.
pub fn pack_directory(dir: &Path) -> Result<Vec<u8>, ArchiveError> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut pending = vec![std::path::PathBuf::new()];
    let mut files = 0usize;
    while let Some(relative) = pending.pop() {
        let absolute = dir.join(&relative);
        let mut entries = std::fs::read_dir(&absolute)
            .map_err(|err| read_error(&absolute, err))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| read_error(&absolute, err))?;
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = relative.join(entry.file_name());
            let path = entry.path();
            let kind = entry.file_type().map_err(|err| read_error(&path, err))?;
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            if kind.is_dir() {
                if SKIPPED_DIRS.iter().any(|s| entry.file_name() == *s) {
                    continue;
                }
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, &name, std::io::empty())
                    .map_err(|err| read_error(&path, err))?;
                subdirs.push(name);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|err| read_error(&path, err))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, &name, &target)
                    .map_err(|err| read_error(&path, err))?;
            } else if kind.is_file() {
                use std::os::unix::fs::PermissionsExt as _;
                let metadata = entry.metadata().map_err(|err| read_error(&path, err))?;
                let executable = metadata.permissions().mode() & 0o111 != 0;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if executable { 0o755 } else { 0o644 });
                header.set_size(metadata.len());
                let file = std::fs::File::open(&path).map_err(|err| read_error(&path, err))?;
                builder
                    .append_data(&mut header, &name, file)
                    .map_err(|err| read_error(&path, err))?;
                files += 1;
            }
        }
        // Depth-first in name order: reverse so the first name is popped first.
        pending.extend(subdirs.into_iter().rev());
    }
    if files == 0 {
        return Err(ArchiveError::Empty);
    }
    let encoder = builder.into_inner().map_err(|err| read_error(dir, err))?;
    encoder.finish().map_err(|err| read_error(dir, err))
}

/// What an uploaded source holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSummary {
    pub files: usize,
    pub unpacked_bytes: u64,
}

/// Checks an uploaded source: a gzipped tarball whose entries are regular files,
/// directories or links, at relative paths that stay inside the archive, within the caps.
pub fn check_source(tar_gz: &[u8]) -> Result<SourceSummary, ArchiveError> {
    let mut archive = tar::Archive::new(GzDecoder::new(tar_gz));
    let mut summary = SourceSummary {
        files: 0,
        unpacked_bytes: 0,
    };
    let mut count = 0usize;
    for entry in archive.entries().map_err(ArchiveError::NotTarGz)? {
        let mut entry = entry.map_err(ArchiveError::NotTarGz)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ArchiveError::TooManyEntries);
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let problem = |problem: &str| ArchiveError::Entry {
            entry: name.clone(),
            problem: problem.to_string(),
        };
        let path = entry
            .path()
            .map_err(|_| problem("the path is not valid"))?
            .into_owned();
        if !stays_inside(&path) {
            return Err(problem(
                "the path must be relative and must not climb out with '..'",
            ));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                summary.files += 1;
                summary.unpacked_bytes += size;
                if summary.unpacked_bytes > MAX_UNPACKED_BYTES {
                    return Err(ArchiveError::TooLarge);
                }
                // Reading the data checks the gzip stream to its end.
                std::io::copy(&mut (&mut entry).take(size), &mut std::io::sink())
                    .map_err(ArchiveError::NotTarGz)?;
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|_| problem("the link target is not valid"))?
                    .ok_or_else(|| problem("the link has no target"))?
                    .into_owned();
                let resolved = path.parent().unwrap_or(Path::new("")).join(&target);
                if !stays_inside(&resolved) {
                    return Err(problem("the link points outside the source"));
                }
            }
            // Extended headers carry long names and are folded in by the reader.
            tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {}
            other => {
                return Err(problem(&format!(
                    "entries of type {other:?} are not allowed in a source (files, directories and links only)"
                )));
            }
        }
    }
    if summary.files == 0 {
        return Err(ArchiveError::Empty);
    }
    Ok(summary)
}

/// Whether a relative path stays inside its root, `..` counted against the depth so far.
fn stays_inside(path: &Path) -> bool {
    let mut depth = 0i64;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                header.set_size(0);
                builder.append_link(&mut header, name, data).unwrap();
            } else {
                header.set_size(data.len() as u64);
                // set_path refuses '..'; write the raw name the way a hostile archive would.
                let bytes = name.as_bytes();
                header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
                header.set_cksum();
                builder.append(&header, data.as_bytes()).unwrap();
            }
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_packed_directory_is_deterministic_and_skips_local_tool_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("main.tf"), "resource \"x\" \"y\" {}\n").unwrap();
        std::fs::create_dir_all(dir.path().join("modules/a")).unwrap();
        std::fs::write(dir.path().join("modules/a/a.tf"), "").unwrap();
        std::fs::create_dir_all(dir.path().join(".terraform/providers")).unwrap();
        std::fs::write(dir.path().join(".terraform/providers/big"), "x").unwrap();
        let first = pack_directory(dir.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.path().join("main.tf"), "resource \"x\" \"y\" {}\n").unwrap();
        assert_eq!(
            pack_directory(dir.path()).unwrap(),
            first,
            "same tree, same bytes"
        );

        let mut names = Vec::new();
        let mut archive = tar::Archive::new(GzDecoder::new(&first[..]));
        for entry in archive.entries().unwrap() {
            names.push(entry.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["main.tf", "modules", "modules/a", "modules/a/a.tf"]);
        assert_eq!(
            check_source(&first).unwrap(),
            SourceSummary {
                files: 2,
                unpacked_bytes: 20
            }
        );
    }

    #[test]
    fn a_source_that_escapes_or_is_not_a_tarball_is_refused_naming_the_entry() {
        use tar::EntryType::*;
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not gzip".to_vec(), "not a gzipped tarball"),
            (
                tar_gz(&[("../evil.tf", Regular, "x")]),
                "entry \"../evil.tf\"",
            ),
            (tar_gz(&[("/etc/x", Regular, "x")]), "must be relative"),
            (
                tar_gz(&[("ok.tf", Regular, "x"), ("l", Symlink, "../../etc")]),
                "points outside",
            ),
            (tar_gz(&[("dev", Char, "")]), "not allowed"),
            (tar_gz(&[("d", Directory, "")]), "holds no file"),
        ];
        for (bytes, expected) in cases {
            let err = check_source(&bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let fine = tar_gz(&[("a/../b.tf", Regular, "x"), ("a/l", Symlink, "../b.tf")]);
        assert_eq!(check_source(&fine).unwrap().files, 1);
    }
}
