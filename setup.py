"""asrkit: children's speech recognition on frozen self-supervised features."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# Every module in asrkit/bin/ is a command line: `python -m asrkit.bin.X` or `asrkit-X`.
ENTRY_POINTS = sorted(p.stem for p in (HERE / "asrkit" / "bin").glob("[a-z]*.py"))
README = HERE / "README.md"

setup(
    name="asrkit",
    version="0.1.0",
    description="Children's speech recognition: frozen WavLM features in HDF5, "
    "light hybrid CTC/attention models, joint CTC/attention decoding.",
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["asrkit", "asrkit.*", "asrkit_corpora", "asrkit_corpora.*"]),
    install_requires=[
        # Ranges that were tested; tools/requirements.lock pins the exact environment. torchaudio 2.11
        # is its last release: 2.11.0 loads only with torch 2.11.0 (the GPU machine's pair), 2.11.1
        # is built on torch's stable ABI and needs torch >= 2.12 (the lock's pair: 2.14.1 + 2.11.1).
        "torch>=2.11,<2.15",
        "torchaudio>=2.11,<2.12",
        "transformers>=4.40,<6",
        "h5py>=3.8",
        "jiwer>=3.0",
        "whisper-normalizer>=0.1.12",  # --normalizer whisper: Whisper's English normalizer and spelling map
        "sentencepiece>=0.2",
        "numpy>=1.24",
        "configargparse>=1.7",
        "soundfile>=0.12",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "tensorboard>=2.10",  # training curves (torch.utils.tensorboard)
        "silero-vad>=6.0,<7",  # long recordings cut at pauses (its model ships in the wheel; torch only)
        "peft>=0.17",  # LoRA adapters on the pretrained encoder's top layers (ssl_top.adapter: lora)
        "safetensors>=0.4",  # model weights: loading them runs no code (docs/PROMISES.md)
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-timeout>=2"],
        "plot": ["matplotlib>=3.6"],
        "demo": ["espeakng-loader>=0.2"],
    },
    entry_points={
        "console_scripts": [
            f"asrkit-{name}=asrkit.cli:console_script" for name in ENTRY_POINTS
        ]
    },
)
