"""The joint CTC/attention search of this tree against a baseline revision, taking turns in one run:
same model, inputs and options (those of bench/bench_decode.py); CPU seconds and hypotheses compared.

    tools/venv/bin/python bench/ab_decode.py --baseline 9b37b33 [--rounds 6] [--quick]

Each round runs the baseline's and this tree's search in fresh processes, one after the other (the
order alternates), so a change of the machine's load hits both alike; the table gives the median.
The baseline is checked out with `git worktree` into a temporary dir; it must have bench/bench_decode.py
with make_model, make_inputs and batches.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_header  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# run in a fresh interpreter with one tree first on sys.path: its asrkit and its bench_decode
ONE_RUN = """
import json, sys, time, argparse
root = sys.argv[1]
sys.path[:0] = [root, root + "/bench"]
import torch
import bench_decode as bd
from asrkit.decode.beam import SearchOptions, beam_search
torch.set_num_threads(1)
a = argparse.Namespace(**json.loads(sys.argv[2]))
model = bd.make_model(a)
encs = bd.make_inputs(model, a)
opts = SearchOptions(beam=a.beam, ctc_weight=a.ctc_weight)
def run(batch_size, part):
    t0, hyps = time.process_time(), {}
    for idx, enc, lens in bd.batches(part, batch_size):
        for i, nbest in zip(idx, beam_search(model, enc, lens, opts)):
            hyps[i] = (nbest[0].tokens, nbest[0].score)
    return time.process_time() - t0, [hyps[i] for i in sorted(hyps)]
run(1, encs[:1])  # warm-up
batched, hyps = run(a.batch_size, encs)
one, hyps_one = run(1, encs[: a.num_one])
print(json.dumps({"batched": batched, "one": one, "hyps": hyps, "hyps_one": hyps_one}))
"""


def one_run(tree: Path, conf: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", ONE_RUN, str(tree), json.dumps(conf)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"the search failed in {tree}:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git revision to compare with")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--quick", action="store_true", help="fewer, shorter utterances")
    a = p.parse_args()
    print_header()
    conf = dict(num_utts=16, min_frames=50, max_frames=200, batch_size=16, num_one=8, beam=10, ctc_weight=0.3,
                vocab=500, dim=256, heads=4, linear_units=2048, num_blocks=6, threads=1)
    if a.quick:
        conf.update(num_utts=8, max_frames=100, batch_size=8, num_one=4)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", a.baseline], capture_output=True,
                         text=True, check=True).stdout.strip()
    runs: dict[str, list[dict]] = {"baseline": [], "this tree": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), rev], check=True,
                       capture_output=True)
        try:
            for r in range(a.rounds):
                order = [("baseline", base), ("this tree", ROOT)][:: 1 if r % 2 == 0 else -1]
                for name, tree in order:
                    runs[name].append(one_run(tree, conf))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    b, t = runs["baseline"][0], runs["this tree"][0]
    same = sum(x == y for x, y in zip(b["hyps"] + b["hyps_one"], t["hyps"] + t["hyps_one"]))
    print(f"{conf['num_utts']} utterances batched by {conf['batch_size']} and {conf['num_one']} one at a time, "
          f"beam {conf['beam']}, decoder {conf['num_blocks']}x{conf['dim']}, 1 thread, {a.rounds} rounds; "
          f"baseline {rev}")
    print(f"same hypotheses and scores: {same}/{len(b['hyps']) + len(b['hyps_one'])}")
    print("\n| search | baseline CPU s (median) | this tree CPU s (median) | this tree vs baseline |\n|---|---|---|---|")
    for key, label in (("batched", "batched"), ("one", "one at a time")):
        mb = statistics.median(x[key] for x in runs["baseline"])
        mt = statistics.median(x[key] for x in runs["this tree"])
        print(f"| {label} | {mb:.2f} | {mt:.2f} | {mb / mt:.2f}x |")


if __name__ == "__main__":
    main()
