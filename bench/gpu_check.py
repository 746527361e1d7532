"""Every GPU path of asrkit in one run: the WavLM dump (fp16 and bf16 autocast), AMP training through
torchrun with NCCL, a kill and resume, the stored-vs-on-the-fly training ratio, and batched decoding
against the CPU. Prints one table and writes every figure to <--out>/gpu_check.json.

On a lent GPU machine (the device tool: one call; the wheels it lacks travel in .whl/):
    bash bench/gpu_wheels.sh                      # here, once: downloads the missing wheels into .whl/
    # device run, carry [".whl"], timeout_s 600:
    bash bench/gpu_check.sh                       # installs .whl/ offline, runs this, results in $OUT

Dry run on CPU (the suite runs it, so the check does not rot between GPU sessions):
    python bench/gpu_check.py --device cpu --tiny --out /tmp/gpu_check

Each part is checked, not only timed: a failed check is marked FAIL in the table, the run goes on,
and the exit code is 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_dump import FSDD, model_gflop, naive  # noqa: E402
from machine import header, sync  # noqa: E402

from asrkit.audio import SAMPLE_RATE  # noqa: E402
from asrkit.features.dump import dump, extract_shard, make_batches, plan_items  # noqa: E402
from asrkit.features.extractors import ExtractorSpec, SSLExtractor  # noqa: E402
from asrkit.features.store import FeatureReader  # noqa: E402
from asrkit.fileio import load_jsonl  # noqa: E402
from asrkit.random_models import save_random_ssl  # noqa: E402

BF16_PEAK_TFLOPS = 790.0  # H100/H200 dense bf16, for the dump's share of the chip's limit


class Check:
    """Rows of (part, what, figure); a part that raises is recorded as FAIL and the run goes on."""

    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []
        self.figures: dict[str, object] = {}
        self.failed = 0

    def add(self, part: str, what: str, value, fmt: str = "{}", key: str = "") -> None:
        self.rows.append((part, what, fmt.format(value) if not isinstance(value, str) else value))
        self.figures[key or f"{part}: {what}"] = value
        print(f"[{part}] {what}: {self.rows[-1][2]}", flush=True)

    def expect(self, part: str, what: str, ok: bool, detail: str = "") -> None:
        self.add(part, what, ("ok" if ok else "FAIL") + (f" ({detail})" if detail else ""))
        self.failed += not ok

    def run(self, part: str, fn, *args):
        t0 = time.perf_counter()
        try:
            out = fn(self, *args)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the table shows every part, failed or not
            traceback.print_exc()
            self.expect(part, "ran", False, f"{type(e).__name__}: {e}"[:300])
            return None
        self.add(part, "wall seconds", time.perf_counter() - t0, "{:.1f}")
        return out

    def table(self) -> str:
        w0 = max(len(r[0]) for r in self.rows)
        w1 = max(len(r[1]) for r in self.rows)
        lines = [f"| {'part'.ljust(w0)} | {'what'.ljust(w1)} | figure |", f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|---|"]
        return "\n".join(lines + [f"| {a.ljust(w0)} | {b.ljust(w1)} | {c} |" for a, b, c in self.rows])


def sh(*cmd, timeout: float = 600, **kw) -> str:
    """Run a command as a user would; its output is returned, and printed when it fails."""
    p = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0:
        print(p.stdout[-4000:], p.stderr[-4000:], sep="\n", file=sys.stderr)
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... exited {p.returncode}")
    return p.stdout + p.stderr


def prepare(c: Check, a, work: Path) -> dict:
    """FSDD connected digits (real speech and transcripts), split, a random WavLM, a token list."""
    from asrkit.bin import make_tokens, prepare_data
    from asrkit_corpora.bin import make_connected_digits

    corpus = work / "corpus"
    extra = ["--speakers", "jackson", "theo"] if a.tiny else ["--repeats", str(a.repeats)]
    make_connected_digits.main(["--fsdd", str(FSDD), "--out", str(corpus), "--unseen_speakers", "theo", *extra])
    prepare_data.main(["--raw_data", str(corpus / "manifest.jsonl"), "--out_dir", str(work / "data"),
                       "--split_field", "split", "--normalizer", "basic", "--nj", "1" if a.tiny else "8"])
    data = {s: work / "data" / f"{s}.jsonl" for s in ("train", "valid", "test")}
    if a.tiny:  # seconds of audio, not minutes
        for s, n in (("train", 24), ("valid", 4), ("test", 6)):
            data[s].write_text("".join(data[s].read_text().splitlines(keepends=True)[:n]))
    seconds = {s: sum(r["duration"] for r in load_jsonl(p)) for s, p in data.items()}
    c.add("data", "audio minutes (train / valid / test)", "/".join(f"{seconds[s] / 60:.1f}" for s in data))
    wavlm = save_random_ssl(work / "wavlm", a.preset)
    make_tokens.main(["--data", str(data["train"]), "--token_type", "char", "--out", str(work / "tokens")])
    return dict(data=data, seconds=seconds, wavlm=wavlm, tokens=work / "tokens")


def check_dump(c: Check, a, work: Path, d: dict) -> None:
    gpu = a.device.startswith("cuda")
    ngpu, layer = int(gpu), "1" if a.tiny else "9"
    train, secs = d["data"]["train"], d["seconds"]["train"]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(d["wavlm"]).eval().to(a.device)
    gflop = model_gflop(model, a.device)
    c.add("dump", "model GFLOP per second of audio", gflop, "{:.2f}")
    attrs = SSLExtractor(str(d["wavlm"]), layer, device="cpu", compute_dtype="float32").attrs
    naive_s = naive(model, attrs, train, work / "naive.h5", a.device, layer)
    c.add("dump", "naive fp32 loop, one utterance at a time (x real time)", secs / naive_s, "{:.0f}", "naive_xrt")
    del model
    dtypes = ("float16", "bfloat16") if gpu else ("float32", "bfloat16")
    items, _ = plan_items(train, [1.0])
    batches = make_batches(items, int((200.0 if gpu else 20.0) * SAMPLE_RATE))
    for dt in dtypes:  # the extraction itself, as bench_dump times it (the model built and warmed up first)
        ext = SSLExtractor(str(d["wavlm"]), layer, device=a.device, compute_dtype=dt)
        ext([np.zeros(SAMPLE_RATE, np.float32)])
        sync(a.device)
        t0 = time.perf_counter()
        extract_shard(ext, batches, work / f"train_{dt}.part.h5", 4 if gpu else 1, 60 * SAMPLE_RATE, False)
        sync(a.device)
        xrt = secs / (time.perf_counter() - t0)
        del ext
        c.add("dump", f"dumper {dt} (x real time)", xrt, "{:.0f}", key=f"dump_{dt}_xrt")
        c.add("dump", f"dumper {dt} vs the naive loop", xrt * naive_s / secs, "{:.2f}x")
        if gpu:
            limit = BF16_PEAK_TFLOPS * 1000 / gflop
            c.add("dump", f"dumper {dt}: share of the chip's bf16 limit ({limit:.0f}x real time)", xrt / limit, "{:.1%}")
    for s in ("train", "valid", "test"):  # for training and decoding below, as stage 1 writes them
        dump(str(d["data"][s]), str(work / f"{s}_{dtypes[0]}.h5"),
             ExtractorSpec("wavlm", str(d["wavlm"]), layer, compute_dtype=dtypes[0]), nj=1, ngpu=ngpu, progress=False)
    d["stores"] = {s: work / f"{s}_{dtypes[0]}.h5" for s in ("train", "valid", "test")}
    # the device's features against CPU float32, and batched against one by one on the device
    recs = load_jsonl(train)[:4]
    cpu32 = SSLExtractor(str(d["wavlm"]), layer, device="cpu", compute_dtype="float32")
    dev = SSLExtractor(str(d["wavlm"]), layer, device=a.device, compute_dtype=dtypes[0])
    from asrkit.audio import load_audio
    from asrkit.fileio import resolve_audio_path

    wavs = [cpu32.prepare(load_audio(resolve_audio_path(r["audio"], train))) for r in recs]
    ref = [f.astype(np.float32) for f in cpu32(wavs)]
    batched = [f.astype(np.float32) for f in dev(wavs)]
    alone = [dev([w])[0].astype(np.float32) for w in wavs]

    def rel(x, y):
        return math.sqrt(sum(float(((p - q) ** 2).sum()) for p, q in zip(x, y)) / sum(float((q ** 2).sum()) for q in y))

    to_cpu, batch_gap = rel(batched, ref), rel(batched, alone)
    c.add("dump", f"{dtypes[0]} on {a.device} vs CPU float32: relative RMS", to_cpu, "{:.2e}")
    c.expect("dump", f"{dtypes[0]} features within 3% RMS of CPU float32", to_cpu < 0.03, f"{to_cpu:.2e}")
    c.expect("dump", "batched equals one by one (relative RMS < 1e-2)", batch_gap < 1e-2, f"{batch_gap:.2e}")
    with FeatureReader(d["stores"]["train"]) as r:
        n = len(load_jsonl(train))
        c.expect("dump", "store holds every utterance", len(r) == n, f"{len(r)} of {n}")
    if gpu:  # the multi-GPU dump (one process per GPU, shards merged) with one GPU
        dump(str(d["data"]["valid"]), str(work / "valid_spawn.h5"),
             ExtractorSpec("wavlm", str(d["wavlm"]), layer, compute_dtype=dtypes[0]), nj=2, ngpu=1, progress=False,
             process_per_gpu=True)
        with FeatureReader(work / "valid_spawn.h5") as x, FeatureReader(d["stores"]["valid"]) as y:
            same = sorted(x.keys()) == sorted(y.keys()) and all(
                np.allclose(x[k].astype(np.float32), y[k].astype(np.float32), atol=2e-2) for k in y.keys())
        c.expect("dump", "multi-GPU path (one spawned process per GPU) equals the in-process dump", same)


def train_cmd(a, d: dict, exp: Path, amp: str, *extra: str) -> list:
    sizes = (["--encoder_conf.num_blocks", "1", "--encoder_conf.output_size", "64", "--encoder_conf.linear_units",
              "128", "--decoder_conf.num_blocks", "1", "--batch_bins", "600"] if a.tiny else [])
    # a few hundred updates: the config's 5000 warmup steps would leave the learning rate near zero
    sizes += ["--scheduler_conf", json.dumps({"warmup_steps": max(2, a.steps // 4)})]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "asrkit.bin.train", "--config", REPO / "egs/child/conf/train_conformer.yaml",
            "--train_data", d["data"]["train"], "--train_feats", d["stores"]["train"],
            "--valid_data", d["data"]["valid"], "--valid_feats", d["stores"]["valid"],
            "--token_dir", d["tokens"], "--exp_dir", exp, "--ngpu", int(a.device.startswith("cuda")),
            "--amp", amp, "--num_workers", "2", "--tensorboard", "false", *sizes, *extra]


def steps_of(exp: Path) -> list[dict]:
    return [r for r in load_jsonl(exp / "train_log.jsonl") if r["kind"] == "step"]


def check_training(c: Check, a, work: Path, d: dict) -> None:
    gpu = a.device.startswith("cuda")
    amps = ("bf16", "fp16") if gpu else ("none",)
    for amp in amps:
        exp = work / f"exp_{amp}"
        t0 = time.perf_counter()
        out = sh(*train_cmd(a, d, exp, amp, "--max_steps", a.steps, "--max_epoch", "1000"), timeout=900)
        wall = time.perf_counter() - t0
        steps = steps_of(exp)
        losses = [s["loss"] for s in steps]
        k = max(1, len(losses) // 5)
        first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
        c.add("train", f"--amp {amp}: updates, loss first -> last fifth", f"{len(steps)}, {first:.2f} -> {last:.2f}")
        c.expect("train", f"--amp {amp}: losses finite and falling", all(map(math.isfinite, losses)) and last < first)
        c.add("train", f"--amp {amp}: updates per second", len(steps) / wall, "{:.1f}")
        if gpu:
            c.add("train", f"--amp {amp}: peak GPU memory (GiB)", max(s.get("peak_mem_gb", 0) for s in steps), "{:.2f}")
            c.expect("train", f"--amp {amp}: NCCL backend", "nccl" in out.lower(), "torchrun, one process")
    # kill -9 in the middle, then the same command resumes from the last checkpoint and finishes
    exp = work / "exp_resume"
    total = 8 if a.tiny else a.steps
    cmd = train_cmd(a, d, exp, amps[0], "--max_steps", total, "--max_epoch", "1000", "--save_interval_steps",
                    max(2, total // 30))
    p = subprocess.Popen([str(x) for x in cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 600
    while not (exp / "checkpoint.pth").is_file() and p.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    killed = p.poll() is None
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    out = sh(*cmd, timeout=900)
    steps = [s["step"] for s in steps_of(exp)]
    c.expect("train", "killed mid-run, resumed by the same command, finished",
             killed and "resumed from" in out and steps[-1] == total and steps == sorted(set(steps)),
             f"killed={killed}, last update {steps[-1] if steps else None} of {total}")
    # stored features against the frozen WavLM on every batch
    import contextlib
    import io

    import bench_train

    bench = ["--device", a.device, "--preset", a.preset, "--steps", "2" if a.tiny else "6",
             "--warmup", "1" if a.tiny else "2", "--nj", "1" if a.tiny else "4",
             "--seconds", "20" if a.tiny else "900", *(["--batch_bins", "400"] if a.tiny else [])]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        bench_train.main(bench)
    print(buf.getvalue())
    summary = [line for line in buf.getvalue().splitlines() if line.startswith("summary: ")]
    c.add("train", "bench_train: speed on stored features / frozen WavLM on every batch",
          summary[-1].removeprefix("summary: ") if summary else "FAIL: no summary line")


def decode_exp(a, work: Path) -> Path:
    """The model the decoding part uses: the first AMP mode's training run."""
    return work / ("exp_bf16" if a.device.startswith("cuda") else "exp_none")


