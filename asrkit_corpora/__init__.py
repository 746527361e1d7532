"""Corpus builders and readers that write raw manifests for stage 0 (`prepare_data`): the recipes'
and the tests' corpora, beside the toolkit (no asrkit module imports this package). Their command
lines are `python -m asrkit_corpora.bin.<name>` (make_demo_corpus, make_connected_digits, prepare_myst).

- `espeak`: speech synthesis with eSpeak NG (no download: the `espeakng-loader` wheel bundles it)
- `demo`: the offline demo corpus (synthetic voices, child-like ones included, some noisy)
- `fsdd`: connected-digit utterances from the Free Spoken Digit Dataset
- `myst`: the My Science Tutor corpus (LDC2021S05) as distributed
- `writer`: resumable writing of a generated corpus (wav files, then the manifest)
- `whisper_filter`: zero-shot Whisper decoding of a test set and MyST's filtered-test rule
"""
