"""``revproxy tunnel enroll|revoke|list``: the proxy's side of agent enrolment (docs/tunnel.md).

Rule of this room: a token goes alone to stdout (so that a script can capture it), every
message to stderr. The tunnel CA and the enrolment state live under ``[global] state_dir`` of
the configuration named by ``-c``; a running instance reads them from there (revocation takes
effect on live connections within a second).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from revproxy.cli.conf import default_conf_dir
from revproxy.cli.conf import load as load_conf
from revproxy.config.values import parse_duration
from revproxy.errors import ConfigError
from revproxy.proto.tunnel import TunnelFormatError
from revproxy.tunnel.ca import DEFAULT_TOKEN_TTL, TunnelCA

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _ca(args: argparse.Namespace, name: str | None) -> TunnelCA | int:
    try:
        config = load_conf(Path(args.conf))
    except ConfigError as exc:
        print(f"revproxy: configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG
    if config.global_.state_dir is None:
        print(
            "revproxy: [global] state_dir is not set: the tunnel CA lives there "
            '(write e.g. state_dir = "/var/lib/revproxy")',
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if name is not None and config.tunnel(name) is None:
        names = ", ".join(t.name for t in config.tunnels) or "none"
        print(
            f"revproxy: no [tunnel.{name}] in {args.conf} (defined tunnels: {names}); "
            "add it to say who may register",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return TunnelCA(config.global_.state_dir)


def cmd_enroll(args: argparse.Namespace) -> int:
    ca = _ca(args, args.name)
    if isinstance(ca, int):
        return ca
    try:
        ttl = parse_duration(args.ttl) if args.ttl else DEFAULT_TOKEN_TTL
        token = ca.issue_token(args.name, ttl)
    except (ValueError, TunnelFormatError) as exc:
        print(f"revproxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as os_error:
        print(f"revproxy: cannot write the tunnel state in {ca.dir}: {os_error}", file=sys.stderr)
        return EXIT_RUNTIME
    print(token.encode())
    print(
        f"revproxy: one-time token for tunnel {args.name!r} (expires in {ttl:g} s); on the "
        "origin host run:  revproxy agent enroll --token TOKEN -c agent.toml",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    ca = _ca(args, None)
    if isinstance(ca, int):
        return ca
    try:
        count = ca.revoke(args.name)
    except OSError as exc:
        print(f"revproxy: cannot write the tunnel state in {ca.dir}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"revproxy: revoked {count} certificate(s) of tunnel {args.name!r}; live connections "
        "close within a second",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    ca = _ca(args, None)
    if isinstance(ca, int):
        return ca
    revoked = ca.revoked()
    for serial, name in sorted(ca.names().items(), key=lambda kv: kv[1]):
        state = "revoked" if serial in revoked else "valid"
        print(f"{name}\t{serial}\t{state}")
    return EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tunnel", help="reverse tunnel: enroll NAME | revoke NAME | list")
    tsub = p.add_subparsers(dest="tunnel_command", required=True, metavar="ACTION")

    def conf_arg(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "-c", "--conf", default=str(default_conf_dir()), help="configuration directory"
        )

    p_enroll = tsub.add_parser("enroll", help="print a one-time token for an agent named NAME")
    p_enroll.add_argument("name")
    p_enroll.add_argument("--ttl", help='how long the token is good for (default "1h")')
    conf_arg(p_enroll)
    p_enroll.set_defaults(func=cmd_enroll)
    p_revoke = tsub.add_parser("revoke", help="revoke every certificate of NAME")
    p_revoke.add_argument("name")
    conf_arg(p_revoke)
    p_revoke.set_defaults(func=cmd_revoke)
    p_list = tsub.add_parser("list", help="certificates issued: name, serial, state")
    conf_arg(p_list)
    p_list.set_defaults(func=cmd_list)
