# ecsmesh-controller. Build from the workspace root:
#   docker build -f deploy/docker/controller.Dockerfile -t <repo>/ecsmesh-controller:<tag> .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ecsmesh-controller \
 && cp target/release/ecsmesh-controller /ecsmesh-controller

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /ecsmesh-controller /usr/local/bin/ecsmesh-controller
# The file store lives here; mount a volume to keep dtabs across restarts.
WORKDIR /var/lib/ecsmesh
ENV ECSMESH_STORE_DIR=/var/lib/ecsmesh/controller
USER nonroot:nonroot
EXPOSE 4321 9991
ENTRYPOINT ["/usr/local/bin/ecsmesh-controller"]
