"""Per-route limits on size and time: ``max_body_size`` (413) and ``timeouts`` (504) override
the global and pool values for one route only (curl against a recording origin)."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import LOOPBACK, Origin, Proxy, Reply, Seen, curl, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def slow(req: Seen) -> Reply:
    return Reply(body=b"late\n", delay=1.5 if req.target.endswith("/slow") else 0.0)


def test_route_overrides(tmp_path: Path) -> None:
    with Origin(handler=slow) as origin:
        port = free_port()
        config = f"""
[global]
max_body_size = "1m"

[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
path = "/small/"
pool = "o"
max_body_size = "1k"
timeouts = {{ response = "500ms" }}

[[route]]
pool = "o"

[pool.o]
servers = ["{origin.address}"]
"""

        def post(path: str, size: int) -> int:
            res = curl("-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "@-",
                       f"http://{LOOPBACK}:{port}{path}", stdin=b"x" * size)  # fmt: skip
            return int(res.stdout)

        def get(path: str) -> int:
            res = curl("-o", "/dev/null", "-w", "%{http_code}", f"http://{LOOPBACK}:{port}{path}")
            return int(res.stdout)

        with Proxy(tmp_path, config, ports=[port]):
            assert post("/small/a", 1000) == 200
            assert post("/small/a", 2000) == 413  # the route's limit
            assert post("/big/a", 2000) == 200  # the global one
            assert post("/big/a", 2 * 1024 * 1024) == 413
            assert get("/small/slow") == 504  # the route's 500 ms
            assert get("/other/slow") == 200  # the pool's 60 s
        assert [r.target for r in origin.requests()].count("/small/a") == 1
