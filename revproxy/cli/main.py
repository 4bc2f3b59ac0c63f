"""The ``revproxy`` command: run | check | reload | ctl | cert | tunnel | agent | version.

Rule of this room: user-facing. A bad config prints every problem (file, key, reason) and
exits non-zero; nothing here prints a stack trace for a mistake the user can fix.

``run`` and ``worker`` hold SIGHUP, SIGUSR1, SIGTERM and SIGINT from their first line
(runtime/early_signals.py): this module imports only what that needs at the top, and the rest
where it is used, so that a signal that comes while revproxy starts finds it ready.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from revproxy import __version__
from revproxy.runtime.early_signals import EARLY

if TYPE_CHECKING:
    from revproxy.config.model import Config
    from revproxy.errors import ConfigError

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _print_problems(exc: ConfigError) -> None:
    print(f"revproxy: configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
    for p in exc.problems:
        print(f"  {p}", file=sys.stderr)


def _setup_logging(level: str, who: str = "") -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_check(args: argparse.Namespace) -> int:
    from revproxy.cli.conf import load as load_conf
    from revproxy.config.summary import summary
    from revproxy.errors import ConfigError

    try:
        config = load_conf(Path(args.conf))
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    print(summary(config))
    print("configuration OK")
    return EXIT_OK


def _run_loop(coro_main: object) -> int:
    """Run with uvloop when present (Linux), else the default asyncio loop."""
    import asyncio

    from revproxy.runtime.allocator import tune_allocator
    from revproxy.runtime.fd_limit import raise_nofile_limit

    tune_allocator()
    raise_nofile_limit()  # workers inherit it
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


async def _serve(
    load_files: object, banner: str | None, demo_origin: bool, conf_dir: Path | None = None
) -> int:
    import asyncio
    import logging

    from revproxy.cli.demo import start_demo_origin
    from revproxy.errors import CertificateError, ConfigError
    from revproxy.runtime.supervisor import Instance

    if EARLY.stopping:  # SIGTERM or SIGINT already: nothing is bound, nothing to wait for
        logging.getLogger("revproxy").info("stopped while starting")
        return EXIT_OK
    origin = None
    if demo_origin:
        origin, port = await start_demo_origin()
        assert callable(load_files)
        loader = load_files(port)
    else:
        loader = load_files
    assert callable(loader)
    try:
        instance = Instance(loader, conf_dir=conf_dir)
    except CertificateError as no_default:  # its child process could not run
        print(f"revproxy: {no_default}", file=sys.stderr)
        return EXIT_RUNTIME
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a stop during start is a stop, not a kill
        loop.add_signal_handler(sig, instance.request_stop)
    if EARLY.stopping:  # came since the check above: the instance stops once started
        instance.request_stop()
    try:
        await instance.start()
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except RuntimeError as runtime_error:  # workers that would not start
        print(f"revproxy: {runtime_error}", file=sys.stderr)
        return EXIT_RUNTIME
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
    os.environ["REVPROXY_LOG_LEVEL"] = args.log_level  # workers log at the same level
    from revproxy.cli.conf import load as load_conf
    from revproxy.cli.conf import load_text

    if args.demo:
        from revproxy.cli.demo import DEMO_HTTP_PORT, DEMO_HTTPS_PORT, demo_config

        state = Path(args.state_dir or Path.home() / ".local" / "state" / "revproxy")

        def demo_loader(port: int) -> object:
            files = demo_config(state, port)

            def load() -> Config:
                return load_text(files, serving=True)

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
        return load_conf(conf, serving=True)  # certificates read by a child process

    return _run_loop(_serve(load, None, demo_origin=False, conf_dir=conf))


# --- talking to a running instance: reload, ctl ---------------------------------------------


def _peek_settings(conf: Path) -> tuple[Path | None, Path | None]:
    """``[admin] socket`` and ``[global] pid_file`` straight from the TOML files, so that a
    running instance can be found even when the configuration on disk no longer loads."""
    import tomllib

    socket_path = pid_file = None
    for f in sorted(conf.glob("*.toml")):
        try:
            data = tomllib.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        admin, glob = data.get("admin"), data.get("global")
        if isinstance(admin, dict) and isinstance(admin.get("socket"), str):
            socket_path = conf / admin["socket"]  # an absolute path stays as it is
        if isinstance(glob, dict) and isinstance(glob.get("pid_file"), str):
            pid_file = conf / glob["pid_file"]
    return socket_path, pid_file


def _admin_socket(args: argparse.Namespace) -> Path | None:
    if args.socket:
        return Path(args.socket)
    return _peek_settings(Path(args.conf))[0]


def _ask(path: Path, line: str) -> tuple[bool, str]:
    import asyncio

    from revproxy.runtime.admin import send_command

    return asyncio.run(send_command(path, line))


def handles_signal(pid: int, sig: int) -> bool | None:
    """Whether process ``pid`` catches or ignores ``sig`` (SigCgt / SigIgn in
    /proc/PID/status): a process that does neither dies of SIGHUP. None when that cannot be
    read (no /proc, or no such process)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    masks = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in ("SigCgt", "SigIgn"):
            masks[name] = int(value.strip(), 16)
    if len(masks) != 2:
        return None
    bit = 1 << (sig - 1)
    return bool((masks["SigCgt"] | masks["SigIgn"]) & bit)


# How long ``revproxy reload`` waits for a process that does not catch SIGHUP yet (one still
# starting: its interpreter has not run revproxy's first line) before giving up.
SIGNAL_READY_TIMEOUT = 5.0


