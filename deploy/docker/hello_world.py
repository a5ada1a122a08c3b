"""The demo app. ROLE=world answers TEXT (default "world"); ROLE=hello calls
http://world/ through the host's ecsmesh agent and answers "hello <answer>".

The proxy is http_proxy=$HOST_IP:4140. HOST_IP is taken from the environment
when set, else from EC2 IMDSv2 (token PUT, then local-ipv4; the launch
template's hop limit 2 lets a bridge-mode container reach it). l5d-* headers
are forwarded so per-request dtab overrides reach the downstream call."""
import http.server
import os
import urllib.request

ROLE = os.environ.get("ROLE", "world")
TEXT = os.environ.get("TEXT", "world")
PORT = int(os.environ.get("PORT", "7777"))
IMDS = os.environ.get("IMDS_ENDPOINT", "http://169.254.169.254")


def host_ip():
    if os.environ.get("HOST_IP"):
        return os.environ["HOST_IP"]
    req = urllib.request.Request(f"{IMDS}/latest/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    token = urllib.request.urlopen(req, timeout=2).read().decode()
    req = urllib.request.Request(f"{IMDS}/latest/meta-data/local-ipv4",
                                 headers={"X-aws-ec2-metadata-token": token})
    return urllib.request.urlopen(req, timeout=2).read().decode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if ROLE == "hello":
            proxy = urllib.request.ProxyHandler({"http": f"http://{host_ip()}:4140"})
            headers = {k: v for k, v in self.headers.items() if k.lower().startswith("l5d-")}
            req = urllib.request.Request(os.environ.get("WORLD_URL", "http://world/"), headers=headers)
            try:
                body = "hello " + urllib.request.build_opener(proxy).open(req, timeout=5).read().decode()
                code = 200
            except Exception as exc:  # the demo shows the error instead of hiding it
                body, code = f"hello: world failed: {exc}", 502
        else:
            body, code = TEXT, 200
        data = (body.strip() + "\n").encode()
        self.send_response(code)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
