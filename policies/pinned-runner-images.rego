# Runner images must be pinned: a tag other than `latest`, or a digest. Rego v1.
package spacelift

import rego.v1

deny contains msg if {
	not pinned(input.runnerImage)
	msg := sprintf("runner image %q floats: pin a tag other than latest, or a digest", [input.runnerImage])
}

pinned(image) if contains(image, "@sha256:")

pinned(image) if {
	not contains(image, "@")
	tag := tag_of(image)
	tag != ""
	tag != "latest"
}

# The tag follows the last ':' after the last '/' (a ':' before it is a registry port).
tag_of(image) := tag if {
	name := regex.replace(image, "^.*/", "")
	parts := split(name, ":")
	count(parts) == 2
	tag := parts[1]
} else := ""
