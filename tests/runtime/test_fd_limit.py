"""raise_nofile_limit: the soft limit goes up to the hard one, in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))
from revproxy.runtime.fd_limit import raise_nofile_limit
print(raise_nofile_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.split() == ["2048", "2048", "2048"]
