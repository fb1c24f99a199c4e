# One image for every Cairn service: each Kubernetes Deployment runs
# `cairn serve <service>` (see charts/cairn). Build with: docker build -t cairn .
#
# Stage 1 builds the release binary; nothing else is needed (protobuf is compiled in
# Rust, TLS is rustls). Stage 2 is distroless: glibc, CA certificates and tzdata, no
# shell, running as the non-root user 65532.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cairn \
    && install -D target/release/cairn /out/cairn

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/cairn /usr/local/bin/cairn
USER 65532:65532
# The embedded store and any local state live here; mount a volume on it.
ENV CAIRN_DATA_DIR=/var/lib/cairn
WORKDIR /var/lib/cairn
# HTTP (collector), gRPC (every service's API and health), admin (/healthz /readyz /metrics).
EXPOSE 8080 50051 9090
ENTRYPOINT ["/usr/local/bin/cairn"]
CMD ["serve", "collector"]
