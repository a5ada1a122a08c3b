"""The controller's dashboard in a real browser, while traffic flows through the demo mesh.

Starts `scripts/demo.sh` (the whole mesh: moto's ECS, the controller, two agents, the
hello/world processes) and leaves it up, sends bounded curl traffic through both agents,
then loads http://127.0.0.1:9991/ in headless Chromium (Debian `chromium`) and checks
that the services, their success rates and both agents appear, and that the dtab
playground shows a delegation with its endpoints. Stores two service policies (/svc and
/svc/world, with ecsmeshctl) and checks that the services table shows the policy each
service gets and that the page explains why (issue #18), as /api/policies/explain does.
Also checks the Grafana dashboard against the metrics the live agents and controller export.

    $HOME/.cache/ecsmesh/venv/bin/python -m pytest tests/e2e/test_dashboard.py -q

DASHBOARD_SCREENSHOT=docs/dashboard.png keeps the screenshot (the README's image).
"""
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_demo import PORTS, listening

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "http://127.0.0.1:9991"
HOSTS = ("127.0.1.1", "127.0.1.2")
# Loopback only, and no proxy for the test's own calls.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url, timeout=5):
    with NO_PROXY.open(url, timeout=timeout) as r:
        return r.read().decode()


def get_status(url, timeout=5):
    """(status, body), an HTTP error's too."""
    try:
        with NO_PROXY.open(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return name
    pytest.fail("chromium is not installed (Debian package chromium; `make deps` installs it)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    busy = [f"{h}:{p}" for h, p in PORTS if listening(h, p)]
    if busy:
        pytest.skip(f"demo ports in use (a demo running?): {busy}")
    demo_dir = tmp_path_factory.mktemp("dashboard-demo")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    env.update(DEMO_PROFILE=os.environ.get("DEMO_PROFILE", "debug"), ECSMESH_DEMO_DIR=str(demo_dir),
               ECSMESH_SUMMARY_INTERVAL="1s")
    out = open(demo_dir / "demo.out", "w")
    proc = subprocess.Popen(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while "the demo is up" not in (demo_dir / "demo.out").read_text():
            assert proc.poll() is None, (demo_dir / "demo.out").read_text()
            assert time.monotonic() < deadline, "the demo did not come up in 15 minutes"
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["bash", "scripts/demo.sh", "down"], cwd=ROOT, env=env, timeout=120)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()


@pytest.fixture(scope="module")
def traffic(demo):
    """curl through both agents (hello calls world; and a name nothing serves), bounded
    in count and time, until the module is done."""
    stop = threading.Event()

    def run():
        started = time.monotonic()
        for _ in range(60):  # at most 60 rounds of 23 requests
            if stop.is_set() or time.monotonic() - started > 120:
                return
            for host in HOSTS:
                urls = ["http://hello/"] * 10 + ["http://nowhere/"]
                subprocess.run(["curl", "-s", "-x", f"{host}:4140", *urls], env=demo, timeout=30,
                               stdout=subprocess.DEVNULL)
            time.sleep(0.5)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    # Wait until the controller has the traffic from both agents' summaries.
    deadline = time.monotonic() + 60
    while True:
        overview = json.loads(get(f"{ADMIN}/api/overview"))
        names = {s["name"] for s in overview["services"] if s["requests_per_second"] > 0}
        if {"/svc/hello", "/svc/world", "/svc/nowhere"} <= names and \
                all(a["stats"]["requests_per_second"] > 0 for a in overview["agents"]) and \
                len(overview["agents"]) == 2:
            break
        assert time.monotonic() < deadline, overview
        time.sleep(0.5)
    yield overview
    stop.set()
    worker.join(timeout=60)


# The demo's service policies (stored by the `policies` fixture).
POLICIES = {"/svc": "timeouts: {total: 30s}", "/svc/world": "timeouts: {total: 20s, attempt: 10s}"}


@pytest.fixture(scope="module")
def policies(demo):
    """Stores POLICIES with the demo's ecsmeshctl (its settings file holds the token);
    their versions, by prefix, as /api/policies lists them."""
    target = Path(demo.get("CARGO_TARGET_DIR", Path.home() / ".cache/ecsmesh/target"))
    ctl = target / demo["DEMO_PROFILE"] / "ecsmeshctl"
    env = dict(demo, ECSMESH_CTL_CONFIG=str(Path(demo["ECSMESH_DEMO_DIR"]) / "ecsmeshctl.yaml"))
    for prefix, policy in POLICIES.items():
        done = subprocess.run([str(ctl), "policy", "set", prefix, policy], env=env,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
    listed = json.loads(get(f"{ADMIN}/api/policies"))["policies"]
    assert sorted(p["prefix"] for p in listed) == sorted(POLICIES), listed
    return {p["prefix"]: p["version"] for p in listed}


class Text(HTMLParser):
    """The page's text, its table rows as lists of cell texts, and those rows by
    table id."""

    def __init__(self):
        super().__init__()
        self.text, self.rows, self._row, self._cell = [], [], None, None
        self.tables, self._table = {}, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.tables.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            if self._table is not None:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def browse(url, tmp_path, screenshot=None):
    """The DOM after the page's scripts ran, as headless Chromium renders it."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-proxy-server", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1360,1080", "--virtual-time-budget=4000"]
    if screenshot:
        shot = subprocess.run(args + [f"--screenshot={screenshot}", url], capture_output=True,
                              text=True, timeout=120)
        assert shot.returncode == 0, shot.stderr
    dom = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    page = Text()
    page.feed(dom.stdout)
    return dom.stdout, page


def test_dashboard_shows_services_success_rates_and_agents(traffic, tmp_path):
    shot = tmp_path / "dashboard.png"
    html, page = browse(f"{ADMIN}/?path=/svc/world", tmp_path, screenshot=shot)
    assert shot.stat().st_size > 10_000
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copy(shot, ROOT / os.environ["DASHBOARD_SCREENSHOT"])

    rows = {r[0]: r for r in page.tables["services"] if r}
    # Services: hello and world succeed; nowhere (no such service in ECS) fails.
    for name in ("/svc/hello", "/svc/world"):
        assert name in rows, page.rows
        assert rows[name][1] == "100%", rows[name]
        assert float(rows[name][2]) > 0, rows[name]  # requests/s
        assert rows[name][5].endswith("ms"), rows[name]  # p50
    assert rows["/svc/nowhere"][1] == "0%", rows["/svc/nowhere"]
    # Agents: both, converged, with traffic.
    agents = [r for r in page.rows if r and r[0].startswith("i-")]
    assert len(agents) == 2, page.rows
    assert sorted(a[1] for a in agents) == list(HOSTS), agents
    assert all(a[4] == "yes" for a in agents), agents
    assert all(a[5] not in ("–", "") for a in agents), agents  # a success rate
    text = " ".join(page.text)
    # The cards: two of two agents converged, a global success rate below 100 %
    # (the /svc/nowhere requests fail).
    assert re.search(r'id="agents-count">2/2<', html), html
    rate = re.search(r'id="success-rate">([0-9.]+)%<', html)
    assert rate and 50 < float(rate.group(1)) < 100, html
    # The playground, opened from the link: world's delegation down to its endpoints.
    assert "/#/ecs/demo/world" in text, text
    assert re.search(r'class="endpoint">127\.0\.1\.[12]:\d+', html), html


def test_playground_reports_a_malformed_dtab(traffic, tmp_path):
    html, _ = browse(f"{ADMIN}/?path=/svc/world&dtab=/svc/world%20%3D%3E", tmp_path)
    assert re.search(r'class="error">[^<]*offset', html), html


def test_grafana_dashboard_uses_only_exported_metrics(traffic):
    exported = get(f"http://{HOSTS[0]}:9990/metrics") + get(f"{ADMIN}/metrics")
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", exported, re.M))
    # Families with no series yet (no retry has happened) still declare their type.
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", exported, re.M):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    dashboard = json.loads((ROOT / "deploy/grafana/ecsmesh.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:ecsmesh|process)_[a-z_]+)", e)}
    assert used, exprs
    missing = sorted(used - names)
    assert not missing, f"the Grafana dashboard queries metrics nobody exports: {missing}"


def test_prometheus_example_config_is_valid():
    check = subprocess.run(["promtool", "check", "config", "deploy/prometheus/prometheus.yml"],
                           cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_services_show_their_policy_and_the_page_explains_why(traffic, policies, tmp_path):
    v_svc, v_world = policies["/svc"], policies["/svc/world"]
    # What the page asks for: /svc/world/v2 gets /svc/world's policy (the most
    # specific stored prefix), /svc/hello gets /svc's, /x the agents' defaults.
    def explain(service):
        query = urllib.parse.urlencode({"service": service})
        return json.loads(get(f"{ADMIN}/api/policies/explain?{query}"))

    e = explain("/svc/world/v2")
    assert [(c["prefix"], c["stored"], c["chosen"]) for c in e["candidates"]] == [
        ("/svc/world/v2", False, False), ("/svc/world", True, True), ("/svc", True, False)], e
    assert (e["chosen"]["prefix"], e["chosen"]["version"]) == ("/svc/world", v_world), e
    assert explain("/svc/hello")["chosen"]["prefix"] == "/svc"
    assert explain("/x")["chosen"] is None
    status, body = get_status(f"{ADMIN}/api/policies/explain?service=/" + "z" * 10_000)
    assert status == 400 and len(body) < 200 and "zzzz" not in body, (status, body)

    # The services table: each service's policy, prefix and version (the overview is
    # polled every 2 s: wait for one that has the policies).
    deadline = time.monotonic() + 30
    while True:
        html, page = browse(f"{ADMIN}/?policy=/svc/world/v2", tmp_path)
        rows = {r[0]: r for r in page.tables["services"] if r}
        if rows.get("/svc/world", [""])[-1] == f"/svc/world v{v_world}":
            break
        assert time.monotonic() < deadline, page.tables["services"]
        time.sleep(1)
    assert rows["/svc/hello"][-1] == f"/svc v{v_svc}", rows
    assert rows["/svc/nowhere"][-1] == f"/svc v{v_svc}", rows
    # Each is a link that explains it.
    assert 'data-explain="/svc/hello"' in html, html
    # The stored policies, with their canonical JSON.
    stored = {r[0]: r for r in page.tables["policies"] if r}
    assert stored["/svc/world"][1] == str(v_world), stored
    assert '"total":"20s"' in stored["/svc/world"][2].replace(" ", ""), stored
    # The explanation opened from the link: the candidates most specific first, which
    # applies, and the policy's JSON.
    candidates = re.findall(r'<li class="candidate (\w+)" data-prefix="([^"]+)">', html)
    assert candidates == [("absent", "/svc/world/v2"), ("chosen", "/svc/world"),
                          ("stored", "/svc")], html
    assert re.search(r'class="result verdict">.*/svc/world/v2.*/svc/world.*version ' + str(v_world),
                     html), html
    pretty = re.search(r'<pre class="policy-json">([^<]*)</pre>', html)
    assert pretty and '"attempt": "10s"' in pretty.group(1), html

    # A service no stored prefix matches: the defaults; a malformed name: the error.
    html, _ = browse(f"{ADMIN}/?policy=/other/name", tmp_path)
    assert "gets the agents' defaults" in html, html
    assert re.findall(r'<li class="candidate (\w+)"', html) == ["absent", "absent"], html
    html, _ = browse(f"{ADMIN}/?policy=not-a-path", tmp_path)
    assert re.search(r'class="error">invalid service name', html), html
