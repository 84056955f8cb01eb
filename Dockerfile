# syntax=docker/dockerfile:1

# ---- build: a locked release build of the one binary --------------------------------
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Manifests first so dependency builds are cached until Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
COPY benches benches
COPY src src
# A workspace member (the load generator): cargo loads every member, it builds only wss-engine.
COPY bench/wss-bench bench/wss-bench
# `wss-engine schema` embeds the pack-format schema at compile time.
COPY schemas schemas
RUN cargo build --release --locked --bin wss-engine \
 && strip target/release/wss-engine

# ---- runtime: a small image, no compiler, no root -----------------------------------
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin wss
COPY --from=build /src/target/release/wss-engine /usr/local/bin/wss-engine
# The default pack. Replace /etc/wss-engine/events with a volume or Swarm/Kubernetes
# configs to ship the same image with another application. Payload schemas referenced
# as ../schemas/*.json live next to it.
COPY events /etc/wss-engine/events
COPY schemas /etc/wss-engine/schemas
ENV WSS_CONFIG=/etc/wss-engine/events \
    WSS_LISTEN=0.0.0.0:3000 \
    WSS_LOG_FORMAT=json
USER wss
EXPOSE 3000
# SIGTERM closes every socket with 1001 "going away", drains, deregisters, exits 0.
STOPSIGNAL SIGTERM
# Ready = Redis reachable and every Pub/Sub subscription in place. bash's /dev/tcp keeps
# the image free of curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${WSS_LISTEN##*:} && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["wss-engine"]
CMD ["serve"]
