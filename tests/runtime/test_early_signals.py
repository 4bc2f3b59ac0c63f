"""Signals held while a process starts (runtime/early_signals.py): raised for real in this
process with the held handlers installed (and the previous ones put back after), then taken —
a stop, a reopen, a reload that came after the configuration was read, and one that the
configuration read already covers."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from revproxy.runtime.early_signals import HELD, EarlySignals, Pending


@pytest.fixture
def early() -> Iterator[EarlySignals]:
    before = {sig: signal.getsignal(sig) for sig in HELD}
    held = EarlySignals()
    held.install()
    try:
        yield held
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_held_signals_do_not_end_the_process_and_are_counted(early: EarlySignals) -> None:
    assert early.installed
    for sig in HELD:
        assert signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN)
    signal.raise_signal(signal.SIGHUP)
    signal.raise_signal(signal.SIGUSR1)
    assert not early.stopping
    early.config_read()
    assert early.take() == Pending(covered=True, reopen=True)
    assert early.take() == Pending()  # taken once


def test_a_sighup_after_the_configuration_was_read_asks_for_a_reload(
    early: EarlySignals,
) -> None:
    signal.raise_signal(signal.SIGHUP)
    early.config_read()
    signal.raise_signal(signal.SIGHUP)
    signal.raise_signal(signal.SIGHUP)
    assert early.take() == Pending(reload=True)
    signal.raise_signal(signal.SIGHUP)  # after a take: a reload again
    assert early.take() == Pending(reload=True)


def test_sigterm_and_sigint_ask_for_a_stop(early: EarlySignals) -> None:
    signal.raise_signal(signal.SIGTERM)
    assert early.stopping
    assert early.take() == Pending(stop=True)
    assert early.stopping  # still known: the start is not resumed
    assert early.take() == Pending()
    signal.raise_signal(signal.SIGINT)
    assert early.take() == Pending(stop=True)


def test_nothing_held_nothing_taken() -> None:
    assert EarlySignals().take() == Pending()
