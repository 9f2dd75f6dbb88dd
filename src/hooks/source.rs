//! Where hooks come from: plugin modules and policies in ConfigMaps, and the seed's
//! initialization policy, found through the pool's volume, init-container mount and
//! `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`. Pure: the controller fetches the ConfigMaps.

use std::collections::BTreeMap;
use std::io::Read;

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Volume};

use crate::crd::WorkerPool;

/// The init container variable that points at the initialization policy file.
pub const INITIALIZATION_POLICY_ENV: &str = "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY";

/// Why a hook's source cannot be read. Names the object, the field and the fix.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("ConfigMap {config_map} was not found: create it or fix the reference")]
    NotFound { config_map: String },
    /// The API did not return it (an error other than a 404); the load is tried again soon.
    #[error("{field}: cannot read ConfigMap {namespace}/{config_map}: {error}")]
    Unreadable {
        field: String,
        namespace: String,
        config_map: String,
        error: String,
    },
    #[error("ConfigMap {config_map} has no key {key:?} in {field} (it has: {present})")]
    MissingKey {
        config_map: String,
        key: String,
        field: &'static str,
        present: String,
    },
    #[error(
        "ConfigMap {config_map} has {count} keys in {field}: set `key` to say which one to use"
    )]
    AmbiguousKey {
        config_map: String,
        count: usize,
        field: &'static str,
    },
    #[error("ConfigMap {config_map} key {key:?}: {message}")]
    BadContent {
        config_map: String,
        key: String,
        message: String,
    },
    #[error("WorkerPool {pool}: {field}: {message}")]
    Resolve {
        pool: String,
        field: String,
        message: String,
    },
}

/// The ConfigMaps a scope's hooks name, as the controller read them from one namespace.
#[derive(Clone, Debug, Default)]
pub struct FetchedConfigMaps {
    /// Where they were read from (named in errors).
    pub namespace: String,
    /// Those that exist, by name. A name in neither map was not found.
    pub found: BTreeMap<String, ConfigMap>,
    /// Those the API did not return (an error other than NotFound), by name: why.
    pub unreadable: BTreeMap<String, String>,
}

impl FetchedConfigMaps {
    pub(super) fn found(config_maps: &BTreeMap<String, ConfigMap>) -> Self {
        Self {
            found: config_maps.clone(),
            ..Self::default()
        }
    }

    /// The ConfigMap `name`, which `field` names.
    pub(super) fn get(&self, name: &str, field: &str) -> Result<&ConfigMap, SourceError> {
        if let Some(config_map) = self.found.get(name) {
            return Ok(config_map);
        }
        Err(match self.unreadable.get(name) {
            Some(error) => SourceError::Unreadable {
                field: field.to_string(),
                namespace: self.namespace.clone(),
                config_map: name.to_string(),
                error: error.clone(),
            },
            None => SourceError::NotFound {
                config_map: name.to_string(),
            },
        })
    }
}

/// Where a pool's initialization policy lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitializationPolicyRef {
    /// The ConfigMap's name (in the pool's namespace).
    pub config_map: String,
    /// The key holding the policy.
    pub key: String,
    /// The path the launcher reads, as set in the init container.
    pub path: String,
    /// The volume's `optional`: a missing ConfigMap then means "no policy", as for the kubelet.
    pub optional: bool,
    /// The WorkerPool field that names the ConfigMap, e.g.
    /// `spec.pod.volumes[initialization-policy].configMap.name`.
    pub field: String,
}

