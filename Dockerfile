# syntax=docker/dockerfile:1
# Jetway in a container: built in Rust's image, run from slim Debian as a non-root
# user, its database on the /data volume, listening on 0.0.0.0:8080 (docs/deploy.md).
#
#   docker build -t jetway .
#   docker build --build-arg FEATURES=etcd -t jetway:etcd .     # with --store etcd
#   docker run -p 8080:8080 -v jetway-data:/data jetway

FROM rust:1.95-bookworm AS build
ARG FEATURES=""
# protoc builds the etcd client (FEATURES=etcd)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jetway --features "$FEATURES" \
    && cp target/release/jetway /usr/local/bin/jetway

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin jetway \
    && mkdir -p /data \
    && chown jetway:jetway /data \
    && chmod 0700 /data
COPY --from=build /usr/local/bin/jetway /usr/local/bin/jetway
USER 10001:10001
WORKDIR /data
ENV JETWAY_LISTEN=0.0.0.0:8080 \
    JETWAY_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/jetway"]
