"""The install's numba warm-up: its two halves side by side, a failing half reported."""

from __future__ import annotations

import sys

import pytest

import vaelib.cli.jit_cache as jit_cache


class _Child:
    def __init__(self, args, code: int, calls: list) -> None:
        self.args, self.code = args, code
        calls.append(("start", args))

    def wait(self) -> int:
        return self.code


def _fake(monkeypatch, code: int, *, features_fail: bool = False) -> list:
    calls: list = []
    monkeypatch.setattr(jit_cache.subprocess, "Popen", lambda args: _Child(args, code, calls))

    def features() -> None:
        calls.append(("features",))
        if features_fail:
            raise OSError("disk full")

    monkeypatch.setattr(jit_cache, "warm_features", features)
    return calls


def test_the_umap_half_runs_in_a_second_process_started_before_the_feature_half(monkeypatch):
    calls = _fake(monkeypatch, 0)
    assert jit_cache.warm_numba_caches() >= 0.0
    assert [c[0] for c in calls] == ["start", "features"]
    args = calls[0][1]
    assert args[0] == sys.executable and "warm_umap()" in args[-1]


def test_a_failing_umap_half_is_an_error_naming_its_exit_status(monkeypatch):
    _fake(monkeypatch, 3)
    with pytest.raises(RuntimeError, match=r"UMAP half of the numba warm-up failed \(exit status 3"):
        jit_cache.warm_numba_caches()


def test_the_child_is_waited_for_when_the_feature_half_fails(monkeypatch):
    waited = []
    calls = _fake(monkeypatch, 0, features_fail=True)
    monkeypatch.setattr(_Child, "wait", lambda self: waited.append(True) or 0)
    with pytest.raises(OSError, match="disk full"):
        jit_cache.warm_numba_caches()
    assert waited and calls[0][0] == "start"
