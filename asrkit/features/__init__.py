"""Stage 1: feature extraction (WavLM or any HF speech encoder, fbank) into HDF5 stores."""
