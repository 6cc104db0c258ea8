"""Loss: KL against numerical integration, free bits per dimension, beta schedule, scales, and the
training objective as the VAE loss plus each weighted auxiliary term."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelib.config import ModelConfig, TrainConfig
from vaelib.exceptions import ParameterError
from vaelib.model.adversary import SourceAdversary
from vaelib.model.loss import (
    AUX_TERMS,
    VAE_TERMS,
    active_units,
    attribute_order,
    beta_at,
    free_bits_kl,
    instrument_contrast,
    kl_per_dim,
    lr_at,
    recon_loss,
    source_alignment,
    training_objective,
    vae_loss,
)
from vaelib.model.vae import ConvVAE, VAEOutput


def _numerical_kl(mu: float, logvar: float) -> float:
    """KL(N(mu, s^2) || N(0, 1)) by trapezoidal integration of q log(q / p) on a fine grid."""
    s = math.exp(0.5 * logvar)
    z = np.linspace(mu - 12 * s, mu + 12 * s, 200_001)
    log_q = -0.5 * ((z - mu) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    log_p = -0.5 * z ** 2 - 0.5 * np.log(2 * np.pi)
    return float(np.trapezoid(np.exp(log_q) * (log_q - log_p), z))


@pytest.mark.parametrize("mu,logvar", [(0.0, 0.0), (1.5, -1.0), (-0.7, 0.8), (3.0, -4.0)])
def test_kl_matches_numerical_integration(mu, logvar):
    kl = kl_per_dim(torch.tensor([[mu]]), torch.tensor([[logvar]]))
    assert kl.shape == (1, 1)
    assert float(kl) == pytest.approx(_numerical_kl(mu, logvar), abs=1e-5)


def test_kl_is_per_sample_and_dimension_and_float32():
    mu = torch.randn(5, 7, dtype=torch.bfloat16)
    kl = kl_per_dim(mu, torch.zeros(5, 7, dtype=torch.bfloat16))
    assert kl.shape == (5, 7) and kl.dtype == torch.float32
    assert (kl >= 0).all()
    with pytest.raises(ParameterError):
        kl_per_dim(torch.zeros(5, 7), torch.zeros(5, 6))


def test_free_bits_clamps_each_dimension():
    # batch-mean KL per dimension: 0.1, 0.3, 1.0
    kl = torch.tensor([[0.0, 0.2, 1.5], [0.2, 0.4, 0.5]], requires_grad=True)
    fb = free_bits_kl(kl, free_bits=0.25)
    assert float(fb.detach()) == pytest.approx(0.25 + 0.3 + 1.0)
    fb.backward()
    # the dimension under the threshold gets no gradient; the others get d(mean)/d(kl) = 1/2
    assert torch.allclose(kl.grad, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]]))
    assert float(free_bits_kl(kl.detach(), free_bits=0.5)) == pytest.approx(0.5 + 0.5 + 1.0)
    assert float(free_bits_kl(kl.detach(), free_bits=0.0)) == pytest.approx(1.4)
    with pytest.raises(ParameterError):
        free_bits_kl(kl, free_bits=-1.0)


def test_beta_schedule_is_linear_then_flat():
    cfg = TrainConfig(beta=2.0, warmup_steps=100)
    assert beta_at(0, cfg=cfg) == 0.0
    assert beta_at(50, cfg=cfg) == pytest.approx(1.0)
    assert beta_at(100, cfg=cfg) == 2.0
    assert beta_at(10_000, cfg=cfg) == 2.0
    assert beta_at(37, cfg=cfg) == beta_at(37, cfg=cfg)  # pure: same step, same value
    assert beta_at(0, cfg=TrainConfig(beta=0.5, warmup_steps=0)) == 0.5
    with pytest.raises(ParameterError):
        beta_at(-1, cfg=cfg)


def test_lr_schedule_constant_or_half_a_cosine():
    const = TrainConfig(lr=2e-3)
    assert {lr_at(s, cfg=const, total_steps=100) for s in (0, 50, 99, 500)} == {2e-3}
    cfg = TrainConfig(lr=2e-3, lr_schedule="cosine", lr_final=0.1)
    lrs = np.array([lr_at(s, cfg=cfg, total_steps=101) for s in range(101)])
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] == pytest.approx(2e-4)
    assert lrs[50] == pytest.approx(1.1e-3)  # halfway: the mean of the two ends
    assert np.all(np.diff(lrs) < 0)
    np.testing.assert_allclose(lrs[:50] + lrs[100:50:-1], 2.2e-3)  # point-symmetric about the middle
    assert lr_at(1000, cfg=cfg, total_steps=101) == pytest.approx(2e-4)  # flat past the end
    assert lr_at(0, cfg=cfg, total_steps=1) == pytest.approx(2e-3)
    with pytest.raises(ParameterError, match="step"):
        lr_at(-1, cfg=cfg, total_steps=10)
    with pytest.raises(ParameterError, match="total_steps"):
        lr_at(0, cfg=cfg, total_steps=0)
    with pytest.raises(ParameterError, match="train.lr_schedule"):  # a typo in code that bypassed the config check
        lr_at(0, cfg=TrainConfig(lr_schedule="cosin"), total_steps=10)


def test_vae_loss_parts_and_scale():
    x = torch.zeros(4, 1, 80, 128)
    x_hat = torch.full_like(x, 0.5)
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    out = VAEOutput(x_hat, mu, logvar, mu)
    parts = vae_loss(x, out, beta=0.5, free_bits=0.25)
    # recon: summed over 80 x 128 pixels, averaged over the batch
    assert float(parts.recon) == pytest.approx(0.25 * 80 * 128)
    assert float(parts.kl_raw) == 0.0
    assert float(parts.kl_fb) == pytest.approx(0.75)
    assert float(parts.total) == pytest.approx(float(parts.recon) + 0.5 * 0.75)
    assert parts.beta == 0.5
    assert float(recon_loss(x, x)) == 0.0
    with pytest.raises(ParameterError):
        vae_loss(x, out, beta=-1.0, free_bits=0.25)


def test_active_units():
    mu = torch.zeros(100, 4)
    mu[:, 0] = torch.linspace(-1, 1, 100)
    mu[:, 1] = torch.linspace(-0.01, 0.01, 100)
    assert active_units(mu) == 1


def _supcon_by_loops(mu: np.ndarray, labels: np.ndarray, temperature: float, groups: np.ndarray | None = None,
                     spared: np.ndarray | None = None) -> float:
    """Khosla et al. (2020) eq. 2 written as plain loops over anchors and positives; with ``groups``, the pairs
    of one class within one group left out of the positives and the denominator; with ``spared``, the pairs of
    two classes of one super-class left out of the denominator."""
    z = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z))
                  if a != i and not (groups is not None and labels[a] == labels[i] and groups[a] == groups[i])
                  and not (spared is not None and labels[a] != labels[i] and spared[a] == spared[i])]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(z[i] @ z[a] / temperature) for a in others)
        losses.append(-np.mean([math.log(math.exp(z[i] @ z[p] / temperature) / denom) for p in positives]))
    return float(np.mean(losses))


def test_instrument_contrast_matches_the_definition():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(12, 5)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 5])  # notes 5 and 8 have no positive
    got = instrument_contrast(torch.from_numpy(mu), torch.from_numpy(labels), temperature=0.5)
    assert float(got) == pytest.approx(_supcon_by_loops(mu, labels, 0.5), rel=1e-5)
    # what training passes for train.contrast_dims=3 (no projection head): the first three coordinates
    model = ConvVAE(ModelConfig(latent_dim=5))
    got3 = instrument_contrast(model.contrast_features(torch.from_numpy(mu), 3), torch.from_numpy(labels),
                               temperature=0.5)
    assert float(got3) == pytest.approx(_supcon_by_loops(mu[:, :3], labels, 0.5), rel=1e-5)


def test_instrument_contrast_across_groups_matches_its_definition():
    rng = np.random.default_rng(2)
    mu = rng.normal(size=(12, 5)).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4])
    groups = np.array([0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0])  # program 2 only in group 0: no positive
    both = torch.from_numpy(np.stack([labels, groups], axis=1))
    got = float(instrument_contrast(torch.from_numpy(mu), both, temperature=0.5))
    assert got == pytest.approx(_supcon_by_loops(mu, labels, 0.5, groups), rel=1e-5)
    assert got != pytest.approx(_supcon_by_loops(mu, labels, 0.5), rel=1e-3)
    # one group: every positive is left out
    one = torch.from_numpy(np.stack([labels, np.zeros_like(labels)], axis=1))
    assert float(instrument_contrast(torch.from_numpy(mu), one, temperature=0.5)) == 0.0
    with pytest.raises(ParameterError, match="labels"):
        instrument_contrast(torch.from_numpy(mu), torch.zeros(12, 3, dtype=torch.long), temperature=0.5)


def test_instrument_contrast_spares_the_other_classes_of_a_super_class():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(12, 5)).astype(np.float32)
    programs = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6])
    families = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3])  # programs 0-1, 2-3 and 4-5 share a family
    got = float(instrument_contrast(torch.from_numpy(mu), torch.from_numpy(programs), temperature=0.5,
                                    spared=torch.from_numpy(families)))
    assert got == pytest.approx(_supcon_by_loops(mu, programs, 0.5, spared=families), rel=1e-5)
    assert got != pytest.approx(_supcon_by_loops(mu, programs, 0.5), rel=1e-3)
    # two programs of one family on top of each other: without the family they cost a separation the term
    # cannot make; spared, nothing (the loss of one point per class, log(1) = 0 when the positives coincide)
    stacked = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 2)
    two_programs, one_family = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 0, 0, 1, 1])
    assert float(instrument_contrast(stacked, two_programs, temperature=0.1)) > 0.5
    assert float(instrument_contrast(stacked, two_programs, temperature=0.1, spared=one_family)) < 1e-3
    with pytest.raises(ParameterError, match="spared"):
        instrument_contrast(torch.from_numpy(mu), torch.from_numpy(programs), temperature=0.5,
                            spared=torch.zeros(3, dtype=torch.long))


def test_instrument_contrast_rewards_one_region_per_instrument():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(8).repeat_interleave(4)  # 8 instruments x 4 notes
    centres = torch.randn(8, 16, generator=gen)
    clustered = centres[labels] + 0.05 * torch.randn(32, 16, generator=gen)
    shuffled = clustered[torch.randperm(32, generator=gen)]
    tight = float(instrument_contrast(clustered, labels, temperature=0.1))
    loose = float(instrument_contrast(shuffled, labels, temperature=0.1))
    # the minimum is log(3) (three equally close positives), chance is about log(31)
    assert tight == pytest.approx(math.log(3), abs=0.05)
    assert loose > math.log(31) - 0.5
    assert float(instrument_contrast(clustered, torch.arange(32), temperature=0.1)) == 0.0  # no positives


def test_instrument_contrast_rejects_bad_arguments():
    with pytest.raises(ParameterError, match="temperature"):
        instrument_contrast(torch.zeros(4, 2), torch.zeros(4), temperature=0.0)
    with pytest.raises(ParameterError, match="labels"):
        instrument_contrast(torch.zeros(4, 2), torch.zeros(3), temperature=0.1)


def test_attribute_order_matches_the_definition_and_rewards_a_monotonic_dimension():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(10, 4)).astype(np.float32)
    pitch = rng.integers(40, 80, size=10)
    expected = np.mean([abs(math.tanh(10 * (mu[i, 2] - mu[j, 2])) - np.sign(pitch[i] - pitch[j]))
                        for i in range(10) for j in range(10)])
    got = attribute_order(torch.from_numpy(mu), torch.from_numpy(pitch), dim=2)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    ordered = mu.copy()
    ordered[:, -1] = (pitch - 60) / 2.0  # half a unit per semitone: tanh(5) ~ 1
    assert float(attribute_order(torch.from_numpy(ordered), torch.from_numpy(pitch), dim=-1)) < 1e-3
    reversed_ = ordered.copy()
    reversed_[:, -1] *= -1
    assert float(attribute_order(torch.from_numpy(reversed_), torch.from_numpy(pitch), dim=-1)) > 1.5


def test_attribute_order_rejects_bad_arguments():
    with pytest.raises(ParameterError, match="attribute"):
        attribute_order(torch.zeros(4, 2), torch.zeros(3), dim=0)
    with pytest.raises(ParameterError, match="dim 2"):
        attribute_order(torch.zeros(4, 2), torch.zeros(4), dim=2)


def _batch(*, pitch_head: bool = False, contrast_head: int = 0):
    """A tiny model, a batch of 8 notes of 16 x 16 pixels, its forward pass, pitches and classes."""
    torch.manual_seed(0)
    model = ConvVAE(ModelConfig(channels=(4, 8), depth=2, latent_dim=6, pitch_head=pitch_head,
                                contrast_head=contrast_head), n_mels=16, frames=16)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    out = model(x, generator=gen)
    pitch = torch.tensor([40, 52, 64, 76, 41, 53, 65, 77])
    classes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return model, x, out, pitch, classes


def test_training_objective_with_every_term_off_is_the_vae_loss():
    model, x, out, pitch, classes = _batch()
    cfg = TrainConfig(free_bits=0.1)  # contrast 0, pitch_order 0, and the model has no pitch head
    loss, parts = training_objective(x, out, model, pitch=pitch, classes=None, beta=0.7, cfg=cfg)
    vae = vae_loss(x, out, beta=0.7, free_bits=0.1)
    assert torch.equal(loss, vae.total)
    assert parts == {k: getattr(vae, k).item() for k in VAE_TERMS}
    # a pitch head weighted 0 is still computed and logged, and adds nothing
    model, x, out, pitch, classes = _batch(pitch_head=True)
    loss, parts = training_objective(x, out, model, pitch=pitch, classes=classes, beta=0.7,
                                     cfg=TrainConfig(free_bits=0.1, pitch_weight=0.0))
    assert torch.equal(loss, vae_loss(x, out, beta=0.7, free_bits=0.1).total)
    assert set(parts) == {*VAE_TERMS, "pitch_ce"} and parts["pitch_ce"] > 0


BANKS = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])  # the SoundFont of each note of _batch


@pytest.mark.parametrize("term", AUX_TERMS)
def test_training_objective_adds_each_term_times_its_weight(term):
    model, x, out, pitch, classes = _batch(pitch_head=term == "pitch_ce")
    weights = {"contrast": {"contrast": 3.0, "contrast_dims": 4, "contrast_temperature": 0.5},
               "pitch_ce": {"pitch_weight": 2.5}, "pitch_order": {"pitch_order": 4.0},
               "source_align": {"source_align": 6.0, "contrast_dims": 4},
               "source_adversary": {"source_adversary": 5.0}}[term]
    cfg = TrainConfig(free_bits=0.1, **weights)
    if term in ("source_align", "source_adversary"):
        classes = torch.stack([classes, BANKS], dim=1)
    adversary = SourceAdversary(out.mu.shape[1], 2) if term == "source_adversary" else None
    loss, parts = training_objective(x, out, model, pitch=pitch, classes=classes, beta=0.7, cfg=cfg,
                                     adversary=adversary)
    vae = vae_loss(x, out, beta=0.7, free_bits=0.1)
    if term == "contrast":  # the leading contrast_dims of mu, no projection head
        value, weight = instrument_contrast(out.mu[:, :4], classes, temperature=0.5), 3.0
    elif term == "pitch_ce":
        value, weight = torch.nn.functional.cross_entropy(model.pitch_scores(out.mu), pitch), 2.5
    elif term == "source_align":  # on the leading contrast_dims of mu, not through a head
        value, weight = source_alignment(out.mu[:, :4], BANKS), 6.0
    elif term == "source_adversary":  # on all of mu
        value, weight = torch.nn.functional.cross_entropy(adversary(out.mu), BANKS), 5.0
    else:
        value, weight = attribute_order(out.mu, pitch, dim=-1), 4.0
    assert torch.equal(loss, vae.total + weight * value)
    assert set(parts) == {*VAE_TERMS, term}  # only the term that is on
    assert parts[term] == value.item() and parts["total"] == vae.total.item()  # unweighted, VAE total alone


def test_training_objective_sums_all_terms_and_its_gradient_reaches_every_head():
    model, x, out, pitch, classes = _batch(pitch_head=True, contrast_head=5)
    cfg = TrainConfig(free_bits=0.1, contrast=3.0, contrast_temperature=0.5, pitch_weight=2.5, pitch_order=4.0,
                      source_align=6.0, source_adversary=5.0)
    adversary = SourceAdversary(out.mu.shape[1], 2)
    loss, parts = training_objective(x, out, model, pitch=pitch, classes=torch.stack([classes, BANKS], dim=1),
                                     beta=0.7, cfg=cfg, adversary=adversary)
    assert set(parts) == {*VAE_TERMS, *AUX_TERMS} and all(math.isfinite(v) for v in parts.values())
    # the contrastive term of family or program labels ignores the SoundFont column
    with torch.no_grad():
        plain = float(instrument_contrast(model.contrast_features(out.mu), classes, temperature=0.5))
    assert parts["contrast"] == pytest.approx(plain, rel=1e-6)
    expected = (parts["total"] + 3.0 * parts["contrast"] + 2.5 * parts["pitch_ce"] + 4.0 * parts["pitch_order"]
                + 6.0 * parts["source_align"] + 5.0 * parts["source_adversary"])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.requires_grad and loss.dtype == torch.float32
    loss.backward()
    for name, module in (("encoder", model.encoder), ("decoder", model.decoder),
                         ("contrast head", model.contrast_proj), ("pitch head", model.pitch_logits),
                         ("SoundFont adversary", adversary)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


def test_training_objective_gives_each_label_kind_its_columns():
    model, x, out, pitch, programs = _batch()
    families = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    banks = torch.tensor([0, 0, 0, 1, 0, 1, 1, 0])  # program 0 heard from one bank only
    feats = out.mu[:, :4].detach()
    for kind, classes, expected in (
            ("program", torch.stack([programs, banks], dim=1), instrument_contrast(feats, programs, temperature=0.5)),
            ("program_across", torch.stack([programs, banks], dim=1),
             instrument_contrast(feats, torch.stack([programs, banks], dim=1), temperature=0.5)),
            ("program_family", torch.stack([programs, banks, families], dim=1),
             instrument_contrast(feats, programs, temperature=0.5, spared=families))):
        cfg = TrainConfig(free_bits=0.1, contrast=3.0, contrast_dims=4, contrast_temperature=0.5, contrast_labels=kind,
                          source_align=6.0)
        _, parts = training_objective(x, out, model, pitch=pitch, classes=classes, beta=0.7, cfg=cfg)
        assert parts["contrast"] == pytest.approx(float(expected), rel=1e-6), kind
        assert parts["source_align"] == pytest.approx(float(source_alignment(feats, banks)), rel=1e-6), kind
    # the three kinds differ on this batch, so each column choice is seen
    values = [float(instrument_contrast(feats, programs, temperature=0.5)),
              float(instrument_contrast(feats, torch.stack([programs, banks], dim=1), temperature=0.5)),
              float(instrument_contrast(feats, programs, temperature=0.5, spared=families))]
    assert len({round(v, 6) for v in values}) == 3


def test_training_objective_needs_classes_when_the_contrast_term_is_on():
    model, x, out, pitch, classes = _batch()
    with pytest.raises(ParameterError, match=r"classes: the contrastive term is on \(train.contrast=1.0\)"):
        training_objective(x, out, model, pitch=pitch, classes=None, beta=0.5, cfg=TrainConfig(contrast=1.0))
    for without_banks in (None, classes):
        with pytest.raises(ParameterError, match=r"train.source_align=2.0 is on but got no SoundFont per note"):
            training_objective(x, out, model, pitch=pitch, classes=without_banks, beta=0.5,
                               cfg=TrainConfig(source_align=2.0))


def test_source_alignment_measures_how_far_apart_the_banks_lie():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(64, 16, generator=gen)
    banks = torch.arange(64) % 2
    alike = float(source_alignment(feats, banks))
    apart = [float(source_alignment(feats + shift * banks[:, None], banks)) for shift in (0.5, 1.0, 3.0)]
    assert abs(alike) < 0.03  # unbiased: near 0 for two draws of one distribution
    assert alike < apart[0] < apart[1] < apart[2] and apart[2] > 0.5
    # the definition: the unbiased MMD^2 with the mean of three Gaussian kernels, widths from the median
    x = feats + banks[:, None]
    d2 = torch.cdist(x, x) ** 2
    width = d2[~torch.eye(64, dtype=torch.bool)].median()
    k = sum(torch.exp(-d2 / (s * width)) for s in (0.5, 1.0, 2.0)) / 3
    a, b = k[banks == 0][:, banks == 0], k[banks == 1][:, banks == 1]
    pairs = 32 * 31
    mmd = (a.sum() - a.trace()) / pairs + (b.sum() - b.trace()) / pairs - 2 * k[banks == 0][:, banks == 1].mean()
    assert float(source_alignment(x, banks)) == pytest.approx(float(mmd), rel=1e-4)
    # three banks: each against the other two, averaged; a bank with one note in the batch is skipped
    three = torch.arange(64) % 3
    assert float(source_alignment(feats + 3.0 * (three == 2)[:, None], three)) > 0.3
    lone = banks.clone()
    lone[0] = 7
    assert float(source_alignment(x, lone)) == pytest.approx(float(source_alignment(x[1:], banks[1:])), rel=0.05)
    # collapsed dimensions (the KL's work): the kernel keeps a floor, so the gradient stays as gentle as the
    # prior's scale allows instead of growing as the features shrink
    for scale in (1e-2, 1e-4):
        tiny = (scale * (feats + banks[:, None])).requires_grad_()
        source_alignment(tiny, banks).backward()
        assert float(tiny.grad.abs().max()) < 1.0, scale
    # nothing to compare: one bank, or too few notes
    assert float(source_alignment(feats, torch.zeros(64, dtype=torch.long))) == 0.0
    assert float(source_alignment(feats[:3], banks[:3])) == 0.0
    with pytest.raises(ParameterError, match="sources"):
        source_alignment(feats, banks[:10])


def test_source_alignment_pulls_the_banks_together_under_gradient_descent():
    gen = torch.Generator().manual_seed(1)
    banks = torch.arange(48) % 2
    feats = (torch.randn(48, 8, generator=gen) + 2.0 * banks[:, None]).requires_grad_()
    before = float(source_alignment(feats.detach(), banks))
    opt = torch.optim.SGD([feats], lr=20.0)
    for _ in range(100):
        opt.zero_grad()
        source_alignment(feats, banks).backward()
        opt.step()
    gap = (feats[banks == 1].mean(0) - feats[banks == 0].mean(0)).detach().norm()
    assert float(source_alignment(feats.detach(), banks)) < 0.1 * before and float(gap) < 0.5 * 2.0 * math.sqrt(8)
