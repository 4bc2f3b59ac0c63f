"""Sections of docs/benchmarks.md written by the side benchmarks (egress, tunnel, HTTP rules).

The full run (``scripts/bench``, benchlib.py) rewrites the file and carries these sections over
unchanged; each side benchmark replaces only its own section, so one file holds every figure
and says which run each came from. A section is the text between ``<!-- bench:KEY -->`` and
``<!-- /bench:KEY -->``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
_SECTION = re.compile(r"<!-- bench:(?P<key>[\w-]+) -->\n.*?<!-- /bench:(?P=key) -->\n", re.S)


def sections(text: str) -> dict[str, str]:
    """The side sections of a benchmarks page, by key, each with its markers."""
    return {m["key"]: m[0] for m in _SECTION.finditer(text)}


def carry_over(old: str, new: str) -> str:
    """``new`` (a full run's page) followed by the side sections of ``old`` it lacks."""
    have = sections(new)
    kept = [body for key, body in sections(old).items() if key not in have]
    if not kept:
        return new
    return new.rstrip("\n") + "\n\n" + "\n".join(kept)


def provenance(quick: bool) -> str:
    """One line: when, which commit, how loaded the machine was, full or quick."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    kind = "quick run" if quick else "full run"
    return f"{kind} at commit {commit}, {when}, load average {load:.1f} on {os.cpu_count()} CPUs"


def write_section(key: str, title: str, body: str, path: Path = DOC) -> None:
    """Put section ``key`` (a ``## title`` and ``body``) into ``path``: in place of the
    section of the same key, or at the end."""
    block = f"<!-- bench:{key} -->\n## {title}\n\n{body.strip()}\n<!-- /bench:{key} -->\n"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if key in sections(text):
        text = _SECTION.sub(lambda m: block if m["key"] == key else m[0], text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
