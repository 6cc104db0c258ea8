"""Model stage: the convolutional beta-VAE, its objective and its training.

- ``vae``: the encoder, reparameterization and decoder (``ConvVAE``) and their optional heads.
- ``loss``: the beta-VAE objective with free bits, the auxiliary terms, and the beta and lr schedules.
- ``train``: the resumable training loop with early stopping.
- ``augment``: augmentation of training batches: the recording chain (detune, EQ, reverb, gain) and the note's
  envelope (a faster decay and darkening).
- ``masking``: a band and a span of frames of each training note hidden from the encoder, not from the target.
- ``mixstyle``: the encoder's early channel statistics mixed between the notes of a training batch.
- ``adversary``: a SoundFont classifier on mu trained through a reversed gradient (DANN).
- ``stream``: the train split's rows batch by batch: in memory, or read from the cache's file as training goes.
- ``distributed``: data-parallel training under torchrun: the processes, a global-batch objective and BatchNorm.
- ``progress``: the state a resumed run continues from: random streams, early stopping, place in an epoch.
- ``checkpoint``: where a run's checkpoints live, how they are written, read and matched to a config.
- ``device``: where training runs (CUDA, MPS, CPU) and in which precision.
"""
