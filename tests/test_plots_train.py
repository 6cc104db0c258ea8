"""02_train's figures: the auxiliary-terms panel appears exactly when a run used those terms."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd

from vaelib.model.train import HISTORY_COLUMNS
from vaelib.report.plots.training import AUX_LABELS, loss_curves

matplotlib.use("Agg")


def _history(**cols) -> pd.DataFrame:
    h = pd.DataFrame(np.linspace(0.1, 1.0, 3 * len(HISTORY_COLUMNS)).reshape(3, -1), columns=list(HISTORY_COLUMNS))
    h["epoch"] = [1, 2, 3]
    for k in AUX_LABELS:
        h[k] = 0.0  # a plain VAE run logs the optional terms as zeros
    for k, v in cols.items():
        h[k] = v
    return h


def test_plain_vae_run_has_two_panels_and_labelled_axes():
    fig = loss_curves(_history(train_contrast=0.0, train_pitch_order=0.0))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["Reconstruction", "KL and beta"] and "Auxiliary terms (train, unweighted)" not in titles
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes[:2])


def test_auxiliary_terms_get_their_own_panel():
    fig = loss_curves(_history(train_contrast=[3.2, 2.1, 1.7], train_pitch_order=0.0))
    panel = next(ax for ax in fig.axes if ax.get_title() == "Auxiliary terms (train, unweighted)")
    assert [ln.get_label() for ln in panel.get_lines()] == ["instrument contrast (SupCon)"]
    np.testing.assert_allclose(panel.get_lines()[0].get_ydata(), [3.2, 2.1, 1.7])