def check_decoding(c: Check, a, work: Path, d: dict) -> None:
    exp = decode_exp(a, work)
    n = len(load_jsonl(d["data"]["test"]))
    hyps, rate = {}, {}
    from asrkit.bin import decode

    for dev in (["cuda", "cpu"] if a.device.startswith("cuda") else ["cpu"]):
        out = work / f"decode_{dev}"
        t0 = time.perf_counter()
        decode.main(["--config", str(REPO / "conf/decode.yaml"), "--model_dir", str(exp),
                     "--data", str(d["data"]["test"]), "--feats", str(d["stores"]["test"]), "--out", str(out),
                     "--ngpu", str(int(dev == "cuda")), "--batch_size", "16", *(["--beam", "4"] if a.tiny else [])])
        rate[dev] = n / (time.perf_counter() - t0)
        hyps[dev] = {r["utt_id"]: r["token_ids"] for r in load_jsonl(out / "hyp.jsonl")}
        c.add("decode", f"joint search on {dev}: utterances per second (model loading included)", rate[dev], "{:.1f}")
    if "cuda" in hyps:
        same = sum(hyps["cuda"][u] == hyps["cpu"].get(u) for u in hyps["cuda"])
        c.add("decode", "GPU vs CPU speed", rate["cuda"] / rate["cpu"], "{:.1f}x")
        c.expect("decode", "same hypotheses on GPU as on CPU", same == len(hyps["cpu"]) == n, f"{same} of {n}")
    else:
        c.expect("decode", "every test utterance decoded", len(hyps["cpu"]) == n, f"{len(hyps['cpu'])} of {n}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny model and seconds of audio: the CPU dry run")
    p.add_argument("--preset", default="", help="random WavLM preset (default: base-plus; tiny with --tiny)")
    p.add_argument("--repeats", type=int, default=3, help="times each FSDD take is used (3: about an hour of audio)")
    p.add_argument("--steps", type=int, default=0, help="training updates per AMP mode (default 300; 20 tiny)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="where gpu_check.json goes")
    a = p.parse_args(argv)
    a.preset = a.preset or ("tiny" if a.tiny else "base-plus")
    a.steps = a.steps or (20 if a.tiny else 300)
    if not (FSDD / "manifest.jsonl").is_file():
        print(f"FSDD not found at {FSDD}: set ASRKIT_FSDD", file=sys.stderr)
        return 2
    c = Check()
    c.figures["machine"] = header(a.device)  # measures the matmul rates: once
    print(c.figures["machine"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        d = c.run("data", prepare, a, work)
        if d is not None:
            c.run("dump", check_dump, a, work, d)
        if d is not None and "stores" in d:
            c.run("train", check_training, a, work, d)
            if decode_exp(a, work).is_dir():
                c.run("decode", check_decoding, a, work, d)
    print("\n" + c.table())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"failed": c.failed, "rows": c.rows, "figures": c.figures},
                                                   indent=1, default=str))
    print(f"\n{c.failed} check(s) failed; figures in {out / 'gpu_check.json'}")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
