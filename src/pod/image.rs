//! Docker image references, read with Docker's own grammar and normalisation (the
//! `distribution/reference` package that Docker, containerd and the kubelet use), so that
//! `allowedRunnerImageHosts` means the registry the node will really pull from, and a reference
//! the node would refuse (`InvalidImageName`) is refused before a Pod exists.
//!
//! ```text
//! reference := name [ ":" tag ] [ "@" digest ]
//! name      := [ host [ ":" port ] "/" ] component ( "/" component )*     (at most 255 bytes)
//! component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! host      := label ( "." label )* | "[" IPv6 "]"        label := [A-Za-z0-9] ( [A-Za-z0-9-]* [A-Za-z0-9] )?
//! tag       := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest    := sha256 ":" 64 hex | sha384 ":" 96 hex | sha512 ":" 128 hex      (lowercase hex)
//! ```
//!
//! The first component is a host only if it contains a `.` or a `:`, is `localhost`, or has
//! an uppercase letter; otherwise the image is on Docker Hub (`docker.io`, where a one-component
//! name gets `library/`). `index.docker.io` is Docker Hub too.

use std::fmt;

use thiserror::Error;

/// The registry of images named without a host (`ubuntu`, `someone/image:1`).
pub const DOCKER_HUB: &str = "docker.io";

/// The longest name (`host/repository`, normalised) Docker accepts.
pub const MAX_NAME_BYTES: usize = 255;

/// A parsed image reference such as `registry.example.com:5000/team/runner:1.2@sha256:...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// The registry host, with its port if any, as written; `docker.io` when the reference
    /// names none. Compare it with [`ImageReference::host_is_allowed`] (case-insensitive).
    pub host: String,
    /// The repository path, `library/` prefixed for official Docker Hub images.
    pub repository: String,
    /// The tag, if any.
    pub tag: Option<String>,
    /// The digest (`sha256:...`), if any.
    pub digest: Option<String>,
}

/// Why an image reference cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("the image reference is empty")]
    Empty,
    #[error("image {image:?} is not a valid reference: {reason}")]
    Invalid { image: String, reason: &'static str },
}

