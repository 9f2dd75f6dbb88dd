//! Paths to fields of a Pod, written the way the hook trail writes them
//! (`spec.containers[docker].securityContext.privileged`, `metadata.annotations["a/b"]`), so a
//! field the guard refuses can be matched with the hook that changed it.

use std::fmt;

use serde_json::Value;

/// One step of a [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// An object's field or a map's key.
    Field(String),
    /// The element of a list of named objects (containers, volumes, sysctls) with this name.
    Named(String),
    /// The element at this position of a list.
    Index(usize),
}

/// A path from the Pod's root to one of its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// `spec`.
    pub fn spec() -> Self {
        Self::default().field("spec")
    }

    /// `spec.securityContext`.
    pub fn pod_security_context() -> Self {
        Self::spec().field("securityContext")
    }

    /// The path followed by the field (or map key) `name`.
    pub fn field(mut self, name: &str) -> Self {
        self.0.push(Segment::Field(name.to_string()));
        self
    }

    /// The path followed by the named list element `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.0.push(Segment::Named(name.to_string()));
        self
    }

    /// The path followed by list position `index`.
    pub fn index(mut self, index: usize) -> Self {
        self.0.push(Segment::Index(index));
        self
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The value at this path in `root` (a Pod as JSON), if there is one.
    pub fn resolve<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.0
            .iter()
            .try_fold(root, |value, segment| match segment {
                Segment::Field(name) => value.get(name),
                Segment::Index(index) => value.get(index),
                Segment::Named(name) => value
                    .as_array()?
                    .iter()
                    .find(|item| item.get("name").and_then(Value::as_str) == Some(name)),
            })
    }

    /// Whether a change the trail records at `changed` touched this field: the same path, a
    /// parent of it (a container added whole) or a field inside it.
    pub fn touched_by(&self, changed: &str) -> bool {
        let path = self.to_string();
        nested(&path, changed) || nested(changed, &path)
    }
}

/// `inner` is `outer` or lies inside it.
fn nested(inner: &str, outer: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                // The trail's rule: plain keys are dotted, others quoted in brackets.
                Segment::Field(name) if is_plain(name) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(name)?;
                }
                Segment::Field(name) => write!(f, "[{name:?}]")?,
                Segment::Named(name) => write!(f, "[{name}]")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

fn is_plain(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_read_like_the_hook_trail() {
        let privileged = FieldPath::spec()
            .field("containers")
            .named("docker")
            .field("securityContext")
            .field("privileged");
        assert_eq!(
            privileged.to_string(),
            "spec.containers[docker].securityContext.privileged"
        );
        let annotation = FieldPath::default()
            .field("metadata")
            .field("annotations")
            .field("container.apparmor.security.beta.kubernetes.io/x");
        assert_eq!(
            annotation.to_string(),
            "metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/x\"]"
        );
        let port = FieldPath::spec()
            .field("containers")
            .named("a")
            .field("ports")
            .index(0);
        assert_eq!(port.to_string(), "spec.containers[a].ports[0]");
    }

    #[test]
    fn a_path_resolves_named_elements_and_is_touched_by_its_parents_and_children() {
        let pod = json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "securityContext": {"privileged": true}}]}});
        let path = FieldPath::spec()
            .field("containers")
            .named("b")
            .field("securityContext")
            .field("privileged");
        assert_eq!(path.resolve(&pod), Some(&json!(true)));
        assert_eq!(FieldPath::spec().field("nope").resolve(&pod), None);
        assert!(path.touched_by("spec.containers[b]"));
        assert!(path.touched_by("spec.containers[b].securityContext.privileged"));
        assert!(path.touched_by("spec"));
        assert!(!path.touched_by("spec.containers[bb]"));
        assert!(!path.touched_by("spec.containers[a]"));
        let container = FieldPath::spec().field("containers").named("b");
        assert!(container.touched_by("spec.containers[b].image"));
    }
}
