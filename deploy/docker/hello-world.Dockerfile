# The hello/world demo app (examples/hello-world, binary `helloworld`): one
# image, three ECS services (hello, world, world-v2) that differ only in the
# task definition's command. Build from the workspace root:
#   docker build -f deploy/docker/hello-world.Dockerfile -t <repo>/ecsmesh-hello-world:<tag> .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ecsmesh-hello-world \
 && cp target/release/helloworld /helloworld

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /helloworld /usr/local/bin/helloworld
# No shell here: `http_proxy=$HOST_IP:4140` is filled in by helloworld itself
# (the host's private IP from IMDSv2).
USER nonroot:nonroot
EXPOSE 7777
ENTRYPOINT ["/usr/local/bin/helloworld"]
