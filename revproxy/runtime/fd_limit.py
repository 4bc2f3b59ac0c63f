"""The process's file-descriptor allowance, raised once at start.

Rule of this room: one call at process start (the master; workers inherit it). Every client
connection, origin connection and splice pipe costs descriptors; distributions start services
with a soft ``RLIMIT_NOFILE`` of 1024 while allowing far more (the hard limit; systemd's
``LimitNOFILE=`` in ``systemd/revproxy.service`` sets both). The soft limit is raised to the
hard one, as HAProxy and nginx (``worker_rlimit_nofile``) do, so a busy proxy does not run
out at 1024. Running out anyway is the proxy's shortage, never an origin's fault
(``errors.LocalResourceError``).
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("revproxy")


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.debug("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
        return soft
    return hard
