"""Run the PROXY protocol fuzz harness for a few seconds as part of the test suite."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).with_name("fuzz_proxy_protocol.py")
# Long enough for libFuzzer to get past the signatures into TLVs, short enough for every run.
FUZZ_SECONDS = 12
# Interpreter start-up and atheris instrumentation on top of the fuzzing time.
START_UP_SECONDS = 30


def test_proxy_protocol_parser_survives_fuzzing(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed; `pip install atheris` to fuzz the PROXY parser")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            f"-max_total_time={FUZZ_SECONDS}",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + START_UP_SECONDS,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr)
    assert done is not None, proc.stderr[-5000:]
    assert int(done.group(1)) > 1000
