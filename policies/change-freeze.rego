# No applies while a change freeze is on: the backend marks frozen runs with run metadata
# `freeze: "true"`, or the pool carries the annotation `policy.workers.spacelift.io/freeze`.
# Rego v1.
package spacelift

import rego.v1

frozen if input.run.metadata.freeze == "true"

frozen if input.pool.annotations["policy.workers.spacelift.io/freeze"]

deny contains msg if {
	frozen
	input.run.stage == "applying"
	msg := sprintf("change freeze: run %s may plan but not apply", [input.run.runId])
}
