"""Training seen as it happens: an ``on_epoch`` callback for ``vaelib.model.train.train`` that keeps one
table of the epochs so far (and optionally a small loss plot) and updates it in place.

In JupyterLab the table grows under the training cell after each epoch; under papermill the same
display updates are recorded in the executed notebook, so its report shows the final table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
from IPython.display import display
from matplotlib.figure import Figure

from vaelib.exceptions import ParameterError

__all__ = ["LIVE_COLUMNS", "LiveHistory", "history_table", "loss_figure"]

# What a person watching a training needs each epoch: the losses, beta, the active units and the time.
LIVE_COLUMNS = ("epoch", "seconds", "beta", "lr", "train_recon", "train_kl_raw", "valid_recon", "valid_kl_raw",
                "valid_mse", "active_units")


def history_table(rows: Sequence[dict], *, columns: Sequence[str] = LIVE_COLUMNS, digits: int = 4) -> pd.DataFrame:
    """The epochs so far as a table of ``columns`` (those present), indexed by epoch, rounded to ``digits``."""
    table = pd.DataFrame(list(rows))
    keep = [c for c in columns if c in table.columns]
    table = table[keep] if keep else table
    if "epoch" in table.columns:
        table = table.set_index("epoch")
    return table.round(digits)


def loss_figure(table: pd.DataFrame) -> Figure:
    """The train and valid reconstruction per epoch so far (a small figure, not registered with pyplot)."""
    fig = Figure(figsize=(5.0, 2.6), constrained_layout=True)
    ax = fig.subplots()
    epochs = table.index.to_numpy()
    for column, label in (("train_recon", "train"), ("valid_recon", "valid")):
        if column in table.columns:
            ax.plot(epochs, table[column].to_numpy(), "-o", ms=3, label=label)
    ax.set(title="reconstruction so far", xlabel="epoch", ylabel="squared error per note")
    ax.legend(fontsize="small")
    return fig


class LiveHistory:
    """An ``on_epoch`` callback: the table of the epochs so far, shown once and then updated in place.

    Parameters
    ----------
    columns : history columns shown (``LIVE_COLUMNS``; those missing from a row are left out).
    plot : also show a small figure of the reconstruction losses, updated the same way.
    display_fn : ``IPython.display.display`` (a stand-in in tests); it is called with ``display_id=True``
        once per shown object and must return a handle with ``update(obj)``.

    Attributes
    ----------
    rows : every row received, as given.
    """

    def __init__(self, *, columns: Sequence[str] = LIVE_COLUMNS, plot: bool = False,
                 display_fn: Callable | None = None) -> None:
        if not columns:
            raise ParameterError("columns: expected at least one history column")
        self.columns = tuple(columns)
        self.plot = plot
        self.rows: list[dict] = []
        self._display = display_fn or display
        self._handles: dict[str, object] = {}

    def __call__(self, row: dict) -> None:
        self.rows.append(dict(row))
        table = history_table(self.rows, columns=self.columns)
        self._show("table", table)
        if self.plot:
            self._show("plot", loss_figure(table))

    def table(self) -> pd.DataFrame:
        """The table as last shown."""
        return history_table(self.rows, columns=self.columns)

    def _show(self, key: str, obj: object) -> None:
        handle = self._handles.get(key)
        if handle is None:
            self._handles[key] = self._display(obj, display_id=True)
        else:
            handle.update(obj)
