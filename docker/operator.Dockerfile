# syntax=docker/dockerfile:1.7
# The chat-operator image. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t registry.example.com/parley/chat-operator:0.1.0 .
# (Not built on the development machines: they have no Docker engine.)

FROM rust:1.95-bookworm AS build
# etcd-client's build script needs protoc.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p operator --bin chat-operator \
 && cp target/release/chat-operator /chat-operator

# distroless/cc: glibc and CA certificates, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /chat-operator /usr/local/bin/chat-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chat-operator"]
CMD ["run"]
