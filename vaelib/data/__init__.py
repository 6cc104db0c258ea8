"""Data stage: NSynth-format notes in, normalised log-mel features out.

- ``nsynth``: reading NSynth ``jsonwav`` folders: metadata table, filters, instrument-disjoint splits, wav decoding.
- ``render``: GM synthesis of the embedded default dataset into NSynth layout (the only meaning of "render"),
  from one SoundFont or several.
- ``soundfonts``: where a SoundFont name points, the Debian package of a missing one, a source's name prefix.
- ``fm_soundfont``: the project's own GM SoundFont of two-operator FM patches, written on first use.
- ``subtractive_soundfont``: the project's own GM SoundFont of subtractive-synth patches, written on first use.
- ``sf2_bank``: the SoundFont 2 file both are written as (presets, zones, loops), and writing it once.
- ``generated_banks``: the project's own SoundFonts by the bare name a run gives them.
- ``features``: the log-mel representation (batched torch STFT, librosa filterbank, dB) and its inverse.
- ``griffin_lim``: phase reconstruction of an STFT magnitude (librosa's fast Griffin-Lim, in torch).
- ``cache``: the on-disk feature cache, keyed by the feature parameters and the input files.
- ``shards``: the feature cache built in slices by several processes, and their merge into the same cache.
- ``synthetic``: a feature cache of any size (NSynth-train's shape included) written without audio.
- ``prepare``: the stage as one call: dataset (rendered if missing) -> splits -> cached features.
- ``summary``: tables of what a dataset and its features hold (counts, statistics, examples).
"""