impl ImageReference {
    /// Parses a reference with Docker's rules (see the module documentation).
    pub fn parse(image: &str) -> Result<Self, ImageError> {
        if image.is_empty() {
            return Err(ImageError::Empty);
        }
        let invalid = |reason| ImageError::Invalid {
            image: image.to_string(),
            reason,
        };
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("it contains whitespace"));
        }
        if image.len() == 64 && image.bytes().all(is_lower_hex) {
            return Err(invalid(
                "a 64-character hexadecimal string is an image ID, not a reference",
            ));
        }
        let (name_and_tag, digest) = match image.split_once('@') {
            Some((rest, digest)) => {
                if !is_digest(digest) {
                    return Err(invalid(
                        "the digest must be sha256: and 64 lowercase hex digits (or sha384: 96, sha512: 128)",
                    ));
                }
                (rest, Some(digest.to_string()))
            }
            None => (image, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                let tag = &name_and_tag[at + 1..];
                if tag.is_empty() {
                    return Err(invalid("the tag after ':' is empty"));
                }
                if !is_tag(tag) {
                    return Err(invalid(
                        "a tag is 1-128 letters, digits, '_', '.' or '-', and starts with a letter, digit or '_'",
                    ));
                }
                (&name_and_tag[..at], Some(tag.to_string()))
            }
            None => (name_and_tag, None),
        };
        let (host, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, rest.to_string())
            }
            _ => (DOCKER_HUB, name.to_string()),
        };
        let host = if host == "index.docker.io" {
            DOCKER_HUB
        } else {
            host
        };
        if !is_host_and_port(host) {
            return Err(invalid(
                "the registry host is not a host name or [IPv6 address], with an optional :port",
            ));
        }
        if repository.is_empty() || repository.split('/').any(str::is_empty) {
            return Err(invalid("the repository path has an empty component"));
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase"));
        }
        if !repository.split('/').all(is_path_component) {
            return Err(invalid(
                "each part of the repository path is lowercase letters and digits, separated by '.', '_', '__' or dashes",
            ));
        }
        let repository = if host == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if host.len() + 1 + repository.len() > MAX_NAME_BYTES {
            return Err(invalid("the name is longer than 255 characters"));
        }
        Ok(Self {
            host: host.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// Whether the image's registry is in `allowed`. An empty list allows every registry.
    /// Hosts compare without regard to case; `index.docker.io` and `registry-1.docker.io` (the
    /// address Docker Hub is pulled from) count as `docker.io`.
    pub fn host_is_allowed(&self, allowed: &[String]) -> bool {
        let canonical = |host: &str| {
            let host = host.trim().to_ascii_lowercase();
            match host.as_str() {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
                _ => host,
            }
        };
        let host = canonical(&self.host);
        allowed.is_empty() || allowed.iter().any(|entry| canonical(entry) == host)
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_lower_alphanumeric(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && is_lower_alphanumeric(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let separator = i;
        while i < bytes.len() && !is_lower_alphanumeric(bytes[i]) {
            i += 1;
        }
        match &component[separator..i] {
            "." | "_" | "__" => {}
            dashes if dashes.bytes().all(|b| b == b'-') => {}
            _ => return false,
        }
    }
}

/// `host [":" port]`: DNS labels joined by dots, or a bracketed IPv6 address.
fn is_host_and_port(host_and_port: &str) -> bool {
    let (host_ok, rest) = if let Some(v6) = host_and_port.strip_prefix('[') {
        let Some((address, rest)) = v6.split_once(']') else {
            return false;
        };
        let address_ok =
            !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (address_ok, rest)
    } else {
        let (host, rest) = match host_and_port.find(':') {
            Some(i) => host_and_port.split_at(i),
            None => (host_and_port, ""),
        };
        (host.split('.').all(is_dns_label), rest)
    };
    let port_ok = rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|port| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// `[A-Za-z0-9] ( [A-Za-z0-9-]* [A-Za-z0-9] )?`
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|b| word(*b) || *b == b'.' || *b == b'-')
}

/// A digest the kubelet can pull by: a known algorithm and its length of lowercase hex.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length && hex.bytes().all(is_lower_hex)
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parsed(image: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageReference::parse(image).expect(image);
        (r.host, r.repository, r.tag, r.digest)
    }

    #[test]
    fn references_normalise_like_docker() {
        let s = |v: &str| v.to_string();
        let pinned = format!("Registry.Example.com:443/team/runner:v1@sha256:{HEX}");
        let redis = format!("redis@sha256:{HEX}");
        let cases = [
            ("ubuntu", (s("docker.io"), s("library/ubuntu"), None, None)),
            (
                "someone/non-existent-image:1234",
                (
                    s("docker.io"),
                    s("someone/non-existent-image"),
                    Some(s("1234")),
                    None,
                ),
            ),
            (
                "public.ecr.aws/spacelift/runner-terraform:latest",
                (
                    s("public.ecr.aws"),
                    s("spacelift/runner-terraform"),
                    Some(s("latest")),
                    None,
                ),
            ),
            (
                "localhost:5000/runner",
                (s("localhost:5000"), s("runner"), None, None),
            ),
            (
                "localhost/runner",
                (s("localhost"), s("runner"), None, None),
            ),
            (
                pinned.as_str(),
                (
                    s("Registry.Example.com:443"),
                    s("team/runner"),
                    Some(s("v1")),
                    Some(format!("sha256:{HEX}")),
                ),
            ),
            (
                "index.docker.io/library/alpine",
                (s("docker.io"), s("library/alpine"), None, None),
            ),
            (
                redis.as_str(),
                (
                    s("docker.io"),
                    s("library/redis"),
                    None,
                    Some(format!("sha256:{HEX}")),
                ),
            ),
        ];
        for (image, want) in cases {
            assert_eq!(parsed(image), want, "{image}");
        }
    }

    #[test]
    fn bad_references_say_why() {
        assert_eq!(ImageReference::parse(""), Err(ImageError::Empty));
        for (image, reason) in [
            ("ubuntu:", "the tag after ':' is empty"),
            ("team//runner", "the repository path has an empty component"),
            (
                "docker.io/Team/Runner",
                "repository names must be lowercase",
            ),
            ("ubuntu latest", "it contains whitespace"),
            (
                "ubuntu@sha256:abc",
                "the digest must be sha256: and 64 lowercase hex digits (or sha384: 96, sha512: 128)",
            ),
            (
                "ubuntu:.hidden",
                "a tag is 1-128 letters, digits, '_', '.' or '-', and starts with a letter, digit or '_'",
            ),
            (
                "team/-runner",
                "each part of the repository path is lowercase letters and digits, separated by '.', '_', '__' or dashes",
            ),
            (
                "library/a:b:c",
                "each part of the repository path is lowercase letters and digits, separated by '.', '_', '__' or dashes",
            ),
            (
                "bad_host.example:5000/runner",
                "the registry host is not a host name or [IPv6 address], with an optional :port",
            ),
            (
                HEX,
                "a 64-character hexadecimal string is an image ID, not a reference",
            ),
        ] {
            let err = ImageReference::parse(image).unwrap_err();
            assert_eq!(
                err,
                ImageError::Invalid {
                    image: image.to_string(),
                    reason
                }
            );
        }
    }

    #[test]
    fn allowed_hosts_follow_docker_hub_and_port_rules() {
        let allowed = vec!["docker.io".to_string(), "some.private.registry".to_string()];
        let allows = |image: &str| {
            ImageReference::parse(image)
                .unwrap()
                .host_is_allowed(&allowed)
        };
        assert!(allows("ubuntu"));
        assert!(allows("index.docker.io/library/ubuntu:22.04"));
        assert!(allows("SOME.private.registry/runner"));
        assert!(!allows("some.private.registry:5000/runner"));
        assert!(!allows("public.ecr.aws/spacelift/runner"));
        assert!(
            ImageReference::parse("anything.example/x")
                .unwrap()
                .host_is_allowed(&[])
        );
    }
}
