"""Files that a kill must not damage: the parts of a resumable job are repaired beside themselves."""
from __future__ import annotations

import builtins
import pathlib

import pytest

from asrkit.fileio import open_for_append


def test_a_kill_while_a_torn_part_is_repaired_loses_no_finished_line(tmp_path, monkeypatch):
    part = tmp_path / "part0.jsonl"
    part.write_text('{"utt_id": "a"}\n{"utt_id": "b"}\n{"utt_id": "c", "te')  # the last line cut by a kill
    real_open, real_path_open = builtins.open, pathlib.Path.open

    def killed_after_truncating(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode:  # the file is truncated, then the process dies before it is written
            f.close()
            raise KeyboardInterrupt("killed")
        return f

    monkeypatch.setattr(builtins, "open", killed_after_truncating)
    monkeypatch.setattr(pathlib.Path, "open", lambda self, mode="r", *a, **kw: killed_after_truncating(self, mode, *a, **kw))
    with pytest.raises(KeyboardInterrupt):
        open_for_append(part)
    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(pathlib.Path, "open", real_path_open)
    assert part.read_text().startswith('{"utt_id": "a"}\n{"utt_id": "b"}\n')
    assert [p.name for p in tmp_path.iterdir()] == ["part0.jsonl"]  # nothing left beside it
    with open_for_append(part) as f:
        f.write('{"utt_id": "c"}\n')
    assert part.read_text().splitlines() == ['{"utt_id": "a"}', '{"utt_id": "b"}', '{"utt_id": "c"}']


def test_atomic_files_get_the_usual_permissions(tmp_path):
    """mkstemp makes 0600 files, and safetensors writes a file of its own: a model dir shared on a
    cluster must be readable by the group as any file the user writes."""
    import os

    import torch

    from asrkit.fileio import atomic_open
    from asrkit.model_io import save_weights

    umask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "a.txt") as f:
            f.write("x")
        save_weights({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {"a.txt": 0o644, "w.safetensors": 0o644}
