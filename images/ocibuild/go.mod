// ocibuild: writes OCI image archives from a Dockerfile's final `FROM scratch` stage, with no
// container engine or registry (images/README.md). Standard library only.
module workerpool.dev/images/ocibuild

go 1.26.0
