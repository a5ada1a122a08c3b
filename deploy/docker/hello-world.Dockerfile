# The hello/world demo app (one image, three services: hello, world, world-v2).
#   docker build -f deploy/docker/hello-world.Dockerfile -t <repo>/ecsmesh-hello-world:<tag> deploy/docker
FROM python:3.12-alpine
COPY hello_world.py /app/hello_world.py
USER 65534:65534
EXPOSE 7777
ENTRYPOINT ["python3", "/app/hello_world.py"]
