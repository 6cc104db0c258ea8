"""How far a training run has got: its random streams, its early stopping and its place in an epoch.

Each object saves and restores itself with ``state_dict()`` / ``load_state_dict()``; a checkpoint
stores what each returns under one key (``rng``, ``best``, ``partial``) without knowing its fields,
and a resumed run that loads them continues with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vaelib.exceptions import ParameterError
from vaelib.model.checkpoint import rng_state, set_rng_state

__all__ = ["RandomStreams", "EarlyStopping", "EpochProgress"]


class RandomStreams:
    """Every random draw of a training run, seeded from one seed.

    torch's and numpy's global generators (weight initialisation) are seeded on construction, so
    the model is built after it; ``batch`` draws the epochs' note orders on the CPU, ``noise``
    the reparameterization noise on ``device``, ``augment`` the recording-chain augmentation's
    settings of every note (:mod:`vaelib.model.augment`) and ``style`` the mixing of the encoder's
    statistics (:mod:`vaelib.model.mixstyle`) on the CPU, each its own, so turning one on leaves the
    others' draws as they were.

    Parameters
    ----------
    seed : int, ``run.seed``
    device : torch.device
        Where ``noise`` draws.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.batch = torch.Generator().manual_seed(seed)
        self.noise = torch.Generator(device=device).manual_seed(seed + 1)
        self.augment = torch.Generator().manual_seed(seed + 3)  # seed + 2 draws the validation noise
        self.style = torch.Generator().manual_seed(seed + 4)

    def state_dict(self) -> dict:
        """The states of all of them (:func:`vaelib.model.checkpoint.rng_state`)."""
        return rng_state(self.batch, self.noise, self.augment, self.style)

    def load_state_dict(self, state: Mapping) -> None:
        set_rng_state(state, self.batch, self.noise, self.augment, self.style)


