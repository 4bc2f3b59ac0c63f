"""The ``revproxy`` command: run | check | version.

Rule of this room: user-facing. A bad config prints every problem (file, key, reason) and
exits non-zero; nothing here prints a stack trace for a mistake the user can fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from revproxy import __version__
from revproxy.config import Config
from revproxy.config_load import load_config, load_config_text, summary
from revproxy.errors import ConfigError

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def default_conf_dir() -> Path:
    """``./conf`` in a checkout, ``/etc/revproxy`` when installed."""
    here = Path.cwd()
    if (here / "conf").is_dir() and (here / "pyproject.toml").is_file():
        return here / "conf"
    return Path("/etc/revproxy")


def _print_problems(exc: ConfigError) -> None:
    print(f"revproxy: configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
    for p in exc.problems:
        print(f"  {p}", file=sys.stderr)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.conf))
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    print(summary(config))
    print("configuration OK")
    return EXIT_OK


def _run_loop(coro_main: object) -> int:
    """Run with uvloop when present (Linux), else the default asyncio loop."""
    use_uvloop = os.environ.get("REVPROXY_LOOP", "auto") != "asyncio"
    if use_uvloop:
        try:
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return int(runner.run(coro_main))  # type: ignore[arg-type]
        except ImportError:
            pass
    with asyncio.Runner() as runner:
        return int(runner.run(coro_main))  # type: ignore[arg-type]


async def _serve(load_files: object, banner: str | None, demo_origin: bool) -> int:
    from revproxy.demo import start_demo_origin
    from revproxy.supervisor import Instance

    origin = None
    if demo_origin:
        origin, port = await start_demo_origin()
        assert callable(load_files)
        loader = load_files(port)
    else:
        loader = load_files
    assert callable(loader)
    instance = Instance(loader)
    try:
        await instance.start()
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    gen = instance.generation
    assert gen is not None
    for lst in gen.config.listeners:
        logging.getLogger("revproxy").info(
            "listener=%s ready on %s", lst.name, ", ".join(str(b) for b in lst.bind)
        )
    if banner:
        print(banner, flush=True)
    try:
        await instance.serve_until_stopped()
    finally:
        if origin is not None:
            origin.close()
    logging.getLogger("revproxy").info("stopped")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    if args.demo:
        from revproxy.demo import DEMO_HTTP_PORT, DEMO_HTTPS_PORT, demo_config

        state = Path(args.state_dir or Path.home() / ".local" / "state" / "revproxy")

        def demo_loader(port: int) -> object:
            files = demo_config(state, port)

            def load() -> Config:
                return load_config_text(files)

            return load

        banner = (
            "revproxy demo is up: an origin on loopback behind "
            f"https://localhost:{DEMO_HTTPS_PORT} "
            f"(and http://localhost:{DEMO_HTTP_PORT} redirecting to it).\n"
            f"Try:  curl --cacert {state / 'demo-cert.pem'} https://localhost:{DEMO_HTTPS_PORT}/\n"
            "Stop with Ctrl-C."
        )
        return _run_loop(_serve(demo_loader, banner, demo_origin=True))
    conf = Path(args.conf)

    def load() -> Config:
        return load_config(conf)

    return _run_loop(_serve(load, None, demo_origin=False))


def cmd_version(_args: argparse.Namespace) -> int:
    print(f"revproxy {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revproxy", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def conf_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--conf",
            default=str(default_conf_dir()),
            help="configuration directory (default: ./conf in a checkout, else /etc/revproxy)",
        )

    p_run = sub.add_parser("run", help="run the proxy")
    conf_arg(p_run)
    p_run.add_argument("--demo", action="store_true", help="run the embedded demo configuration")
    p_run.add_argument("--state-dir", help="where generated files go (demo certificate)")
    p_run.add_argument("--log-level", default="info")
    p_run.set_defaults(func=cmd_run)

    p_check = sub.add_parser("check", help="validate the configuration and print a summary")
    conf_arg(p_check)
    p_check.set_defaults(func=cmd_check)

    p_version = sub.add_parser("version", help="print the version")
    p_version.set_defaults(func=cmd_version)

    from revproxy.cert_cli import add_parser as add_cert_parser  # revproxy cert issue|renew|list

    add_cert_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