/// Finds the pool's initialization policy from its Pod template; `None` when the pool sets no
/// `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY` on its init container.
pub fn initialization_policy(
    pool: &WorkerPool,
) -> Result<Option<InitializationPolicyRef>, SourceError> {
    let template = pool.pod_template();
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let err = |field: &str, message: String| SourceError::Resolve {
        pool: pool_name.clone(),
        field: field.to_string(),
        message,
    };
    let Some(init) = template.init_container.as_ref() else {
        return Ok(None);
    };
    let Some(env) = init
        .env
        .iter()
        .flatten()
        .rev() // the last definition wins, as in a container
        .find(|e| e.name == INITIALIZATION_POLICY_ENV)
    else {
        return Ok(None);
    };
    let env_field = format!("spec.pod.initContainer.env[{INITIALIZATION_POLICY_ENV}]");
    let path = match (&env.value, &env.value_from) {
        (Some(path), None) if path.starts_with('/') => path.clone(),
        (_, Some(_)) => {
            return Err(err(
                &env_field,
                "must be a literal `value`, not `valueFrom`, so the operator can read the policy before the Pod exists".into(),
            ));
        }
        _ => {
            return Err(err(
                &env_field,
                "must be an absolute path to the policy file".into(),
            ));
        }
    };
    let mounts = init.volume_mounts.iter().flatten();
    let Some((mount, relative)) = mounts
        .filter_map(|m| {
            let dir = m.mount_path.trim_end_matches('/');
            let rest = path.strip_prefix(dir)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| (m, rest.trim_start_matches('/')))
        })
        .max_by_key(|(m, _)| m.mount_path.len())
    else {
        return Err(err(
            &env_field,
            format!(
                "points at {path}, but no volume in spec.pod.initContainer.volumeMounts is mounted there: mount the policy's ConfigMap volume"
            ),
        ));
    };
    // With subPath the mount shows one entry of the volume: a file, or a directory of it.
    let in_volume = match (
        mount.sub_path.as_deref().filter(|s| !s.is_empty()),
        relative,
    ) {
        (Some(sub), "") => sub.to_string(),
        (Some(sub), rest) => format!("{}/{rest}", sub.trim_end_matches('/')),
        (None, rest) => rest.to_string(),
    };
    let volumes: &[Volume] = template.volumes.as_deref().unwrap_or_default();
    let Some(volume) = volumes.iter().find(|v| v.name == mount.name) else {
        return Err(err(
            "spec.pod.volumes",
            format!(
                "the init container mounts volume {:?}, which is not defined here",
                mount.name
            ),
        ));
    };
    let volume_field = format!("spec.pod.volumes[{}]", volume.name);
    let key_for = |items: &Option<Vec<KeyToPath>>| -> Option<String> {
        match items {
            Some(items) => items
                .iter()
                .find(|i| i.path == in_volume)
                .map(|i| i.key.clone()),
            None => (!in_volume.is_empty() && !in_volume.contains('/')).then(|| in_volume.clone()),
        }
    };
    if let Some(cm) = &volume.config_map {
        let key = key_for(&cm.items).ok_or_else(|| {
            err(
                &volume_field,
                format!("no key of ConfigMap {:?} appears at {path}", cm.name),
            )
        })?;
        return Ok(Some(InitializationPolicyRef {
            config_map: cm.name.clone(),
            key,
            path,
            optional: cm.optional.unwrap_or(false),
            field: format!("{volume_field}.configMap.name"),
        }));
    }
    if let Some(projected) = &volume.projected {
        for (i, source) in projected.sources.iter().flatten().enumerate() {
            if let Some(cm) = &source.config_map
                && let Some(key) = key_for(&cm.items)
            {
                return Ok(Some(InitializationPolicyRef {
                    config_map: cm.name.clone(),
                    key,
                    path,
                    optional: cm.optional.unwrap_or(false),
                    field: format!("{volume_field}.projected.sources[{i}].configMap.name"),
                }));
            }
        }
    }
    Err(err(
        &volume_field,
        format!(
            "{path} is not a ConfigMap key: the operator reads initialization policies only from configMap volumes (or projected configMap sources with items)"
        ),
    ))
}

/// A plugin module as a ConfigMap's `binaryData` holds it (plain or gzip-compressed), and its
/// key. Digest these bytes to know whether the plugin changed: nothing is decompressed yet.
pub fn plugin_source<'a>(
    config_map: &'a ConfigMap,
    key: Option<&str>,
) -> Result<(String, &'a [u8]), SourceError> {
    let name = object_name(config_map);
    let data = config_map.binary_data.as_ref();
    let (key, bytes) = pick(
        &name,
        data.map(|d| d.iter().map(|(k, v)| (k, &v.0))),
        key,
        "binaryData",
    )?;
    Ok((key, bytes.as_slice()))
}

