# ecsmesh-agent. Build from the workspace root:
#   docker build -f deploy/docker/agent.Dockerfile -t <repo>/ecsmesh-agent:<tag> .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The dist profile (fat LTO, one codegen unit): ~7.5 % more requests a
# second than release (bench/results/ab-20261204-1841.md).
RUN cargo build --profile dist --locked -p ecsmesh-agent \
 && cp target/dist/ecsmesh-agent /ecsmesh-agent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ecsmesh-agent /usr/local/bin/ecsmesh-agent
# The last installed snapshot is kept here (static stability across restarts).
ENV ECSMESH_STATE_DIR=/var/lib/ecsmesh/agent
# Listens on 4140/4141/9990 (unprivileged ports: no root needed).
USER nonroot:nonroot
EXPOSE 4140 4141 9990
ENTRYPOINT ["/usr/local/bin/ecsmesh-agent"]
