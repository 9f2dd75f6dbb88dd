//! What the operator and a policy evaluator child say to each other over the child's stdin and
//! stdout: frames of a 4-byte little-endian length and that many bytes. A request is a JSON
//! [`Request`] frame, followed for an evaluation by a frame with the input document; every
//! request gets one JSON [`Response`] frame.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::{PolicyError, PolicyEvalError, RegoVersion};

/// The largest frame the child reads: a policy's text (at most a ConfigMap, 1 MiB) or an input
/// document (a Pod and a pool spec, each at most an etcd object).
pub const MAX_REQUEST_FRAME: usize = 16 << 20;
/// The largest answer the parent reads. A decision's messages are capped by the child first
/// ([`crate::protocol::limits`]), so only a broken child comes near it.
pub const MAX_RESPONSE_FRAME: usize = 1 << 20;

/// A policy as the child knows it: by the digest of its text and syntax.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    pub digest: String,
    pub name: String,
    pub file: String,
    pub version: RegoVersion,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Request {
    /// Compile `text` and keep it for evaluations.
    Compile {
        policy: PolicyRef,
        text: String,
        memory_limit_bytes: u64,
    },
    /// Evaluate the policy over the input frame that follows. `text` is sent when the child may
    /// not have the policy (it answers [`Response::UnknownPolicy`] when it has not).
    Evaluate {
        policy: PolicyRef,
        text: Option<String>,
        timeout_millis: u64,
        memory_limit_bytes: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Response {
    /// Sent once by a child that has started, before any request.
    Ready,
    Compiled {
        version: RegoVersion,
        has_deny: bool,
    },
    NotCompiled(PolicyError),
    /// `deny`'s messages (empty: allowed), capped in count and length.
    Decided(Vec<String>),
    Failed(PolicyEvalError),
    UnknownPolicy,
    /// Written by the child's allocator just before it exits with [`EXIT_MEMORY`].
    MemoryExceeded {
        requested: u64,
        used: u64,
    },
}

/// The child's exit status when an allocation would have gone over its budget.
pub const EXIT_MEMORY: i32 = 86;

/// Writes one frame.
pub fn write_frame(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)?;
    out.flush()
}

/// Reads one frame; `None` at a clean end of the stream.
pub fn read_frame(input: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes, more than the {max} allowed"),
        ));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

/// The [`Response::MemoryExceeded`] frame, written into `buf` without allocating (the
/// allocator calls this while refusing an allocation). Returns the frame's length.
pub fn memory_exceeded_frame(buf: &mut [u8; 128], requested: u64, used: u64) -> usize {
    let mut body = [0u8; 120];
    let mut cursor = io::Cursor::new(&mut body[..]);
    let written = write!(
        cursor,
        r#"{{"memoryExceeded":{{"requested":{requested},"used":{used}}}}}"#
    );
    let len = if written.is_ok() {
        cursor.position() as usize
    } else {
        0
    };
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[4..4 + len].copy_from_slice(&body[..len]);
    4 + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocators_frame_is_a_memory_exceeded_response() {
        let mut buf = [0u8; 128];
        let len = memory_exceeded_frame(&mut buf, u64::MAX, 1 << 25);
        let frame = read_frame(&mut &buf[..len], 128).unwrap().unwrap();
        let response: Response = serde_json::from_slice(&frame).unwrap();
        assert!(
            matches!(
                response,
                Response::MemoryExceeded { requested: u64::MAX, used } if used == 1 << 25
            ),
            "{response:?}"
        );
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_read() {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, &[7u8; 100]).unwrap();
        let err = read_frame(&mut bytes.as_slice(), 99).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a frame of 100 bytes, more than the 99 allowed"
        );
        assert_eq!(read_frame(&mut &[][..], 99).unwrap(), None);
    }
}