/// A plugin module from a ConfigMap's `binaryData`, gunzipped when compressed. `max` bounds
/// the decompressed size.
pub fn plugin_module(
    config_map: &ConfigMap,
    key: Option<&str>,
    max: usize,
) -> Result<Vec<u8>, SourceError> {
    let (key, bytes) = plugin_source(config_map, key)?;
    decompress(config_map, &key, bytes, max)
}

/// `bytes` of `config_map`'s `key`, gunzipped when compressed; decompression stops past `max`.
pub fn decompress(
    config_map: &ConfigMap,
    key: &str,
    bytes: &[u8],
    max: usize,
) -> Result<Vec<u8>, SourceError> {
    gunzip_if_needed(bytes, max).map_err(|message| SourceError::BadContent {
        config_map: object_name(config_map),
        key: key.to_string(),
        message,
    })
}

/// `bytes`, gunzipped when they start with gzip's magic, refusing more than `max` bytes.
///
/// What a small archive of a huge module can cost is bounded twice: gzip's trailer says how
/// large the content is (modulo 4 GiB), so a module that says it is over the cap is refused
/// before anything is decompressed (a trailer that does not match the content makes the gzip
/// invalid anyway), and the output buffer is reserved once at that size; a trailer can lie,
/// so decompression also stops at the cap, and the buffer never grows past `max` bytes.
pub fn gunzip_if_needed(bytes: &[u8], max: usize) -> Result<Vec<u8>, String> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes.to_vec());
    }
    let too_large = || {
        format!(
            "decompresses to more than {}, the most a plugin module may have \
             (limits.maxModuleMib, Helm value hooks.limits.maxModuleMib): build a smaller \
             module, or raise the limit",
            size(max)
        )
    };
    let claimed = bytes
        .last_chunk::<4>()
        .map(|trailer| u32::from_le_bytes(*trailer) as usize);
    if let Some(claimed) = claimed
        && claimed > max
    {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(claimed.unwrap_or(0));
    let mut decoder = flate2::read::GzDecoder::new(bytes);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let read = decoder
            .read(&mut chunk)
            .map_err(|e| format!("not valid gzip: {e}"))?;
        if read == 0 {
            return Ok(out);
        }
        let needed = out.len() + read;
        if needed > max {
            return Err(too_large());
        }
        if needed > out.capacity() {
            // Doubling, as a Vec would, but never past the cap.
            let target = needed.max(out.capacity() * 2).min(max);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..read]);
    }
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// A policy's text from a ConfigMap's `data` (or UTF-8 `binaryData`).
pub fn policy_text(config_map: &ConfigMap, key: Option<&str>) -> Result<String, SourceError> {
    let name = object_name(config_map);
    let has_data = config_map.data.as_ref().is_some_and(|d| match key {
        Some(key) => d.contains_key(key),
        None => !d.is_empty(),
    });
    if has_data || config_map.binary_data.is_none() {
        let data = config_map.data.as_ref();
        let (_, text) = pick(&name, data.map(|d| d.iter()), key, "data")?;
        return Ok(text.clone());
    }
    let data = config_map.binary_data.as_ref();
    let (key, bytes) = pick(
        &name,
        data.map(|d| d.iter().map(|(k, v)| (k, &v.0))),
        key,
        "binaryData",
    )?;
    String::from_utf8(bytes.clone()).map_err(|e| SourceError::BadContent {
        config_map: name,
        key,
        message: format!("not UTF-8 text: {e}"),
    })
}

/// `namespace/name` of an object.
pub fn object_name(config_map: &ConfigMap) -> String {
    let meta = &config_map.metadata;
    match (&meta.namespace, &meta.name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.clone(),
        _ => "(unnamed)".to_string(),
    }
}

