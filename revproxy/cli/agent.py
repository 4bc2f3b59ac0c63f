"""``revproxy agent [-c agent.toml]`` and ``revproxy agent enroll --token TOKEN -c agent.toml``:
the origin host's side of the reverse tunnel (docs/tunnel.md).

Rule of this room: a bad agent.toml prints every problem (file, key path, reason) and exits 2;
enrolment failures say why and what to do, and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from revproxy.config.agent import AgentConfig, load_agent_config
from revproxy.errors import ConfigError
from revproxy.proto.tunnel import Token, TunnelFormatError
from revproxy.tunnel.agent import Agent
from revproxy.tunnel.enrol import Credentials, EnrolError, enrol

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RUNTIME = 1
DEFAULT_CONF = "/etc/revproxy/agent.toml"


def _load(args: argparse.Namespace) -> AgentConfig | int:
    try:
        return load_agent_config(Path(args.conf))
    except ConfigError as exc:
        print(f"revproxy agent: configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_enroll(args: argparse.Namespace) -> int:
    config = _load(args)
    if isinstance(config, int):
        return config
    try:
        token = Token.parse(args.token)
    except TunnelFormatError as exc:
        print(f"revproxy agent: --token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if token.name != config.name:
        print(
            f"revproxy agent: the token is for tunnel {token.name!r} but {args.conf} says "
            f"name = {config.name!r}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    creds = Credentials(config.credentials)
    try:
        asyncio.run(enrol(token, config.servers[0], creds))
    except EnrolError as enrol_error:
        print(f"revproxy agent: enrolment failed: {enrol_error}", file=sys.stderr)
        return EXIT_RUNTIME
    print(
        f"revproxy agent: enrolled as {config.name!r}; credentials in {creds.folder}",
        file=sys.stderr,
    )
    return EXIT_OK


async def _run(config: AgentConfig, creds: Credentials) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Agent(config, creds).run(stop)
    except OSError as exc:
        print(f"revproxy agent: a [[forward]] cannot listen: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_agent(args: argparse.Namespace) -> int:
    if args.action == "enroll":
        if not args.token:
            print("revproxy agent enroll: --token is required", file=sys.stderr)
            return EXIT_CONFIG
        return cmd_enroll(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = _load(args)
    if isinstance(config, int):
        return config
    creds = Credentials(config.credentials)
    if not creds.present():
        print(
            f"revproxy agent: no credentials in {creds.folder}: enrol first "
            "(revproxy tunnel enroll NAME on the proxy, then revproxy agent enroll --token ...)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        if os.environ.get("REVPROXY_LOOP", "auto") == "asyncio":
            raise ImportError
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run(config, creds))
    except ImportError:
        return asyncio.run(_run(config, creds))


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "agent", help="run the tunnel agent on an origin host (or: agent enroll --token ...)"
    )
    p.add_argument("action", nargs="?", choices=["run", "enroll"], default="run")
    p.add_argument("-c", "--conf", default=DEFAULT_CONF, help="agent.toml")
    p.add_argument("--token", help="enroll: the token `revproxy tunnel enroll NAME` printed")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_agent)
