"""Issue #16: `ecsmeshctl deploy up --images-dir` (what `--build-images` does
after its build) end to end: moto serves ECR's API (repositories, the
authorization token), Debian's docker-registry on loopback stands in for the
registry with htpasswd basic auth holding ECR's password, so the push only
works with the token `up` fetched. The images are pulled back by digest and
verified, the registered task definitions name `<repositoryUri>@<digest>`,
a second `up` changes nothing, and `down` removes the repositories.

Needs the images (scripts/images.sh, $IMAGES_DIR), ecsmeshctl
($ECSMESH_BIN_DIR, default the debug build) and the moto harness."""
import base64
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
import bcrypt
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/harness"))
from fixtures import CREDENTIALS, LINUX_AMI, MotoServer  # noqa: E402

from test_images import IMAGES_DIR, built, run  # noqa: E402

BIN_DIR = pathlib.Path(os.environ.get(
    "ECSMESH_BIN_DIR", pathlib.Path(os.environ.get("CARGO_TARGET_DIR", pathlib.Path.home() / ".cache/ecsmesh/target")) / "debug"))
REGION = "eu-north-1"
CLUSTER = "imgs"


def bcrypt_hash(password):
    # htpasswd entries must be bcrypt (Python's crypt module is gone in 3.13).
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


@pytest.fixture(scope="module")
def moto():
    server = MotoServer().start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def client(moto, service):
    return boto3.client(service, region_name=REGION, endpoint_url=moto, **CREDENTIALS)


