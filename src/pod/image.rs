//! Docker image references, read the way Docker and containerd normalise them, so that
//! `allowedRunnerImageHosts` means the registry the node will really pull from.

use std::fmt;

use thiserror::Error;

/// The registry of images named without a host (`ubuntu`, `someone/image:1`).
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference such as `registry.example.com:5000/team/runner:1.2@sha256:...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// The registry host, with its port if any; `docker.io` when the reference names none.
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
    /// Parses a reference with Docker's rules: the first path component is a registry host only
    /// if it contains a `.` or a `:`, or is `localhost`; otherwise the image is on Docker Hub.
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
        let (name_and_tag, digest) = match image.split_once('@') {
            Some((rest, digest)) => {
                if !digest.contains(':') {
                    return Err(invalid("the digest must look like sha256:<hex>"));
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
                (&name_and_tag[..at], Some(tag.to_string()))
            }
            None => (name_and_tag, None),
        };
        let (host, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_ascii_lowercase(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let host = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => host,
        };
        if repository.is_empty() || repository.split('/').any(str::is_empty) {
            return Err(invalid("the repository path has an empty component"));
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("repository names must be lowercase"));
        }
        let repository = if host == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        Ok(Self {
            host,
            repository,
            tag,
            digest,
        })
    }

    /// Whether the image's registry is in `allowed`. An empty list allows every registry.
    /// Hosts compare without regard to case; `index.docker.io` counts as `docker.io`.
    pub fn host_is_allowed(&self, allowed: &[String]) -> bool {
        allowed.is_empty()
            || allowed.iter().any(|entry| {
                let entry = entry.trim().to_ascii_lowercase();
                let entry = match entry.as_str() {
                    "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
                    other => other,
                };
                entry == self.host
            })
    }
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

    fn parsed(image: &str) -> (String, String, Option<String>, Option<String>) {
        let r = ImageReference::parse(image).expect(image);
        (r.host, r.repository, r.tag, r.digest)
    }

    #[test]
    fn references_normalise_like_docker() {
        let s = |v: &str| v.to_string();
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
                "Registry.Example.com:443/team/runner:v1@sha256:abc",
                (
                    s("registry.example.com:443"),
                    s("team/runner"),
                    Some(s("v1")),
                    Some(s("sha256:abc")),
                ),
            ),
            (
                "index.docker.io/library/alpine",
                (s("docker.io"), s("library/alpine"), None, None),
            ),
            (
                "redis@sha256:0123",
                (
                    s("docker.io"),
                    s("library/redis"),
                    None,
                    Some(s("sha256:0123")),
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
            ("ubuntu@abc", "the digest must look like sha256:<hex>"),
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