class EarlyStopping:
    """Stops a run after ``patience`` epochs in a row without a lower validation reconstruction.

    Parameters
    ----------
    patience : int, >= 1
    """

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ParameterError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.best_value = math.inf
        self.best_epoch = 0  # 0: no epoch yet
        self.bad_epochs = 0

    def update(self, value: float, *, epoch: int) -> bool:
        """Record epoch ``epoch``'s (1-based) validation reconstruction; True when it is the lowest so far.

        A NaN never improves, so it counts as a bad epoch.
        """
        improved = value < self.best_value
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        """``valid_recon`` (the best value), ``epoch`` (where it was reached) and ``bad_epochs`` (since)."""
        return {"valid_recon": self.best_value, "epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping) -> None:
        self.best_value = float(state["valid_recon"])
        self.best_epoch = int(state["epoch"])
        self.bad_epochs = int(state["bad_epochs"])


class EpochProgress:
    """One epoch's running sums and progress bar, and the place where an interrupted epoch stopped.

    The sums are per-note loss terms times notes, so dividing by the notes seen gives the epoch's
    mean over notes whatever the batch sizes. An epoch stopped at a batch boundary (:meth:`pause`)
    is continued after :meth:`load_state_dict` by redrawing its note order from the generator state
    it was first drawn from, so no order has to be stored.

    Parameters
    ----------
    n_batches : int, >= 1, steps in an epoch
    epochs : int, the run's number of epochs (for the bar's label)
    terms : names of the summed loss terms; a term never added reads 0
    show : bool, draw a tqdm bar
    """

    def __init__(self, n_batches: int, *, epochs: int, terms: Sequence[str], show: bool) -> None:
        if n_batches < 1:
            raise ParameterError(f"n_batches must be >= 1, got {n_batches}")
        self.n_batches, self.epochs, self.terms, self.show = n_batches, epochs, tuple(terms), show
        self.sums = dict.fromkeys(self.terms, 0.0)
        self.seen = 0
        self._partial: dict | None = None  # where an interrupted epoch stopped, until it continues
        self._order_state: torch.Tensor | None = None
        self._first, self._before, self._t0 = 0, 0.0, time.perf_counter()
        self._bar: tqdm | None = None

    def start(self, epoch: int, streams: RandomStreams, *,
              draw: Callable[[torch.Generator], torch.Tensor]) -> torch.Tensor:
        """Begin epoch ``epoch`` (0-based), or continue it after :meth:`load_state_dict`, and return its order.

        Parameters
        ----------
        epoch : int, >= 0
        streams : RandomStreams
            When continuing, ``streams.batch`` is first put back to the state the order was drawn
            from, and every stream afterwards to where the interrupt left it.
        draw : function of the batch generator giving the epoch's order of the notes

        Returns
        -------
        [shape=(notes,)] int64, what ``draw`` returned
        """
        partial, self._partial = self._partial, None
        if partial is not None:
            streams.batch.set_state(partial["epoch_gen_state"])
        self._order_state = streams.batch.get_state()
        order = draw(streams.batch)
        if partial is not None:
            streams.load_state_dict(partial["rng_after"])
            # a checkpoint from before an auxiliary term existed lacks its sum
            self.sums = {**dict.fromkeys(self.terms, 0.0), **partial["sums"]}
            self._first, self.seen = int(partial["batch"]), int(partial["seen"])
            self._before = float(partial["seconds"])
        else:
            self.sums, self._first, self.seen, self._before = dict.fromkeys(self.terms, 0.0), 0, 0, 0.0
        self._t0 = time.perf_counter()
        self._bar = tqdm(range(self._first, self.n_batches), total=self.n_batches, initial=self._first,
                         desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", disable=not self.show, leave=False)
        return order

    def __iter__(self) -> Iterator[int]:
        """The indices of the epoch's batches still to run."""
        if self._bar is None:
            raise ParameterError("EpochProgress: call start() before iterating")
        return iter(self._bar)

    @property
    def first(self) -> int:
        """The first batch the epoch begun by :meth:`start` runs (0, or where an interrupted one stopped)."""
        return self._first

    @property
    def seconds(self) -> float:
        """Seconds spent in this epoch, the part before an interrupt included."""
        return self._before + time.perf_counter() - self._t0

    def add(self, parts: Mapping[str, float], *, notes: int, batch: int, beta: float) -> None:
        """Add batch ``batch``'s per-note ``parts`` (a subset of ``terms``) over its ``notes`` notes."""
        for k, v in parts.items():
            self.sums[k] += v * notes
        self.seen += notes
        if self.show and (batch % 10 == 0 or batch == self.n_batches - 1):
            s, n = self.sums, self.seen
            self._bar.set_postfix(recon=f"{s['recon'] / n:.1f}", kl=f"{s['kl_raw'] / n:.2f}",
                                  kl_fb=f"{s['kl_fb'] / n:.2f}", beta=f"{beta:.3f}")

    def pause(self, next_batch: int, streams: RandomStreams) -> None:
        """Stop the epoch before batch ``next_batch``; :meth:`state_dict` then says where it stopped."""
        self._partial = {"batch": next_batch, "epoch_gen_state": self._order_state, "sums": dict(self.sums),
                         "seen": self.seen, "seconds": self.seconds, "rng_after": streams.state_dict()}
        self._bar.close()

    def finish(self) -> dict[str, float]:
        """End the epoch: ``seconds`` and ``train_<term>``, each term's mean over the epoch's notes."""
        self._bar.close()
        return {"seconds": self.seconds, **{f"train_{k}": v / self.seen for k, v in self.sums.items()}}

    def state_dict(self) -> dict | None:
        """Where an interrupted epoch stopped, or None at an epoch boundary.

        Keys: ``batch`` (the next one), ``epoch_gen_state`` (the batch generator before the order
        was drawn), ``sums``, ``seen``, ``seconds``, and ``rng_after`` (every stream at the stop).
        """
        return self._partial

    def load_state_dict(self, state: Mapping | None) -> None:
        self._partial = None if state is None else dict(state)
