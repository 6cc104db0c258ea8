"""Analysis stage: what a trained model's latent space holds, measured.

- ``latent``: encoding notes, decoding latents, the embedding table (``vaelib embed``), 2-D maps of mu.
- ``diagnostics``: latent statistics, KL, active units, posterior collapse, reconstruction against PCA.
- ``probes``: family, source and pitch probes on unseen instruments, against a PCA baseline.
- ``interpolate``: paths between two instruments in the latent space and their continuity.
- ``listening``: spectrograms back to audio (mel inversion and Griffin-Lim) and an objective check of that path.
"""
