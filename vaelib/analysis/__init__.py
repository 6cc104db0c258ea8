"""Analysis stage: what a trained model's latent space holds, measured.

- ``latent``: encoding notes, decoding latents, the embedding table (``vaelib embed``), 2-D maps of mu.
- ``map_store``: fitted UMAP maps kept on disk, so a run's notebooks fit each map of mu once.
- ``neighbours``: exact nearest neighbours for UMAP's graph and its transform, in place of NN-descent.
- ``latent_cache``: mu and logvar of every note of a run, encoded once for 03, 04 and 05.
- ``diagnostics``: latent statistics, KL, active units, posterior collapse, reconstruction against PCA.
- ``pca_store``: fitted spectrogram PCAs kept on disk, so 03 and 04 fit the linear baseline once.
- ``machine_kind``: the SIMD extensions and BLAS kernels that the stores' keys name beside the libraries.
- ``probes``: family, source and pitch probes on unseen instruments, against a PCA baseline.
- ``interpolate``: paths between two instruments in the latent space and their continuity.
- ``listening``: spectrograms back to audio (mel inversion, Griffin-Lim), 05's clips, the listening maps' sounds.
- ``run``: a run named once: its folder, its resolved params, its trained model loaded in one call.
- ``targets``: the study's targets in one table, evaluated on a run's metrics.
- ``diagnose``: 03_diagnostics as one call: posterior, KL, active units, distances, reconstruction vs PCA.
- ``latent_map``: 04_latent_map as calls: embedding, maps, probes, the pitch breakdown, interpolations.
- ``transfer``: 04's transfer section: the probes and reconstruction scored on datasets of other SoundFonts.
- ``explore``: 06's live explorer as pure calls: paths, principal axes, samples, a sound file placed, latency.
- ``encode``: sound files of one's own (any format, rate, channels) brought to a run's features and encoded.
- ``descriptors``: audio descriptors per note, on the maps of mu, over a decoded PCA grid, predicted from mu vs PCA.
"""
