# syntax=docker/dockerfile:1
#
# The operator image: a release build of `workerpool-operator` on distroless (glibc, CA
# certificates, no shell, no package manager), running as a non-root user. The Helm chart runs
# it as `/workerpool-operator run ...` and defaults to
# ghcr.io/workerpool-operator/workerpool-operator:<appVersion>.
#
#   docker build -t ghcr.io/workerpool-operator/workerpool-operator:0.1.0 .
#
# This repository's CI has no container engine, so the image is not built there (README,
# "The image").

ARG RUST_VERSION=1.95

# bookworm (Debian 12), like the runtime image: the binary links the glibc it was built against.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The whole crate (see .dockerignore): Cargo reads every target the manifest declares.
COPY . .
# --locked: exactly the dependency versions of Cargo.lock. The caches only speed up rebuilds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin workerpool-operator \
 && cp target/release/workerpool-operator /workerpool-operator

# cc: glibc and libgcc, which the binary links against (TLS is rustls/aws-lc-rs, built in).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /workerpool-operator /workerpool-operator
# Numeric, so that the kubelet can verify runAsNonRoot (distroless' "nonroot" is 65532).
USER 65532:65532
ENTRYPOINT ["/workerpool-operator"]
CMD ["run"]
