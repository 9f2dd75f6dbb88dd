# No privileged containers and no host namespaces in run Pods, except in pools labelled
# `policy.workers.spacelift.io/privileged: allowed` (e.g. a pool that runs docker:dind).
# Rego v0 syntax, as in the seed.
package spacelift

privileged_allowed {
    input.pool.labels["policy.workers.spacelift.io/privileged"] == "allowed"
}

deny[msg] {
    not privileged_allowed
    container := input.pod.spec.containers[_]
    container.securityContext.privileged
    msg := sprintf("container %q is privileged", [container.name])
}

deny[msg] {
    not privileged_allowed
    container := input.pod.spec.initContainers[_]
    container.securityContext.privileged
    msg := sprintf("init container %q is privileged", [container.name])
}

deny["the run Pod uses the host network"] {
    input.pod.spec.hostNetwork
}

deny["the run Pod uses the host PID namespace"] {
    input.pod.spec.hostPID
}
