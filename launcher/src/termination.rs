//! The termination message: one file Kubernetes reads when a container ends (its
//! terminationMessagePath, `/dev/termination-log` by default) and puts into the container's
//! status, where the operator finds it for `run.finished`.

use std::path::Path;

/// Kubernetes keeps at most 4096 bytes of it.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Writes `message` (cut to what Kubernetes keeps). Best effort: a container without the file
/// (a test, another runtime) still ends with its exit code.
pub fn write(path: &Path, message: &str) {
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    if let Err(err) = std::fs::write(path, &message[..end]) {
        crate::note(&format!(
            "the termination message cannot be written to {}: {err}",
            path.display()
        ));
    }
}
