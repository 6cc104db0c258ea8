"""The beta-VAE objective with free bits and a linear beta warm-up.

Scale of every term (all per note, averaged over the batch):

* ``recon``: squared error **summed** over the (1, n_mels, frames) pixels of a note, then averaged
  over the batch. Summing is what a Gaussian decoder's log-likelihood does (up to the constant and
  a 1/(2 sigma^2) factor, here sigma^2 = 1/2), so ``recon`` and ``kl`` are in the same per-note
  units and ``beta = 1`` is the ELBO's own balance; a per-pixel mean would shrink the
  reconstruction by 10,240 (80 x 128) and make any beta near 1 collapse the posterior.
* ``kl_raw``: KL(q(z|x) || N(0, I)) **summed** over latent dimensions, averaged over the batch.
* ``kl_fb``: the free-bits KL: each dimension's batch-mean KL raised to at least ``free_bits`` nats,
  then summed over dimensions. A dimension below the threshold gets no gradient pushing it to the
  prior, which keeps units active during warm-up (Kingma et al. 2016, "Improving Variational
  Inference with Inverse Autoregressive Flow", eq. 15, with one group per dimension).
* ``total = recon + beta * kl_fb`` (Higgins et al. 2017, beta-VAE, eq. 4).

What training minimises, :func:`training_objective`, adds to ``total`` the auxiliary terms that are
on, each with its weight from ``TrainConfig``: the supervised-contrastive term
(:func:`instrument_contrast`), the pitch head's cross-entropy, the AR-VAE pitch-order term
(:func:`attribute_order`), the alignment of the SoundFonts of a multi-source train split
(:func:`source_alignment`), and the cross-entropy of a SoundFont adversary whose gradient into mu is
reversed (:mod:`vaelib.model.adversary`).

Everything is computed in float32 even when the model ran under bf16 autocast.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch

from vaelib.config import TrainConfig
from vaelib.exceptions import ParameterError

if TYPE_CHECKING:
    from vaelib.model.vae import ConvVAE, VAEOutput

__all__ = ["LossParts", "kl_per_dim", "free_bits_kl", "recon_per_note", "recon_loss", "vae_loss", "vae_terms",
           "beta_at", "lr_at", "active_units", "instrument_contrast", "source_alignment", "attribute_order",
           "training_objective",
           "objective_from_terms", "VAE_TERMS", "AUX_TERMS"]

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016 (IWAE), sec. 5.2: Var_x(E_q[z_d|x]) > 0.01
VAE_TERMS = ("recon", "kl_raw", "kl_fb", "total")  # the parts of LossParts that are logged
# the optional terms of training_objective
AUX_TERMS = ("contrast", "pitch_ce", "pitch_order", "source_align", "source_adversary")


class LossParts(NamedTuple):
    """Loss terms of one batch, each a float32 scalar tensor (``beta`` a float); see the module doc."""

    total: torch.Tensor
    recon: torch.Tensor
    kl_raw: torch.Tensor
    kl_fb: torch.Tensor
    beta: float


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, exp(logvar)) || N(0, 1)) per sample and latent dimension, in nats.

    KL = 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2) (Kingma & Welling 2014, appendix B).

    Parameters
    ----------
    mu, logvar : [shape=(batch, latent_dim)]

    Returns
    -------
    [shape=(batch, latent_dim)] float32, >= 0
    """
    if mu.shape != logvar.shape or mu.ndim != 2:
        raise ParameterError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must both be (batch, dim)")
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)


def free_bits_kl(kl: torch.Tensor, *, free_bits: float) -> torch.Tensor:
    """Free-bits KL: sum over dimensions of max(batch-mean KL of the dimension, ``free_bits``).

    Parameters
    ----------
    kl : [shape=(batch, latent_dim)] per-sample, per-dimension KL (nats)
    free_bits : float, >= 0, nats per dimension

    Returns
    -------
    scalar float32 tensor (nats per note)
    """
    if free_bits < 0:
        raise ParameterError(f"free_bits must be >= 0, got {free_bits}")
    return kl.mean(dim=0).clamp_min(free_bits).sum()