@pytest.fixture(scope="module")
def ecr_password(moto):
    token = client(moto, "ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    user, password = base64.b64decode(token).decode().split(":", 1)
    assert user == "AWS"
    return password


@pytest.fixture(scope="module")
def registry(tmp_path_factory, ecr_password):
    """docker-registry on a loopback port that only admits AWS:<ECR's password>."""
    base = tmp_path_factory.mktemp("auth-registry")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (base / "htpasswd").write_text(f"AWS:{bcrypt_hash(ecr_password)}\n")
    config = base / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {base / 'data'}}}}}\n"
        f"auth: {{htpasswd: {{realm: ecsmesh-test, path: {base / 'htpasswd'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n")
    log = open(base / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, and asking for credentials
                    break
            except OSError:
                pass
            assert proc.poll() is None, (base / "registry.log").read_text()
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def subnet(moto):
    ec2 = client(moto, "ec2")
    vpc = ec2.create_vpc(CidrBlock="127.0.0.0/16")["Vpc"]["VpcId"]
    return ec2.create_subnet(VpcId=vpc, CidrBlock="127.0.40.0/24",
                             AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]


def ctl(moto, subnet, tmp_path, *args, cluster=CLUSTER, env=None):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_EC2_METADATA_DISABLED": "true", **(env or {})}
    out = run(str(BIN_DIR / "ecsmeshctl"), "deploy", *args, "--cluster", cluster, "--region", REGION,
              "--aws-endpoint-url", moto, "--subnet", subnet, "--ami", LINUX_AMI, "--insecure",
              "--no-events", "--agent", "daemon", "--with-demo",
              "--secrets-dir", str(tmp_path / "secrets"), "-o", "json", env=env, cwd=ROOT)
    return json.loads(out.stdout)


def changes(report):
    return sorted(f"{s['action']} {s['kind']} {s['name']}" for s in report["steps"]
                  if s["action"] in ("create", "update", "delete"))


def test_up_pushes_to_ecr_with_its_token_and_pins_the_digests(moto, registry, subnet, tmp_path):
    images = built()
    ecr = client(moto, "ecr")
    push = ("--images-dir", str(IMAGES_DIR), "--registry-endpoint", f"http://{registry}")

    # The plan creates nothing.
    plan = ctl(moto, subnet, tmp_path, "up", "--dry-run", *push)
    assert plan["dry_run"]
    assert [s for s in plan["steps"] if s["kind"] == "ecr-repository"
            and s["action"] == "create"], plan
    assert ecr.describe_repositories()["repositories"] == []

    report = ctl(moto, subnet, tmp_path, "up", *push)
    repos = {r["repositoryName"]: r for r in ecr.describe_repositories()["repositories"]}
    assert set(repos) == {f"ecsmesh-{CLUSTER}/{n}" for n in images}
    for repo in repos.values():
        assert repo["imageTagMutability"] == "IMMUTABLE"
        assert repo["imageScanningConfiguration"]["scanOnPush"] is True
        tags = ecr.list_tags_for_resource(resourceArn=repo["repositoryArn"])["tags"]
        assert {"Key": "ecsmesh:owner", "Value": CLUSTER} in tags

    # Without the token the registry refuses: the push used ECR's.
    anonymous = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{registry}/ecsmesh-{CLUSTER}/agent@{images['agent']['digest']}"],
        capture_output=True, text=True, timeout=60)
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr.lower(), anonymous

    password = client(moto, "ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    creds = base64.b64decode(password).decode()
    for name, image in images.items():
        repo = repos[f"ecsmesh-{CLUSTER}/{name}"]
        pinned = f"{repo['repositoryUri']}@{image['digest']}"
        assert any(s["kind"] == "image" and s["name"] == pinned and s["action"] == "create"
                   for s in report["steps"]), report
        # Pulled back by digest, with ECR's credentials: the bytes hash to it.
        ref = f"docker://{registry}/ecsmesh-{CLUSTER}/{name}@{image['digest']}"
        raw = run("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", creds, ref).stdout
        import hashlib
        assert "sha256:" + hashlib.sha256(raw.encode()).hexdigest() == image["digest"]
        tag = f"{image['tag']}-{image['digest'][7:19]}"
        tagged = run("skopeo", "inspect", "--tls-verify=false", "--creds", creds,
                     "--format", "{{.Digest}}", f"docker://{registry}/ecsmesh-{CLUSTER}/{name}:{tag}")
        assert tagged.stdout.strip() == image["digest"]

    # The pulled agent runs.
    layout = tmp_path / "pulled"
    run("skopeo", "copy", "-q", "--src-tls-verify=false", "--src-creds", creds,
        f"docker://{registry}/ecsmesh-{CLUSTER}/agent@{images['agent']['digest']}", f"oci:{layout}:agent")
    run("umoci", "unpack", "--rootless", "--image", f"{layout}:agent", str(tmp_path / "bundle"))
    out = run(str(tmp_path / "bundle/rootfs/ecsmesh-agent"), "--version").stdout
    assert out.strip() == f"ecsmesh-agent {images['agent']['tag']}"

    # The task definitions ECS runs name exactly those digests.
    ecs = client(moto, "ecs")
    for family, name in [("controller", "controller"), ("agent", "agent"), ("hello", "helloworld"),
                         ("world", "helloworld"), ("world-v2", "helloworld")]:
        fam = f"ecsmesh-{CLUSTER}-{family}"
        td = ecs.describe_task_definition(taskDefinition=fam)["taskDefinition"]
        uri = repos[f"ecsmesh-{CLUSTER}/{name}"]["repositoryUri"]
        assert td["containerDefinitions"][0]["image"] == f"{uri}@{images[name]['digest']}", (fam, td)

    # A second up: every image found in the registry, nothing changes.
    again = ctl(moto, subnet, tmp_path, "up", *push)
    assert changes(again) == [], changes(again)
    assert all(s["action"] == "unchanged" for s in again["steps"] if s["kind"] == "image")

    # down removes the repositories (and everything else) it made.
    down = ctl(moto, subnet, tmp_path, "down")
    assert sorted(s["name"] for s in down["steps"]
                  if s["kind"] == "ecr-repository" and s["action"] == "delete") == sorted(repos)
    assert ecr.describe_repositories()["repositories"] == []


def test_build_images_builds_then_pushes_what_it_built(moto, registry, subnet, tmp_path):
    """The flag itself: scripts/images.sh (a dev build, as `make test` has
    just made: cached) into a fresh directory, then the same push."""
    fresh = tmp_path / "built"
    report = ctl(moto, subnet, tmp_path, "up", "--build-images", "--images-dir", str(fresh),
                 "--registry-endpoint", f"http://{registry}", cluster="built",
                 env={"IMAGES_PROFILE": "dev"})
    listing = [line.split() for line in (fresh / "images.txt").read_text().splitlines()]
    assert sorted(row[0] for row in listing) == ["agent", "controller", "helloworld"]
    token = client(moto, "ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    creds = base64.b64decode(token).decode()
    ecs = client(moto, "ecs")
    for name, _tag, digest, _size in listing:
        pinned = [s["name"] for s in report["steps"] if s["kind"] == "image"
                  and s["name"].endswith(f"/ecsmesh-built/{name}@{digest}")]
        assert len(pinned) == 1, report
        got = run("skopeo", "inspect", "--tls-verify=false", "--creds", creds, "--format", "{{.Digest}}",
                  f"docker://{registry}/ecsmesh-built/{name}@{digest}")
        assert got.stdout.strip() == digest
    td = ecs.describe_task_definition(taskDefinition="ecsmesh-built-controller")["taskDefinition"]
    controller = next(row for row in listing if row[0] == "controller")
    assert td["containerDefinitions"][0]["image"].endswith(f"/ecsmesh-built/controller@{controller[2]}")
    ctl(moto, subnet, tmp_path, "down", cluster="built")
