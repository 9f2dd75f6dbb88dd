use super::*;

/// One entry of a hand-made archive. Headers are written raw, so an archive can hold what a
/// well-behaved tar writer refuses to make (`..`, absolute paths, devices).
struct Entry<'a> {
    path: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
    mode: u32,
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        path,
        kind: tar::EntryType::Regular,
        link: "",
        data,
        mode: 0o644,
    }
}

fn dir(path: &str) -> Entry<'_> {
    Entry {
        path,
        kind: tar::EntryType::Directory,
        link: "",
        data: b"",
        mode: 0o755,
    }
}

fn link<'a>(kind: tar::EntryType, path: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        path,
        kind,
        link: target,
        data: b"",
        mode: 0o777,
    }
}

fn symlink<'a>(path: &'a str, target: &'a str) -> Entry<'a> {
    link(tar::EntryType::Symlink, path, target)
}

fn tar_gz(entries: &[Entry<'_>]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for entry in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        header.as_old_mut().linkname[..entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header.set_entry_type(entry.kind);
        header.set_mode(entry.mode);
        header.set_size(entry.data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A workspace inside a parent directory holding a file the archive must never reach.
struct Place {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn place() -> Place {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("secret");
    fs::write(&outside, "untouched").unwrap();
    Place {
        root: dir.path().join("workspace"),
        outside,
        _dir: dir,
    }
}

fn unpack_into(place: &Place, entries: &[Entry<'_>]) -> Result<Unpacked, UnpackError> {
    unpack(&tar_gz(entries)[..], &place.root, Limits::WORKSPACE)
}

fn refused(entries: &[Entry<'_>], why: &str) {
    let place = place();
    let err = unpack_into(&place, entries).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Unsafe { why: w, .. } if w.contains(why)),
        "expected {why:?}, got {err}"
    );
    assert_eq!(fs::read_to_string(&place.outside).unwrap(), "untouched");
    let parent = place.outside.parent().unwrap();
    let names: Vec<_> = fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "something was written beside the workspace: {names:?}"
    );
}

#[test]
fn a_plain_archive_unpacks_with_its_modes_and_inside_symlinks() {
    let place = place();
    let mut tool = file("bin/tool", b"#!/bin/sh\n");
    tool.mode = 0o755;
    let done = unpack_into(
        &place,
        &[
            dir("./"),
            file("./main.tf", b"terraform {}\n"),
            dir("modules/net"),
            file("modules/net/main.tf", b"# net\n"),
            tool,
            symlink("current", "modules/net"),
            symlink("modules/net/up", "../../main.tf"),
            link(tar::EntryType::Link, "copy.tf", "main.tf"),
            file("main.tf", b"replaced\n"),
        ],
    )
    .unwrap();
    assert_eq!(done.entries, 9);
    let read = |p: &str| fs::read_to_string(place.root.join(p)).unwrap();
    assert_eq!(read("main.tf"), "replaced\n");
    // The hard link kept the first content: the later entry replaced the name, not the file.
    assert_eq!(read("copy.tf"), "terraform {}\n");
    assert_eq!(read("current/main.tf"), "# net\n");
    assert_eq!(read("modules/net/up"), "replaced\n");
    let mode = fs::metadata(place.root.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn parent_dirs_and_absolute_paths_are_refused() {
    for path in [
        "../secret",
        "a/../../secret",
        "/tmp/secret",
        "a/./../../secret",
    ] {
        refused(
            &[file(path, b"evil")],
            "absolute paths and .. are not allowed",
        );
    }
}

#[test]
fn symlinks_that_escape_are_refused() {
    refused(&[symlink("l", "../secret")], "points outside");
    refused(
        &[dir("d"), symlink("d/l", "../../secret")],
        "points outside",
    );
    refused(&[symlink("l", "/etc/passwd")], "is absolute");
    refused(&[dir("a"), symlink("l", "a/../..")], ".. after a name");
}

#[test]
fn nothing_is_unpacked_through_a_symlink() {
    // Inside targets are fine, but no entry may be written through one: `s -> .` then
    // `s/t -> ..` would otherwise point above the workspace.
    refused(
        &[symlink("s", "."), symlink("s/t", "..")],
        "not a directory",
    );
    refused(
        &[dir("d"), symlink("l", "d"), file("l/x", b"x")],
        "not a directory",
    );
    refused(&[symlink("l", "."), dir("l/sub")], "not a directory");
}

#[test]
fn hard_links_point_only_at_files_unpacked_before() {
    refused(
        &[link(tar::EntryType::Link, "h", "../secret")],
        "must point inside the archive",
    );
    refused(
        &[symlink("s", "x"), link(tar::EntryType::Link, "h", "s")],
        "regular file unpacked before it",
    );
    refused(
        &[link(tar::EntryType::Link, "h", "later")],
        "regular file unpacked before it",
    );
}

#[test]
fn a_directory_is_never_replaced() {
    refused(&[dir("d"), file("d", b"x")], "would replace a directory");
    refused(&[dir("d"), symlink("d", ".")], "would replace a directory");
}

#[test]
fn devices_and_fifos_are_refused() {
    for kind in [
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Fifo,
    ] {
        refused(&[link(kind, "dev", "")], "only files, directories");
    }
}

#[test]
fn size_and_entry_caps_hold() {
    let place = place();
    let big = vec![b'x'; 10_000];
    let limits = Limits {
        max_bytes: 9_999,
        max_entries: 10,
    };
    let err = unpack(&tar_gz(&[file("big", &big)])[..], &place.root, limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge(9_999)), "{err}");
    let many: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let entries: Vec<_> = many.iter().map(|n| file(n, b"")).collect();
    let err = unpack(&tar_gz(&entries)[..], &place.root, limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooManyEntries(10)), "{err}");
}

#[test]
fn the_decompressed_stream_is_capped_too() {
    // 8 MiB of zeros compress to a few KiB: the cap on the stream stops it, whatever the
    // headers say.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &vec![0; 8 << 20]).unwrap();
    let bomb = encoder.finish().unwrap();
    let mut capped = Capped {
        inner: flate2::read::GzDecoder::new(&bomb[..]),
        left: 1 << 20,
    };
    let err = io::copy(&mut capped, &mut io::sink()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
}

#[test]
fn something_that_is_not_a_tar_gz_is_a_read_error() {
    let place = place();
    let err = unpack(&b"plain text"[..], &place.root, Limits::WORKSPACE).unwrap_err();
    assert!(matches!(err, UnpackError::Read(_)), "{err}");
}
