"""Corpus builders and readers that write raw manifests for stage 0 (`prepare_data`).

- `espeak`: speech synthesis with eSpeak NG (no download: the `espeakng-loader` wheel bundles it)
- `demo`: the offline demo corpus (synthetic voices, child-like ones included, some noisy)
- `fsdd`: connected-digit utterances from the Free Spoken Digit Dataset
- `myst`: the My Science Tutor corpus (LDC2021S05) as distributed
- `writer`: resumable writing of a generated corpus (wav files, then the manifest)
"""
