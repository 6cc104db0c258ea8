"""The per-epoch callback of vaelib.model.train.train and vaelib.report.training_live's live table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _training import interrupt_at

from vaelib.config import PROJECT_ROOT, load_config
from vaelib.data.prepare import prepare_features
from vaelib.exceptions import ParameterError
from vaelib.model.train import HISTORY_COLUMNS, train, train_or_reuse
from vaelib.report.training_live import LIVE_COLUMNS, LiveHistory, history_table, loss_figure

SMOKE = PROJECT_ROOT / "params" / "smoke.yaml"
BASE = ["train.epochs=3", "train.batch_size=16", "train.patience=10", "train.warmup_steps=6", "train.num_threads=2"]


def _cfg(root: Path, dataset: Path, ckpt: str):
    return load_config(SMOKE, [f"data.root={dataset}", f"features.cache_dir={root / 'cache'}",
                               f"train.checkpoint_dir={root / ckpt}", *BASE])


@pytest.fixture(scope="module")
def work(tmp_path_factory, smoke_dataset):
    root = tmp_path_factory.mktemp("live")
    return root, smoke_dataset, prepare_features(_cfg(root, smoke_dataset, "ckpt"), show_progress=False)


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_the_callback_receives_every_epoch_and_changes_nothing(work):
    root, ds, cache = work
    plain = train(_cfg(root, ds, "plain"), cache, show_progress=False)
    rows: list[dict] = []

    def meddle(row: dict) -> None:
        rows.append(dict(row))
        row["valid_recon"] = -1.0  # a copy: the history must not change

    watched = train(_cfg(root, ds, "watched"), cache, show_progress=False, on_epoch=meddle)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and all(set(r) == set(HISTORY_COLUMNS) for r in rows)
    _same(pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)), watched.history)
    _same(watched.history, plain.history)  # the same numbers as a training without a callback
    assert watched.best_valid_recon == plain.best_valid_recon
    # a finished run is reused: nothing is trained, the callback is not called
    again: list[dict] = []
    res, trained = train_or_reuse(_cfg(root, ds, "watched"), cache, show_progress=False, on_epoch=again.append)
    assert not trained and again == [] and len(res.history) == 3


def test_a_resumed_run_reports_its_earlier_epochs_first(work, monkeypatch):
    root, ds, cache = work
    cfg = _cfg(root, ds, "resumed")
    interrupt_at(monkeypatch, 9)  # step 9: in epoch 3 (4 steps an epoch)
    first: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        train(cfg, cache, show_progress=False, on_epoch=first.append)
    assert [r["epoch"] for r in first] == [1, 2]
    monkeypatch.undo()
    second: list[dict] = []
    res = train(cfg, cache, resume=True, show_progress=False, on_epoch=second.append)
    assert [r["epoch"] for r in second] == [1, 2, 3]
    _same(pd.DataFrame(second, columns=list(HISTORY_COLUMNS)), res.history)
    assert second[:2] == first


class _Handle:
    def __init__(self, shown: list, obj) -> None:
        self.shown = shown
        shown.append(obj)

    def update(self, obj) -> None:
        self.shown.append(obj)


def test_live_history_displays_once_then_updates_in_place():
    shown, handles = [], []

    def display(obj, *, display_id):
        assert display_id is True
        handles.append(_Handle(shown, obj))
        return handles[-1]

    live = LiveHistory(display_fn=display, plot=True)
    for epoch in (1, 2, 3):
        live({c: float(epoch) for c in HISTORY_COLUMNS} | {"epoch": epoch})
    assert len(handles) == 2  # one table, one plot: each displayed once
    tables = [o for o in shown if isinstance(o, pd.DataFrame)]
    assert [len(t) for t in tables] == [1, 2, 3] and list(tables[-1].index) == [1, 2, 3]
    assert list(tables[-1].columns) == [c for c in LIVE_COLUMNS if c != "epoch"]
    pd.testing.assert_frame_equal(live.table(), tables[-1])
    with pytest.raises(ParameterError):
        LiveHistory(columns=())


def test_history_table_and_figure():
    table = history_table([{"epoch": 1, "train_recon": 1.234567, "other": 3}], digits=2)
    assert list(table.columns) == ["train_recon"] and table.iloc[0, 0] == 1.23
    fig = loss_figure(history_table([{"epoch": e, "train_recon": 1.0 / e, "valid_recon": 2.0 / e} for e in (1, 2)]))
    assert len(fig.axes[0].lines) == 2
