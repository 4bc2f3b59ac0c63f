"""HTTP rules benchmark (a benchmark, never a test): ``scripts/bench rules [--quick]``.

On loopback only, every load loop bounded in time (wrk -d) and count:

- **Cache hit vs proxied**: the same small response (nginx, ``Cache-Control: max-age=3600``)
  through a plain route and through a ``cache`` route, wrk -t1 -c50 each, same revproxy
  process: req/s and CPU-µs per request of revproxy (issue 17's goal: a hit >= 1.5x the req/s
  of the same response proxied).
- **Compression cost**: a 100 KiB JSON document through a plain route and through a ``compress``
  route, wrk asking ``Accept-Encoding: zstd`` (then br, gzip): the difference in revproxy's
  CPU-µs per response is what compressing costs (goal: zstd <= 0.5 ms).
- **Plain routes pay nothing**: ``scripts/bench_pipeline.py`` in process, CPU-µs per proxied
  request with and without a second route carrying every rule (``--rules``).

Prints a Markdown table and writes it to its section of docs/benchmarks.md (``--no-write``:
print only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e"), str(REPO / "scripts")]

from bench_egress import _cpu_seconds  # noqa: E402
from bench_sections import provenance, write_section  # noqa: E402
from harness import LOOPBACK, Proxy, _descendants, free_port  # noqa: E402
from l4_peers import nginx  # noqa: E402

DOC = json.dumps(
    [{"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "price": i * 1.5} for i in range(1500)]
).encode()


def wrk(
    url: str, seconds: int, pids: list[int], headers: tuple[str, ...] = ()
) -> tuple[float, float]:
    """(requests per second, CPU-µs of ``pids`` per request) of one bounded wrk run."""
    cpu = _cpu_seconds(pids)
    args = ["taskset", "-c", "1", "wrk", "-t1", "-c50", f"-d{seconds}s"]
    for h in headers:
        args += ["-H", h]
    res = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 30)
    used = _cpu_seconds(pids) - cpu
    for line in res.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
            return rps, used / (rps * seconds) * 1e6 if rps else 0.0
    raise RuntimeError(res.stdout + res.stderr)


def pipeline(rules: bool, requests: int) -> float:
    args = [sys.executable, str(REPO / "scripts" / "bench_pipeline.py"), "--requests",
            str(requests), "--rounds", "3"] + (["--rules"] if rules else [])  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True).stdout
    return float(out.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs")
    parser.add_argument(
        "--no-write", dest="write", action="store_false",
        help="print only (by default the figures also go to docs/benchmarks.md)",
    )  # fmt: skip
    args = parser.parse_args()
    seconds = 3 if args.quick else 10
    if shutil.which("wrk") is None:
        print("bench rules needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="revproxy-bench-rules-"))
    (directory / "doc.json").write_bytes(DOC)
    rows: list[tuple[str, str]] = []
    try:
        server = (
            "location /small { add_header Cache-Control 'max-age=3600'; "
            f"return 200 '{'x' * 100}'; }}\n"
            f"        location /doc.json {{ root {directory}; default_type application/json; }}"
        )
        with nginx(directory, server) as origin:
            port = free_port()
            config = f"""
[global]
access_log = "off"
keepalive_timeout = "300s"

[[listener]]
name = "http"
bind = ["{LOOPBACK}:{port}"]

[[route]]
path = "/c/"
pool = "o"
strip_prefix = "/c"
cache = {{ ttl_max = "1h" }}

[[route]]
path = "/z/"
pool = "o"
strip_prefix = "/z"
compress = {{}}

[[route]]
pool = "o"

[pool.o]
servers = ["{LOOPBACK}:{origin}"]
keepalive = 256
"""
            with Proxy(directory, config, ports=[port]) as proxy:
                time.sleep(0.5)
                pids = [proxy.pid, *_descendants(proxy.pid)]
                base = f"http://{LOOPBACK}:{port}"
                proxied = wrk(f"{base}/small", seconds, pids)
                cached = wrk(f"{base}/c/small", seconds, pids)
                rows += [
                    ("small response proxied: req/s, CPU-µs/req",
                     f"{proxied[0]:,.0f}, {proxied[1]:.1f}"),
                    ("same response, cache hit: req/s, CPU-µs/req",
                     f"{cached[0]:,.0f}, {cached[1]:.1f}"),
                    ("cache hit / proxied (req/s; goal >= 1.5x)",
                     f"{cached[0] / proxied[0]:.2f}x"),
                ]  # fmt: skip
                plain = wrk(f"{base}/doc.json", seconds, pids, ("Accept-Encoding: zstd",))
                rows.append(("100 KiB JSON, not compressed: CPU-µs/response", f"{plain[1]:.0f}"))
                for enc in ("zstd", "br", "gzip"):
                    z = wrk(f"{base}/z/doc.json", seconds, pids, (f"Accept-Encoding: {enc}",))
                    rows.append(
                        (f"100 KiB JSON, {enc}: CPU-µs/response (cost of compressing)",
                         f"{z[1]:.0f} ({z[1] - plain[1]:+.0f})")
                    )  # fmt: skip
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    requests = 20_000 if args.quick else 50_000
    without, with_rules = pipeline(False, requests), pipeline(True, requests)
    rows.append(
        ("plain request, in process (bench_pipeline): CPU-µs without / with a route of rules",
         f"{without:.1f} / {with_rules:.1f} ({(with_rules / without - 1) * 100:+.1f} %)")
    )  # fmt: skip
    table = "| scenario | result |\n|---|---|\n" + "".join(
        f"| {name} | {value} |\n" for name, value in rows
    )
    print(table)
    if args.write:
        write_section(
            "rules",
            "HTTP rules: cache hits, compression, plain requests (scripts/bench rules)",
            f"{provenance(args.quick)}; wrk -t1 -c50 over loopback against one revproxy "
            "process (nginx origin); the last row runs in process.\n\n" + table,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