def recon_per_note(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error summed over each note's pixels: [shape=(batch,)] float32."""
    if x.shape != x_hat.shape:
        raise ParameterError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
    return (x_hat.float() - x.float()).square().flatten(1).sum(dim=1)


def recon_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Squared error summed over a note's pixels, averaged over the batch (float32 scalar)."""
    return recon_per_note(x, x_hat).mean()


def vae_loss(x: torch.Tensor, out, *, beta: float, free_bits: float) -> LossParts:
    """The training objective of one batch.

    Parameters
    ----------
    x : [shape=(batch, 1, n_mels, frames)] target in [-1, 1]
    out : VAEOutput (or any object with ``x_hat``, ``mu``, ``logvar``)
    beta : float, >= 0, KL weight at this step (see :func:`beta_at`)
    free_bits : float, >= 0, nats per latent dimension

    Returns
    -------
    LossParts with ``total = recon + beta * kl_fb``; every part float32.
    """
    return vae_terms(recon_per_note(x, out.x_hat), out.mu, out.logvar, beta=beta, free_bits=free_bits)


def vae_terms(recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *, beta: float,
              free_bits: float) -> LossParts:
    """:func:`vae_loss` from each note's reconstruction error instead of the notes themselves.

    Everything the objective needs of a note is its error, ``mu`` and ``logvar``, so a batch spread
    over several processes is scored by gathering these rows (:mod:`vaelib.model.distributed`).

    Parameters
    ----------
    recon : [shape=(batch,)] squared error summed over each note's pixels (:func:`recon_per_note`)
    mu, logvar : [shape=(batch, latent_dim)]
    beta, free_bits : as :func:`vae_loss`
    """
    if beta < 0:
        raise ParameterError(f"beta must be >= 0, got {beta}")
    recon = recon.mean()
    kl = kl_per_dim(mu, logvar)
    kl_raw = kl.sum(dim=1).mean()
    kl_fb = free_bits_kl(kl, free_bits=free_bits)
    return LossParts(recon + beta * kl_fb, recon, kl_raw, kl_fb, float(beta))


def beta_at(step: int, *, cfg: TrainConfig) -> float:
    """KL weight at optimiser step ``step`` (0-based): linear from 0 to ``cfg.beta`` over ``cfg.warmup_steps``.

    A pure function of the step, so a resumed run continues the schedule exactly
    (Bowman et al. 2016, "Generating Sentences from a Continuous Space", KL annealing).
    """
    if step < 0:
        raise ParameterError(f"step must be >= 0, got {step}")
    if cfg.warmup_steps == 0:
        return float(cfg.beta)
    return float(cfg.beta) * min(1.0, step / cfg.warmup_steps)


def lr_at(step: int, *, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of a run of ``total_steps`` steps.

    ``constant``: ``cfg.lr`` throughout. ``cosine``: half a cosine from ``cfg.lr`` at step 0 to
    ``cfg.lr * cfg.lr_final`` at the last step (Loshchilov & Hutter 2017, one cycle). A pure function
    of the step, like ``beta_at``, so a resumed run continues the schedule exactly; an early stop
    leaves it where it was.
    """
    if step < 0 or total_steps < 1:
        raise ParameterError(f"step must be >= 0 and total_steps >= 1, got {step} and {total_steps}")
    if cfg.lr_schedule == "constant":
        return float(cfg.lr)
    if cfg.lr_schedule != "cosine":
        raise ParameterError(f"train.lr_schedule: expected 'constant' or 'cosine', got {cfg.lr_schedule!r}")
    t = min(1.0, step / max(total_steps - 1, 1))
    return float(cfg.lr) * (cfg.lr_final + (1.0 - cfg.lr_final) * 0.5 * (1.0 + math.cos(math.pi * t)))


def active_units(mu: torch.Tensor, *, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of latent dimensions whose posterior mean varies across notes: Var(mu_d) > ``threshold``.

    Parameters
    ----------
    mu : [shape=(notes, latent_dim)] posterior means over a data set
    """
    if mu.ndim != 2 or mu.shape[0] < 2:
        raise ParameterError(f"mu: expected (notes >= 2, dim), got {tuple(mu.shape)}")
    return int((mu.float().var(dim=0) > threshold).sum())


def instrument_contrast(mu: torch.Tensor, labels: torch.Tensor, *, temperature: float,
                        spared: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2) of ``mu`` with instruments as classes.

    Notes of one instrument at other pitches and velocities are the positives of each note, every
    other note of the batch a negative: the term rewards a latent region per instrument, i.e. that
    what stays constant across an instrument's notes (its timbre) is what mu encodes first. Training
    gives it instrument ids unless ``train.contrast_labels`` is ``family``: instrument identity alone
    keeps the family probes a measurement of structure the model found, not of a label it was given.

    Parameters
    ----------
    mu : [shape=(batch, dims)] what is compared: posterior means, or the part of them that training
        selects and projects (``ConvVAE.contrast_features``)
    labels : [shape=(batch,)] integer class ids (instruments, or families), or [shape=(batch, 2)]: class ids
        and a group id (the SoundFont) within which a class's pairs are left out, neither positives nor
        negatives, so the term only pulls a class together across groups
    temperature : float > 0, of the cosine similarities
    spared : [shape=(batch,)] or None: a super-class id (the family of a program): the pairs of two classes of
        one super-class are left out, so the term pulls a class together and pushes only other super-classes'
        notes away

    Returns
    -------
    scalar float32 tensor, averaged over the notes that have at least one positive (0 when none has)
    """
    if temperature <= 0:
        raise ParameterError(f"temperature must be > 0, got {temperature}")
    if labels.shape[:1] != mu.shape[:1] or labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 2):
        raise ParameterError(f"labels {tuple(labels.shape)} must have one entry (or a class and a group) per row of "
                             f"mu {tuple(mu.shape)}")
    if spared is not None and spared.shape != mu.shape[:1]:
        raise ParameterError(f"spared {tuple(spared.shape)} must have one entry per row of mu {tuple(mu.shape)}")
    z = torch.nn.functional.normalize(mu.float(), dim=1)
    sim = z @ z.T / temperature  # (B, B)
    same = labels[:, None] == labels[None, :]
    left_out = torch.eye(len(z), dtype=torch.bool, device=z.device)
    if labels.ndim == 2:
        same_class, same_group = same[..., 0], same[..., 1]
        left_out = left_out | (same_class & same_group)
        same = same_class
    if spared is not None:
        left_out = left_out | ((spared[:, None] == spared[None, :]) & ~same)
    sim = sim.masked_fill(left_out, -torch.inf)
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = same & ~left_out
    n_pos = positive.sum(dim=1)
    has = n_pos > 0
    if not bool(has.any()):
        return mu.new_zeros((), dtype=torch.float32)
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1)[has] / n_pos[has]
    return -per_anchor.mean()


def source_alignment(feats: torch.Tensor, sources: torch.Tensor, *,
                     scales: tuple[float, ...] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    """How far apart the SoundFonts' notes of a batch lie in ``feats``: the squared maximum mean discrepancy
    (Gretton et al. 2012, the unbiased estimate of eq. 3) between each SoundFont's notes and the others',
    averaged over the SoundFonts that have two notes or more on each side.

    The term is 0 in expectation when the banks' notes are spread alike, so minimising it asks the
    dimensions it sees to hold what the banks share (as a domain-adversarial network does, Ganin et al. 2016,
    without a discriminator to train); the contrastive term keeps the classes apart within that.

    Parameters
    ----------
    feats : [shape=(batch, dims)] what is aligned (the leading ``train.contrast_dims`` of mu)
    sources : [shape=(batch,)] int64 SoundFont index of each note
    scales : widths of the Gaussian kernels (their mean is the kernel), in multiples of the batch's median
        squared distance, so the term neither vanishes nor saturates as mu grows (that median taken at
        least a thousandth of the prior's)

    Returns
    -------
    scalar float32 tensor; 0 when no SoundFont has two notes in the batch and two of the others
    """
    if sources.shape != feats.shape[:1]:
        raise ParameterError(f"sources {tuple(sources.shape)} must have one entry per row of feats "
                             f"{tuple(feats.shape)}")
    f = feats.float()
    f = f - f.mean(dim=0)  # the term ignores a common shift; centred, the distances below lose no precision
    sq = (f * f).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * f @ f.T).clamp_min(0.0)
    off = ~torch.eye(len(f), dtype=torch.bool, device=f.device)
    # never narrower than a thousandth of the prior's (two N(0, I) draws lie 2 x dims apart, squared): dimensions
    # the KL has collapsed would otherwise get a kernel as narrow as their noise, and a gradient as steep
    floor = 2e-3 * f.shape[1]
    width = d2.detach()[off].median().clamp_min(floor) if len(f) > 1 else d2.new_ones(())
    kernel = sum(torch.exp(-d2 / (s * width)) for s in scales) / len(scales)
    terms = []
    for bank in torch.unique(sources):
        a, b = sources == bank, sources != bank
        if int(a.sum()) < 2 or int(b.sum()) < 2:
            continue
        within = [kernel[m][:, m][off[m][:, m]].mean() for m in (a, b)]  # the diagonal left out: unbiased
        terms.append(within[0] + within[1] - 2.0 * kernel[a][:, b].mean())
    if not terms:
        return feats.new_zeros((), dtype=torch.float32)
    return torch.stack(terms).mean()


def attribute_order(mu: torch.Tensor, attribute: torch.Tensor, *, dim: int, delta: float = 10.0) -> torch.Tensor:
    """Attribute regularization of one latent dimension (Pati & Lerch 2020, AR-VAE, eq. 3).

    Pushes latent dimension ``dim`` to be monotonic in ``attribute`` (here the MIDI pitch): for every
    pair of notes in the batch, ``tanh(delta * (mu_i - mu_j))`` is pulled to ``sign(a_i - a_j)``.
    Only the order of the attribute is used, not its values, and the decoder is not given it.

    Parameters
    ----------
    mu : [shape=(batch, latent_dim)] posterior means
    attribute : [shape=(batch,)] the attribute of each note
    dim : the regularized dimension (negative counts from the end)
    delta : sharpness of the tanh (the paper's default, 10)

    Returns
    -------
    scalar float32 tensor in [0, 2]: mean absolute error over all ordered pairs
    """
    if attribute.shape != mu.shape[:1]:
        raise ParameterError(f"attribute {tuple(attribute.shape)} must have one entry per row of mu "
                             f"{tuple(mu.shape)}")
    if not -mu.shape[1] <= dim < mu.shape[1]:
        raise ParameterError(f"dim {dim} is outside the {mu.shape[1]} latent dimensions")
    z = mu.float()[:, dim]
    a = attribute.float()
    return (torch.tanh(delta * (z[:, None] - z[None, :])) - torch.sign(a[:, None] - a[None, :])).abs().mean()


def training_objective(x: torch.Tensor, out: VAEOutput, model: ConvVAE, *, pitch: torch.Tensor,
                       classes: torch.Tensor | None, beta: float, cfg: TrainConfig,
                       adversary: torch.nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss training minimises on one batch: the beta-VAE objective plus the auxiliary terms that are on.

    ``loss = total + contrast * L_con + pitch_weight * L_ce + pitch_order * L_ord + source_align * L_src
    + source_adversary * L_adv``, where

    * ``total = recon + beta * kl_fb`` (:func:`vae_loss`, with ``cfg.free_bits``);
    * ``L_con`` is the supervised contrastive loss (Khosla et al. 2020, eq. 2) of
      ``model.contrast_features(mu, cfg.contrast_dims)`` with ``classes`` as classes, at
      ``cfg.contrast_temperature`` (:func:`instrument_contrast`); on when ``cfg.contrast > 0``;
    * ``L_ce`` is the cross-entropy of the pitch head's logits against ``pitch`` (Luo et al. 2019,
      supervised pitch on the latent); on when the model has a pitch head (``model.pitch_head``),
      whatever ``cfg.pitch_weight``;
    * ``L_ord`` orders the last latent dimension by ``pitch`` (Pati & Lerch 2020, AR-VAE, eq. 3;
      :func:`attribute_order`); on when ``cfg.pitch_order > 0``;
    * ``L_src`` is the discrepancy between the SoundFonts' notes (:func:`source_alignment`) on the leading
      ``cfg.contrast_dims`` of mu (the dimensions the family probes read first); on when
      ``cfg.source_align > 0``, with ``classes`` carrying each note's SoundFont;
    * ``L_adv`` is the cross-entropy of ``adversary`` (:class:`vaelib.model.adversary.SourceAdversary`,
      whose gradient into mu is reversed) against each note's SoundFont; on when ``cfg.source_adversary > 0``.

    Parameters
    ----------
    x : [shape=(batch, 1, n_mels, frames)] target in [-1, 1]
    out : VAEOutput of ``model`` on ``x`` (``x_hat``, ``mu``, ``logvar``; mu [shape=(batch, latent_dim)])
    model : ConvVAE
        Gives ``contrast_features`` and, when it has one, the pitch head.
    pitch : [shape=(batch,)] int64 MIDI pitch of each note, 0..127
    classes : [shape=(batch,)] int64 class id of each note for the contrastive term ([shape=(batch, 2)]: and
        its SoundFont, for ``program_across`` labels (see :func:`instrument_contrast`) and the
        source-alignment term; [shape=(batch, 3)]: and the family, for ``program_family`` labels), or None
        when both are off
    beta : float, >= 0, KL weight at this step (see :func:`beta_at`)
    cfg : TrainConfig
        ``free_bits``, ``contrast``, ``contrast_dims``, ``contrast_temperature``, ``contrast_labels``,
        ``pitch_weight``, ``pitch_order``, ``source_align``, ``source_adversary``.
    adversary : the SoundFont classifier of the adversary term, when it is on

    Returns
    -------
    loss : scalar float32 tensor, differentiable with respect to the model's parameters
    parts : dict of floats, per note: ``recon``, ``kl_raw``, ``kl_fb`` and ``total`` (the VAE objective
        alone, as in :class:`LossParts`), and ``contrast``, ``pitch_ce``, ``pitch_order``, ``source_align``,
        ``source_adversary`` (unweighted) for exactly the terms that are on

    Raises
    ------
    ParameterError
        When ``cfg.contrast > 0`` and ``classes`` is None, ``cfg.source_align > 0`` or
        ``cfg.source_adversary > 0`` without each note's SoundFont in ``classes``, the adversary on without
        ``adversary``, or on the arguments the terms reject.
    """
    return objective_from_terms(recon_per_note(x, out.x_hat), out.mu, out.logvar, model, pitch=pitch,
                                classes=classes, beta=beta, cfg=cfg, adversary=adversary)


def objective_from_terms(recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, model: ConvVAE, *,
                         pitch: torch.Tensor, classes: torch.Tensor | None, beta: float, cfg: TrainConfig,
                         adversary: torch.nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`training_objective` from each note's reconstruction error, ``mu`` and ``logvar`` (see
    :func:`vae_terms`): ``recon`` [shape=(batch,)], ``mu`` and ``logvar`` [shape=(batch, latent_dim)]."""
    if cfg.contrast > 0 and classes is None:
        raise ParameterError(f"classes: the contrastive term is on (train.contrast={cfg.contrast}) but got None")
    vae = vae_terms(recon, mu, logvar, beta=beta, free_bits=cfg.free_bits)
    loss, aux = vae.total, {}
    for setting, weight in (("source_align", cfg.source_align), ("source_adversary", cfg.source_adversary)):
        if weight > 0 and (classes is None or classes.ndim != 2):
            raise ParameterError(f"classes: train.{setting}={weight} is on but got no SoundFont per note (classes "
                                 "of shape (batch, 2) or (batch, 3))")
    if cfg.source_adversary > 0 and adversary is None:
        raise ParameterError(f"adversary: train.source_adversary={cfg.source_adversary} is on but got no SoundFont "
                             "classifier")
    if cfg.contrast > 0:
        # the SoundFont column is the term's own only for program_across; for the others it serves the
        # source-alignment and adversary terms
        labels = classes if classes.ndim == 1 else classes[:, :2] if cfg.contrast_labels == "program_across" \
            else classes[:, 0]
        spared = classes[:, 2] if cfg.contrast_labels == "program_family" else None
        contrast = instrument_contrast(model.contrast_features(mu.float(), cfg.contrast_dims), labels,
                                       temperature=cfg.contrast_temperature, spared=spared)
        loss = loss + cfg.contrast * contrast
        aux["contrast"] = contrast.detach().item()
    if model.pitch_logits is not None:
        pitch_ce = torch.nn.functional.cross_entropy(model.pitch_scores(mu.float()), pitch)
        loss = loss + cfg.pitch_weight * pitch_ce
        aux["pitch_ce"] = pitch_ce.detach().item()
    if cfg.pitch_order > 0:
        order = attribute_order(mu, pitch, dim=-1)
        loss = loss + cfg.pitch_order * order
        aux["pitch_order"] = order.detach().item()
    if cfg.source_align > 0:
        lead = mu[:, :cfg.contrast_dims] if cfg.contrast_dims else mu
        align = source_alignment(lead, classes[:, 1])
        loss = loss + cfg.source_align * align
        aux["source_align"] = align.detach().item()
    if cfg.source_adversary > 0:
        adversarial = torch.nn.functional.cross_entropy(adversary(mu.float()), classes[:, 1])
        loss = loss + cfg.source_adversary * adversarial
        aux["source_adversary"] = adversarial.detach().item()
    return loss, {**{k: getattr(vae, k).detach().item() for k in VAE_TERMS}, **aux}
