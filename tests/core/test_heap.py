"""The memory tuning the server applies at start (seqserve.core.heap)."""

from __future__ import annotations

import gc
import logging
import platform
from typing import Any

import pytest

from seqserve.core import heap


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the tuning exists for glibc's malloc only"
)
def test_glibc_takes_the_thresholds() -> None:
    assert heap.keep_round_buffers_in_heap() is True


class _Libc:
    def __init__(self, answer: int | None) -> None:
        self.calls: list[tuple[int, int]] = []
        if answer is not None:

            def mallopt(param: int, value: int) -> int:
                self.calls.append((param, value))
                return answer

            self.mallopt: Any = mallopt


def test_a_refused_threshold_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    libc = _Libc(answer=0)  # mallopt's answer for a value it will not take
    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: libc)
    with caplog.at_level(logging.WARNING, logger="seqserve.core.heap"):
        assert heap.keep_round_buffers_in_heap() is False
    assert libc.calls[0] == (heap.M_MMAP_THRESHOLD, heap.MMAP_BYTES)
    assert "large arrays stay on mmap" in caplog.text


def test_without_mallopt_nothing_is_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: _Libc(answer=None))  # musl, macOS
    assert heap.keep_round_buffers_in_heap() is False


def test_the_collector_runs_less_often_and_leaves_what_exists_at_start_alone() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        held = [[] for _ in range(100)]  # objects that exist when the server starts
        assert heap.collect_less_often() == (700, 10, 10)
        assert gc.get_threshold() == (heap.GEN0_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() >= len(held)
        gc.set_threshold(50_000, 10, 10)  # a process that already collects less often
        heap.collect_less_often()
        assert gc.get_threshold()[0] == 50_000  # kept, not lowered
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
