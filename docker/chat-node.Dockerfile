# syntax=docker/dockerfile:1.7
# The chat-node image the ChatCluster's StatefulSet runs. Build from the repository root:
#   docker build -f docker/chat-node.Dockerfile -t registry.example.com/parley/chat-node:0.1.0 .
# (Not built on the development machines: they have no Docker engine.)

FROM rust:1.95-bookworm AS build
# etcd-client's build script needs protoc.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p chat-node --bin chat-node \
 && cp target/release/chat-node /chat-node

# distroless/cc: glibc and CA certificates, no shell, runs as uid 65532 (the StatefulSet's
# runAsUser). The data dir is a volume (PVC or emptyDir) mounted by the StatefulSet; the root
# filesystem stays read-only.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /chat-node /usr/local/bin/chat-node
USER 65532:65532
ENV PARLEY_LISTEN=0.0.0.0:8080 PARLEY_DATA_DIR=/var/lib/parley
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/chat-node"]
