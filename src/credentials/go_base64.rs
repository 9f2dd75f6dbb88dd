//! Base64 decoding with the exact semantics of Go's `encoding/base64.StdEncoding`.
//!
//! The Go controller reports `illegal base64 data at input byte N`, and users search for that
//! message and that offset. Go's decoder skips `\r` and `\n` anywhere in the input, requires
//! padding, ignores non-zero trailing bits (StdEncoding is not strict), and reports the offset
//! in the *original* input (newlines included). This is a port of its `decodeQuantum` so the
//! offsets match byte for byte.

/// The position of the first byte Go would reject, as in Go's `CorruptInputError`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorruptInputError(pub usize);

const PAD: u8 = b'=';

fn decode_symbol(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn is_newline(byte: u8) -> bool {
    byte == b'\n' || byte == b'\r'
}

/// Decodes `src` as Go's `base64.StdEncoding.DecodeString` would.
pub fn decode(src: &[u8]) -> Result<Vec<u8>, CorruptInputError> {
    let mut out = Vec::with_capacity(src.len() / 4 * 3);
    let mut si = 0;
    while si < src.len() {
        let (next, done) = decode_quantum(src, si, &mut out)?;
        si = next;
        if done {
            break;
        }
    }
    Ok(out)
}

/// Decodes one 4-symbol quantum starting at `si`; returns the next index and whether the
/// input ended (padding or end of input reached).
fn decode_quantum(
    src: &[u8],
    mut si: usize,
    out: &mut Vec<u8>,
) -> Result<(usize, bool), CorruptInputError> {
    let mut dbuf = [0u8; 4];
    let mut dlen = 4;
    let mut j = 0;
    let mut done = false;
    while j < 4 {
        if si == src.len() {
            if j == 0 {
                return Ok((si, true));
            }
            // StdEncoding pads, so a short final quantum is always an error, reported at the
            // quantum's first symbol.
            return Err(CorruptInputError(si - j));
        }
        let byte = src[si];
        si += 1;
        if let Some(value) = decode_symbol(byte) {
            dbuf[j] = value;
            j += 1;
            continue;
        }
        if is_newline(byte) {
            continue;
        }
        if byte != PAD {
            return Err(CorruptInputError(si - 1));
        }
        // Padding: the quantum ends here.
        match j {
            0 | 1 => return Err(CorruptInputError(si - 1)),
            2 => {
                // "==" is expected; the first "=" is consumed already.
                while si < src.len() && is_newline(src[si]) {
                    si += 1;
                }
                if si == src.len() {
                    return Err(CorruptInputError(src.len()));
                }
                if src[si] != PAD {
                    return Err(CorruptInputError(si - 1));
                }
                si += 1;
            }
            _ => {}
        }
        while si < src.len() && is_newline(src[si]) {
            si += 1;
        }
        if si < src.len() {
            // Trailing garbage after the padding. Go still returns the bytes of this quantum
            // along with the error, but callers only see the error.
            return Err(CorruptInputError(si));
        }
        dlen = j;
        done = true;
        break;
    }
    let val = (u32::from(dbuf[0]) << 18)
        | (u32::from(dbuf[1]) << 12)
        | (u32::from(dbuf[2]) << 6)
        | u32::from(dbuf[3]);
    let bytes = [(val >> 16) as u8, (val >> 8) as u8, val as u8];
    // dlen symbols carry dlen - 1 bytes (4 -> 3, 3 -> 2, 2 -> 1).
    out.extend_from_slice(&bytes[..dlen - 1]);
    Ok((si, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values are what Go 1.22's `base64.StdEncoding.DecodeString` returns.
    #[test]
    fn decodes_like_go_std_encoding() {
        let cases: &[(&str, Result<&[u8], usize>)] = &[
            ("", Ok(b"")),
            ("YWJj", Ok(b"abc")),
            ("YWJjZA==", Ok(b"abcd")),
            ("YWJjZGU=", Ok(b"abcde")),
            ("YW\nJj\r\nZA==\n", Ok(b"abcd")),
            ("YWJjZA=\n=", Ok(b"abcd")),
            // A short final quantum is reported at its first symbol.
            ("YWJjZA", Err(4)),
            ("YWJjZGU", Err(4)),
            ("YWJjZ", Err(4)),
            ("A", Err(0)),
            // An illegal symbol is reported where it is.
            ("YWJj ZA==", Err(4)),
            ("-----BEGIN", Err(0)),
            // Go reports incorrect padding at the first "=".
            ("YWJj\nZA=!", Err(7)),
            // Padding in the wrong place.
            ("=", Err(0)),
            ("Y===", Err(1)),
            ("YW=", Err(3)),
            ("YW=a", Err(2)),
            // Data after the padding.
            ("YWJjZA==YWJj", Err(8)),
            ("YWJjZGU=\nx", Err(9)),
            // URL-safe symbols are not StdEncoding.
            ("YW_j", Err(2)),
        ];
        for (input, want) in cases {
            let got = decode(input.as_bytes());
            match want {
                Ok(bytes) => assert_eq!(got, Ok(bytes.to_vec()), "input {input:?}"),
                Err(offset) => assert_eq!(got, Err(CorruptInputError(*offset)), "input {input:?}"),
            }
        }
    }

    #[test]
    fn agrees_with_the_base64_crate_on_valid_input() {
        use base64::Engine as _;
        for len in 0..64 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
            assert_eq!(decode(encoded.as_bytes()), Ok(data));
        }
    }
}
