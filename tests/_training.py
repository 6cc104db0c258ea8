"""Helpers shared by the training tests."""

from __future__ import annotations

import os
import signal

import vaelib.model.train as vtrain


def interrupt_at(monkeypatch, at_step: int) -> None:
    """Send ourselves SIGINT when the schedule is asked for step ``at_step`` (as Ctrl-C would)."""
    real = vtrain.beta_at
    sent = []

    def beta_then_signal(step, *, cfg):
        if step == at_step and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)
        return real(step, cfg=cfg)

    monkeypatch.setattr(vtrain, "beta_at", beta_then_signal)
