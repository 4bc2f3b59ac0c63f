"""Users and authentication end to end: an htpasswd file made by Apache's ``htpasswd`` and one
made by ``revproxy passwd``, curl ``--basic`` and ``--digest``, what the origin receives."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from harness import LOOPBACK, REPO, Origin, Proxy, curl, curl_http, free_port, toml_path

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("real_peers")]


def passwd(*args: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "revproxy", "passwd", *args],
        input=password + "\n", capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def get(port: int, path: str, *args: str) -> tuple[int, str]:
    res = curl("-o", "-", "-w", "\n%{http_code}", *args, f"http://{LOOPBACK}:{port}{path}")
    body, _, code = res.stdout.decode().rpartition("\n")
    return int(code), body


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tool = shutil.which("htpasswd")
    if tool is None:
        pytest.fail("htpasswd not found (apt-get install apache2-utils)")
    d = tmp_path_factory.mktemp("auth")
    staff = d / "staff.htpasswd"
    subprocess.run([tool, "-cbB", str(staff), "apache-user", "apache-pw"], check=True,
                   capture_output=True)  # fmt: skip
    made = passwd(str(staff), "ours", password="our-pw")
    assert made.returncode == 0, made.stderr
    digest = d / "staff.htdigest"
    made = passwd(str(digest), "dora", "--digest", "--realm", "Staff", password="dora-pw")
    assert made.returncode == 0, made.stderr
    with Origin() as origin:
        port = free_port()
        config = f"""
[users.staff]
file = {toml_path(staff)}

[users.digest]
file = {toml_path(digest)}

[[listener]]
name = "web"
bind = ["{LOOPBACK}:{port}"]

[[route]]
path = "/basic/"
pool = "o"
auth = {{ users = "staff", realm = "Staff", user_header = "X-Remote-User" }}

[[route]]
path = "/digest/"
pool = "o"
auth = {{ users = "digest", scheme = "digest", realm = "Staff" }}

[[route]]
path = "/pass/"
pool = "o"
auth = {{ users = "staff", pass_credentials = true }}

[[route]]
pool = "o"

[pool.o]
servers = ["{origin.address}"]
"""
        with Proxy(d, config, ports=[port]) as proxy:
            yield port, origin, proxy


def test_no_credentials_get_a_challenge(site) -> None:  # type: ignore[no-untyped-def]
    port, origin, _ = site
    origin.reset()
    r = curl_http(f"http://{LOOPBACK}:{port}/basic/x")
    assert r.status == 401
    assert r.header("www-authenticate") == 'Basic realm="Staff", charset="UTF-8"'
    assert r.body == b"401 Unauthorized\n"
    assert origin.requests() == []


@pytest.mark.parametrize(("user", "password"), [("apache-user", "apache-pw"), ("ours", "our-pw")])
def test_basic_users_from_both_tools(site, user: str, password: str) -> None:  # type: ignore[no-untyped-def]
    port, origin, proxy = site
    origin.reset()
    assert get(port, "/basic/x", "--basic", "-u", f"{user}:{password}",
               "-H", "X-Remote-User: admin")[0] == 200  # fmt: skip
    (seen,) = origin.requests()
    assert seen.header("x-remote-user") == user  # the client's own was removed
    assert not seen.has("authorization")  # credentials stay at the edge
    proxy.wait_access(lambda line: f"user={user}" in line and '"GET /basic/x" 200' in line)


def test_wrong_password_and_unknown_user(site) -> None:  # type: ignore[no-untyped-def]
    port, origin, proxy = site
    origin.reset()
    assert get(port, "/basic/x", "--basic", "-u", "ours:wrong")[0] == 401
    assert get(port, "/basic/x", "--basic", "-u", "nobody:our-pw")[0] == 401
    assert origin.requests() == []
    proxy.wait_access(lambda line: '" 401 ' in line and "refused=auth" in line)


def test_digest(site) -> None:  # type: ignore[no-untyped-def]
    port, origin, _ = site
    origin.reset()
    assert get(port, "/digest/y", "--digest", "-u", "dora:dora-pw")[0] == 200
    assert get(port, "/digest/y", "--digest", "-u", "dora:wrong")[0] == 401
    (seen,) = origin.requests()
    assert seen.target == "/digest/y" and not seen.has("authorization")


def test_pass_credentials(site) -> None:  # type: ignore[no-untyped-def]
    port, origin, _ = site
    origin.reset()
    assert get(port, "/pass/z", "--basic", "-u", "ours:our-pw")[0] == 200
    (seen,) = origin.requests()
    assert (seen.header("authorization") or "").startswith("Basic ")


def test_keep_alive_pays_one_check(site) -> None:  # type: ignore[no-untyped-def]
    """Ten requests on one connection all pass; only the first runs bcrypt, the others are
    answered from the verified-password memory (tests/policy/test_auth.py counts it; the
    times are printed here, not asserted)."""
    port, _, _ = site
    urls = [f"http://{LOOPBACK}:{port}/basic/k{i}" for i in range(10)]
    outputs = [arg for url in urls for arg in ("-o", "/dev/null", url)]
    res = curl("--basic", "-u", "ours:our-pw", "-w", "%{http_code} %{time_total}\n", *outputs)
    lines = res.stdout.decode().split()
    codes, times = lines[0::2], [float(t) for t in lines[1::2]]
    assert codes == ["200"] * 10
    print("per request (s):", " ".join(f"{t:.4f}" for t in times))
