//! Image references: the operator's parser (`src/pod/image.rs`, shared with the plugin SDK)
//! agrees with Docker's own grammar on any string (the regular expressions of
//! `distribution/reference`, copied here as the oracle), never panics, and every reference it
//! reads prints as one that reads back the same.

use std::sync::LazyLock;

use proptest::prelude::*;
use regex::Regex;
use workerpool_operator::pod::ImageReference;

use crate::config;

/// `distribution/reference`'s `ReferenceRegexp` (regexp.go), anchored, with the name, tag and
/// digest captured, and its `anchoredNameRegexp` splitting a name into domain and path.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let alphanumeric = "[a-z0-9]+";
    let separator = "(?:[._]|__|[-]+)";
    let path_component = format!("{alphanumeric}(?:{separator}{alphanumeric})*");
    let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let ipv6 = r"\[(?:[a-fA-F0-9:]+)\]";
    let domain_name = format!(r"{domain_component}(?:\.{domain_component})*");
    let host = format!("(?:{domain_name}|{ipv6})");
    let domain_and_port = format!("{host}(?::[0-9]+)?");
    let name = format!("(?:{domain_and_port}/)?{path_component}(?:/{path_component})*");
    // Go's `\w` is ASCII only.
    let tag = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}";
    Regex::new(&format!("^({name})(?::({tag}))?(?:@({digest}))?$")).expect("reference regexp")
});

static NAME: LazyLock<Regex> = LazyLock::new(|| {
    let path = "[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
    let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let host = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[(?:[a-fA-F0-9:]+)\])");
    Regex::new(&format!("^(?:({host}(?::[0-9]+)?)/)?({path}(?:/{path})*)$")).expect("name regexp")
});

/// What Docker makes of `image` (`ParseNormalizedNamed`, then go-digest's `Parse`):
/// `(domain, path, tag, digest)`, or `None` where Docker refuses it.
fn docker(image: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    if image.len() == 64
        && image
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    // splitDockerDomain
    let (mut domain, mut remainder) = match image.find('/') {
        Some(i)
            if image[..i].contains(['.', ':'])
                || &image[..i] == "localhost"
                || image[..i].to_lowercase() != image[..i] =>
        {
            (image[..i].to_string(), image[i + 1..].to_string())
        }
        _ => ("docker.io".to_string(), image.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    let remote = remainder.split(':').next().unwrap_or_default();
    if remote.to_lowercase() != remote {
        return None;
    }
    let full = format!("{domain}/{remainder}");
    let captures = REFERENCE.captures(&full)?;
    let name = captures.get(1)?.as_str();
    if name.len() > 255 {
        return None;
    }
    let digest = captures.get(3).map(|d| d.as_str().to_string());
    if let Some(digest) = &digest {
        let (algorithm, hex) = digest.split_once(':')?;
        let length = match algorithm {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return None,
        };
        if hex.len() != length
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
    }
    let parts = NAME.captures(name)?;
    Some((
        parts.get(1)?.as_str().to_string(),
        parts.get(2)?.as_str().to_string(),
        captures.get(2).map(|t| t.as_str().to_string()),
        digest,
    ))
}

/// Strings made of the characters references are made of, so that most are near misses.
fn reference_like() -> impl Strategy<Value = String> {
    let hex64 = "[0-9a-f]{64}";
    prop_oneof![
        "[a-zA-Z0-9._:/@-]{0,40}",
        (
            "(([a-zA-Z0-9-]{1,8}\\.){0,2}[a-zA-Z0-9-]{1,8}(:[0-9]{1,5})?/|localhost/|\\[[0-9a-f:]{2,8}\\](:[0-9]{2})?/)?",
            "[a-z0-9._-]{1,12}(/[a-z0-9._-]{1,12}){0,2}",
            "(:[a-zA-Z0-9_.-]{0,10})?",
            prop_oneof![Just(String::new()), hex64.prop_map(|h| format!("@sha256:{h}")), "@[a-z0-9]{3,7}:[0-9a-fA-F]{30,70}"],
        )
            .prop_map(|(host, path, tag, digest)| format!("{host}{path}{tag}{digest}")),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn the_parser_reads_exactly_what_docker_reads(image in reference_like()) {
        let ours = ImageReference::parse(&image)
            .ok()
            .map(|r| (r.host, r.repository, r.tag, r.digest));
        prop_assert_eq!(ours, docker(&image), "{:?}", image);
    }

    #[test]
    fn every_reference_read_prints_as_one_that_reads_back_the_same(image in reference_like()) {
        if let Ok(reference) = ImageReference::parse(&image) {
            let printed = reference.to_string();
            prop_assert_eq!(ImageReference::parse(&printed), Ok(reference), "{:?} -> {:?}", image, printed);
        }
    }
}

#[test]
fn references_docker_refuses_are_refused_too() {
    // The parser before it followed Docker's grammar accepted each of these, and the node
    // would have failed the run Pod with InvalidImageName.
    for image in [
        "library/a:b:c",
        "ubuntu:.hidden",
        "-runner",
        "team/runner..x",
        "redis@sha256:0123",
        "runner:latest@md5:0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(docker(image), None, "{image}");
        assert!(ImageReference::parse(image).is_err(), "{image}");
    }
}

#[test]
fn an_uppercase_first_component_is_a_registry_host_as_docker_reads_it() {
    let reference = ImageReference::parse("Registry/runner").expect("a reference");
    assert_eq!(
        (reference.host.as_str(), reference.repository.as_str()),
        ("Registry", "runner")
    );
    assert!(!reference.host_is_allowed(&["docker.io".to_string()]));
    assert!(reference.host_is_allowed(&["registry".to_string()]));
}