fn pick<'a, V: 'a>(
    config_map: &str,
    entries: Option<impl Iterator<Item = (&'a String, &'a V)>>,
    key: Option<&str>,
    field: &'static str,
) -> Result<(String, &'a V), SourceError> {
    let entries: Vec<(&String, &V)> = entries.map(Iterator::collect).unwrap_or_default();
    match key {
        Some(key) => entries
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(k, v)| ((*k).clone(), *v))
            .ok_or_else(|| SourceError::MissingKey {
                config_map: config_map.to_string(),
                key: key.to_string(),
                field,
                present: if entries.is_empty() {
                    "nothing".into()
                } else {
                    entries
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        None => match entries.as_slice() {
            [(k, v)] => Ok(((*k).clone(), *v)),
            [] => Err(SourceError::MissingKey {
                config_map: config_map.to_string(),
                key: "(any)".into(),
                field,
                present: "nothing".into(),
            }),
            many => Err(SourceError::AmbiguousKey {
                config_map: config_map.to_string(),
                count: many.len(),
                field,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn config_map(binary: &[(&str, &[u8])], data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("plugins".into()),
                namespace: Some("ops".into()),
                ..Default::default()
            },
            binary_data: (!binary.is_empty()).then(|| {
                binary
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect::<BTreeMap<_, _>>()
            }),
            data: (!data.is_empty()).then(|| {
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn gzip_modules_are_decompressed_within_a_bound() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[0u8; 1000]).unwrap();
        let gz = gz.finish().unwrap();
        let cm = config_map(&[("m.wasm.gz", &gz)], &[]);
        assert_eq!(plugin_module(&cm, None, 4096).unwrap().len(), 1000);
        assert_eq!(
            plugin_module(&cm, None, 100).unwrap_err().to_string(),
            "ConfigMap ops/plugins key \"m.wasm.gz\": decompresses to more than 100 bytes, the \
             most a plugin module may have (limits.maxModuleMib, Helm value \
             hooks.limits.maxModuleMib): build a smaller module, or raise the limit"
        );
    }

    #[test]
    fn a_gzip_trailer_that_understates_the_size_still_stops_at_the_cap() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&[0u8; 100_000]).unwrap();
        let mut gz = gz.finish().unwrap();
        let at = gz.len() - 4;
        gz[at..].copy_from_slice(&10u32.to_le_bytes());
        let err = gunzip_if_needed(&gz, 50_000).unwrap_err();
        assert!(
            err.starts_with("decompresses to more than 50000 bytes"),
            "{err}"
        );
        // Under the cap, the lie is found by gzip's own check of the trailer.
        let err = gunzip_if_needed(&gz, 200_000).unwrap_err();
        assert!(err.starts_with("not valid gzip"), "{err}");
    }

    #[test]
    fn the_output_buffer_never_grows_past_the_cap() {
        let gzip = |content: &[u8]| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(content).unwrap();
            gz.finish().unwrap()
        };
        let max = 300_000;
        let honest = gunzip_if_needed(&gzip(&[7u8; 300_000]), max).unwrap();
        assert_eq!((honest.len(), honest.capacity()), (max, max));
        // An empty second member: the trailer at the end says 0, so the buffer starts empty
        // and grows while the first member is read, up to the cap and no further.
        let mut two = gzip(&[7u8; 300_000]);
        two.extend(gzip(b""));
        let grown = gunzip_if_needed(&two, max).unwrap();
        assert_eq!(grown.len(), max);
        assert!(grown.capacity() <= max, "capacity {}", grown.capacity());
    }

    #[test]
    fn keys_are_explicit_or_unique() {
        let cm = config_map(&[("a", b"1"), ("b", b"2")], &[]);
        assert_eq!(plugin_module(&cm, Some("b"), 10).unwrap(), b"2");
        assert_eq!(
            plugin_module(&cm, None, 10).unwrap_err().to_string(),
            "ConfigMap ops/plugins has 2 keys in binaryData: set `key` to say which one to use"
        );
        assert_eq!(
            plugin_module(&cm, Some("c"), 10).unwrap_err().to_string(),
            "ConfigMap ops/plugins has no key \"c\" in binaryData (it has: a, b)"
        );
        let cm = config_map(&[], &[("policy.rego", "package spacelift")]);
        assert_eq!(policy_text(&cm, None).unwrap(), "package spacelift");
    }
}