def _wait_until_handled(pid: int, sig: int, timeout: float) -> bool:
    """Wait (bounded) until ``pid`` catches or ignores ``sig``; True when it does or when that
    cannot be told."""
    deadline = time.monotonic() + timeout
    while True:
        handled = handles_signal(pid, sig)
        if handled is None or handled:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def cmd_reload(args: argparse.Namespace) -> int:
    """Reload a running instance: through its admin socket (which reports the result), else
    by SIGHUP to ``--pid`` or the ``pid_file`` after checking the configuration here (and,
    where /proc tells, once the process catches SIGHUP: one still starting would die of it)."""
    from revproxy.cli.conf import load as load_conf
    from revproxy.errors import ConfigError

    conf = Path(args.conf)
    path = _admin_socket(args)
    if path is not None:
        try:
            ok, text = _ask(path, "reload")
        except (OSError, TimeoutError) as exc:
            print(f"revproxy: admin socket {path}: {exc}; trying a signal", file=sys.stderr)
        else:
            print(text, file=sys.stdout if ok else sys.stderr)
            return EXIT_OK if ok else EXIT_CONFIG
    pid = args.pid
    if pid is None:
        pid_file = Path(args.pid_file) if args.pid_file else _peek_settings(conf)[1]
        if pid_file is None:
            print(
                "revproxy: no running instance found: set [admin] socket (or [global] pid_file) "
                "in the configuration, or pass --socket / --pid",
                file=sys.stderr,
            )
            return EXIT_RUNTIME
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError) as unreadable:
            print(f"revproxy: cannot read pid_file {pid_file}: {unreadable}", file=sys.stderr)
            return EXIT_RUNTIME
    try:
        load_conf(conf)  # a signal cannot report errors: check here first
    except ConfigError as config_error:
        _print_problems(config_error)
        print("revproxy: reload not sent; the running configuration is unchanged", file=sys.stderr)
        return EXIT_CONFIG
    if not _wait_until_handled(pid, signal.SIGHUP, SIGNAL_READY_TIMEOUT):
        print(
            f"revproxy: pid {pid} does not handle SIGHUP (not revproxy, or not started after "
            f"{SIGNAL_READY_TIMEOUT:g} s): reload not sent, since the signal would end it",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as err:
        print(f"revproxy: cannot signal pid {pid}: {err.strerror or err}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"configuration OK; sent SIGHUP to pid {pid}")
    return EXIT_OK


def cmd_ctl(args: argparse.Namespace) -> int:
    path = _admin_socket(args)
    if path is None:
        print(
            "revproxy: no admin socket: set [admin] socket in the configuration or pass --socket",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    try:
        words = [*args.words, "--persist"] if args.persist else args.words
        ok, text = _ask(path, " ".join(words) or "help")
    except (OSError, TimeoutError) as exc:
        print(f"revproxy: admin socket {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    print(text, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else EXIT_RUNTIME


def cmd_worker(args: argparse.Namespace) -> int:
    """A worker process (started by the master, never by hand)."""
    _setup_logging(os.environ.get("REVPROXY_LOG_LEVEL", "info"), f"worker{args.slot} ")
    from revproxy.runtime.workers import worker_main

    return _run_loop(worker_main(args.channel, args.slot))


def cmd_version(_args: argparse.Namespace) -> int:
    print(f"revproxy {__version__}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="revproxy", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from revproxy.cli.conf import default_conf_dir

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
    p_run.add_argument("--log-level", default=os.environ.get("REVPROXY_LOG_LEVEL", "info"))
    p_run.set_defaults(func=cmd_run)

    p_check = sub.add_parser("check", help="validate the configuration and print a summary")
    conf_arg(p_check)
    p_check.set_defaults(func=cmd_check)

    p_reload = sub.add_parser(
        "reload", help="reload a running instance; prints the problems if it is rejected"
    )
    conf_arg(p_reload)
    p_reload.add_argument("-s", "--socket", help="admin socket (default: [admin] socket)")
    p_reload.add_argument("--pid", type=int, help="send SIGHUP to this pid (e.g. $MAINPID)")
    p_reload.add_argument("--pid-file", help="read the pid here (default: [global] pid_file)")
    p_reload.set_defaults(func=cmd_reload)

    p_ctl = sub.add_parser(
        "ctl",
        help="talk to a running instance: show servers|certs|info|tunnels|cache|metrics, "
        "drain|disable|enable POOL/SERVER, cache purge HOST[/PREFIX], reload, reload certs",
    )
    conf_arg(p_ctl)
    p_ctl.add_argument("-s", "--socket", help="admin socket (default: [admin] socket)")
    p_ctl.add_argument("words", nargs="*", help='the command, e.g. "show servers"')
    p_ctl.add_argument(
        "--persist",
        action="store_true",
        help="add/del server: write the change to ctl-servers.toml (else: until the next reload)",
    )
    p_ctl.set_defaults(func=cmd_ctl)

    p_worker = sub.add_parser("worker")  # started by the master; listed nowhere
    p_worker.add_argument("--channel", type=int, required=True)
    p_worker.add_argument("--slot", type=int, default=0)
    p_worker.set_defaults(func=cmd_worker)

    p_version = sub.add_parser("version", help="print the version")
    p_version.set_defaults(func=cmd_version)

    from revproxy.cli.cert import add_parser as add_cert_parser  # revproxy cert issue|renew|list

    add_cert_parser(sub)
    from revproxy.cli.passwd import add_parser as add_passwd_parser  # revproxy passwd FILE USER

    add_passwd_parser(sub)
    from revproxy.cli.tunnel import add_parser as add_tunnel_parser  # tunnel enroll|revoke|list

    add_tunnel_parser(sub)
    from revproxy.cli.agent import add_parser as add_agent_parser  # agent [enroll]

    add_agent_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] in (["run"], ["worker"]) and not EARLY.installed:
        EARLY.install()  # before anything heavy is imported (runtime/early_signals.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
