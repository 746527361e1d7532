"""Decoding: joint CTC/attention beam search batched over utterances and beams, CTC searches,
attention rescoring, forced alignment. See search.decode_batch for the entry point."""
from asrkit.decode.beam import Hyp, SearchOptions, beam_search
from asrkit.decode.search import MODES, DecodeOptions, decode_batch, decode_encoded

__all__ = ["Hyp", "SearchOptions", "beam_search", "MODES", "DecodeOptions", "decode_batch", "decode_encoded"]
