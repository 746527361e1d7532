"""asrkit: children's speech recognition on frozen self-supervised features."""
__version__ = "0.1.0"
