"""The controller's dashboard in a real browser, while traffic flows through the demo mesh.

Starts `scripts/demo.sh` (the whole mesh: moto's ECS, the controller, two agents, the
hello/world processes) and leaves it up, sends bounded curl traffic through both agents,
then loads http://127.0.0.1:9991/ in headless Chromium (Debian `chromium`) and checks
that the services, their success rates and both agents appear, and that the dtab
playground shows a delegation with its endpoints. Also checks the Grafana dashboard
against the metrics the live agents and controller export.

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


class Text(HTMLParser):
    """The page's text, and its table rows as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.text, self.rows, self._row, self._cell = [], [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

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

    rows = {r[0]: r for r in page.rows if r}
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
