//! SHA-256 of what the launcher downloads, caches and uploads, computed as the bytes stream
//! by, so nothing large is held in memory.

use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Hex SHA-256 and size of a file.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// Hex, lowercase.
pub fn hex(bytes: &[u8]) -> String {
    launcher_api::signature::hex(bytes)
}

/// A writer that hashes and counts what passes through it, and refuses to go past `limit`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: u64,
    exceeded: bool,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
            limit,
            exceeded: false,
        }
    }

    /// Whether a write was refused for going past the limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// The writer, the hex SHA-256 and the size of what was written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("over the size limit"));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_hashes_what_passed_and_stops_at_its_limit() {
        let mut writer = HashingWriter::new(Vec::new(), 5);
        writer.write_all(b"abc").unwrap();
        let err = writer.write_all(b"def").unwrap_err();
        assert_eq!(err.to_string(), "over the size limit");
        assert!(writer.exceeded());
        let (bytes, sha, size) = writer.finish();
        assert_eq!((bytes.as_slice(), size), (&b"abc"[..], 3));
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
