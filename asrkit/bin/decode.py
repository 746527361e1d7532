"""Stage 4: decode a split's stored features with a trained model; writes hyp.jsonl (n-best included).

    python -m asrkit.bin.decode --config conf/decode.yaml --model_dir exp/<tag> --checkpoint model.avg.pth \\
        --data data/test.jsonl --feats dump/<feats_tag>/test.h5 --out exp/<tag>/decode_test_<dtag>

Utterances are decoded longest first in batches of --batch_size (utterances x beam hypotheses searched
together), by --nj processes (one per GPU with --ngpu N). Finished batches are appended to
<out>/.partial*.jsonl, so an interrupted run resumes where it stopped; hyp.jsonl appears atomically at
the end. Utterances missing from the store, too short for
the model, or failing to decode are skipped and listed in <out>/skipped.txt.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import torch
from tqdm import tqdm

import asrkit
from asrkit.cli import make_parser, run_main, setup_logging
from asrkit.decode.search import MODES, DecodeOptions, check_model, decode_batch, hyp_record
from asrkit.errors import DataError
from asrkit.fileio import atomic_open, load_jsonl, read_jsonl, write_json, write_jsonl

log = logging.getLogger("asrkit.decode")
SEARCH_KEYS = ("mode", "beam", "ctc_weight", "length_bonus", "maxlenratio", "minlenratio", "pre_beam_ratio", "nbest")


def add_search_options(parser) -> None:
    """Search options shared by decode and transcribe (defaults as in conf/decode.yaml)."""
    g = parser.add_argument_group("search")
    g.add_argument("--mode", default="joint", choices=MODES, help="decoding mode")
    g.add_argument("--beam", type=int, default=10, help="beam size")
    g.add_argument("--ctc_weight", type=float, default=0.3, help="weight of the CTC prefix score (joint, rescoring)")
    g.add_argument("--length_bonus", "--penalty", type=float, default=0.0, help="score added per token (ESPnet's penalty)")
    g.add_argument("--maxlenratio", type=float, default=0.0,
                   help="max tokens = ratio x encoder frames; 0: encoder frames, with end detection; <0: -ratio tokens")
    g.add_argument("--minlenratio", type=float, default=0.0, help="min tokens = ratio x encoder frames")
    g.add_argument("--pre_beam_ratio", type=float, default=1.5, help="CTC scores the best pre_beam_ratio x beam tokens")
    g.add_argument("--nbest", type=int, default=1, help="hypotheses kept per utterance")


def search_options(args) -> DecodeOptions:
    try:
        return DecodeOptions(**{k: getattr(args, k) for k in SEARCH_KEYS})
    except ValueError as e:
        raise DataError(str(e), "decoding options") from None


def pick_device(ngpu: int) -> torch.device:
    if ngpu > 0 and not torch.cuda.is_available():
        raise DataError(f"--ngpu {ngpu} but no GPU is visible", "--ngpu", "use --ngpu 0 to decode on CPU")
    return torch.device("cuda" if ngpu > 0 else "cpu")


def average_checkpoints(model_dir: Path, k: int) -> str:
    """Average the best k epochs (by the trainer's validation criterion) into model.avg<k>.pth."""
    from asrkit.model_io import load_config
    from asrkit.train.checkpoint import average_states, best_epochs, save_atomic

    log_path = model_dir / "train_log.jsonl"
    if not log_path.is_file():
        raise DataError("no train_log.jsonl to pick the best epochs from", str(model_dir), "train the model first")
    history = [r for r in load_jsonl(log_path) if r.get("kind") == "epoch"]
    criterion = load_config(model_dir).get("best_model_criterion", "acc")
    epochs = [e for e in best_epochs(history, criterion, k) if (model_dir / f"epoch{e}.pth").is_file()]
    if not epochs:
        raise DataError(f"none of the best {k} epochs by valid {criterion} is on disk", str(model_dir),
                        "keep more epochs (keep_nbest_models) or decode model.avg.pth")
    if len(epochs) < k:
        log.warning("only %d of the best %d epochs are on disk: averaging those", len(epochs), k)
    name = f"model.avg{k}.pth"
    save_atomic(average_states([model_dir / f"epoch{e}.pth" for e in epochs]), model_dir / name)
    log.info("%s: average of epochs %s (valid %s)", name, epochs, criterion)
    return name


def plan(data: str, reader, model, frame_rate: float) -> tuple[list[dict], list[tuple[str, str]]]:
    """Utterances to decode (longest first) and (utt_id, reason) of those that cannot be."""
    todo, skipped = [], []
    for lineno, rec in read_jsonl(data):
        utt = rec.get("utt_id")
        if not utt:
            raise DataError("no utt_id", f"{data}:{lineno}", "every line needs an utt_id")
        if utt not in reader:
            skipped.append((utt, "not in the feature store (skipped or failed at stage 1)"))
        elif reader.num_frames(utt) < model.min_frames:
            skipped.append((utt, f"{reader.num_frames(utt)} frames: too short for the model (< {model.min_frames})"))
        else:
            frames = reader.num_frames(utt)
            todo.append({"utt_id": utt, "frames": frames, "seconds": rec.get("duration") or frames / frame_rate})
    return sorted(todo, key=lambda u: -u["frames"]), skipped


def load_feats(reader, utts: list[dict], device) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = [torch.from_numpy(reader[u["utt_id"]]).float() for u in utts]
    lens = torch.tensor([a.shape[-2] for a in arrays])
    feats = torch.zeros(len(arrays), *arrays[0].shape[:-2], int(lens.max()), arrays[0].shape[-1])
    for i, a in enumerate(arrays):
        feats[i, ..., : a.shape[-2], :] = a
    return feats.to(device), lens.to(device)


def decode_all(model, tokenizer, reader, todo, opts, batch_size, device, partial: Path, skipped,
               progress: bool = True) -> float:
    """Decode `todo` in batches, appending records to `partial`; returns the seconds spent searching."""
    spent = 0.0
    batches = [todo[i: i + batch_size] for i in range(0, len(todo), batch_size)]
    with open(partial, "a", encoding="utf-8") as out:
        for batch in tqdm(batches, desc="decode", unit="batch", dynamic_ncols=True, disable=not progress):
            t0 = time.perf_counter()
            try:
                feats, lens = load_feats(reader, batch, device)
                results = list(zip(batch, decode_batch(model, feats, lens, opts)))
            except Exception as e:  # one bad utterance must not kill the run: retry them one by one
                if len(batch) == 1:
                    skipped.append((batch[0]["utt_id"], f"decoding failed: {e!r}"))
                    log.warning("%s: decoding failed: %r", batch[0]["utt_id"], e)
                    continue
                log.warning("a batch failed (%r): decoding its %d utterances one by one", e, len(batch))
                spent += decode_all(model, tokenizer, reader, batch, opts, 1, device, partial, skipped, False)
                continue
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent += time.perf_counter() - t0
            for u, nbest in results:
                out.write(json.dumps(hyp_record(u["utt_id"], nbest, tokenizer), ensure_ascii=False) + "\n")
            out.flush()
    return spent


def run_stamp(opts: DecodeOptions, checkpoint: str, data, feats) -> dict:
    """What must not change for a partial decoding to be resumed."""
    return {"search": {k: getattr(opts, k) for k in SEARCH_KEYS}, "checkpoint": checkpoint,
            "data": str(Path(data).resolve()), "feats": str(Path(feats).resolve())}


def read_partials(out: Path) -> dict[str, dict]:
    """Records of earlier (possibly killed) runs: every complete line of every partial file."""
    done = {}
    for p in sorted(out.glob(".partial*.jsonl")):
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                done[rec["utt_id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # a line cut by a kill: that utterance is decoded again
    return done


def _load(args, device):
    from asrkit.model_io import load_model

    model, tokenizer, _, feats_attrs = load_model(args.model_dir, args.checkpoint, device)
    return model, tokenizer, feats_attrs


def _worker(rank: int, args, todo: list[dict], opts: DecodeOptions) -> tuple[float, list]:
    """One of --nj processes: decode its share into its own partial file."""
    from asrkit.features.store import FeatureReader

    setup_logging(None, args.verbose, rank=rank)
    torch.set_num_threads(max(1, (args.num_threads or torch.get_num_threads()) // args.nj))
    device = torch.device(f"cuda:{rank % args.ngpu}") if args.ngpu else torch.device("cpu")
    model, tokenizer, _ = _load(args, device)
    skipped: list = []
    spent = decode_all(model, tokenizer, FeatureReader(args.feats), todo, opts, args.batch_size, device,
                       Path(args.out) / f".partial.{rank}.jsonl", skipped, progress=rank == 0)
    return spent, skipped


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--model_dir", required=True, help="experiment dir (exp/<tag>)")
    parser.add_argument("--checkpoint", default="model.avg.pth", help="weights file in --model_dir")
    parser.add_argument("--average_nbest", type=int, default=0,
                        help="first average the best K epochs into model.avg<K>.pth and decode that (0: off)")
    parser.add_argument("--data", required=True, help="split list (data/<split>.jsonl)")
    parser.add_argument("--feats", required=True, help="feature store (dump/<feats_tag>/<split>.h5)")
    parser.add_argument("--out", required=True, help="output dir (exp/<tag>/decode_<split>_<dtag>)")
    parser.add_argument("--ngpu", type=int, default=0, help="GPUs to decode on (0: CPU)")
    parser.add_argument("--nj", type=int, default=0, help="decoding processes (0: one per GPU, or 1 on CPU)")
    parser.add_argument("--batch_size", type=int, default=16, help="utterances searched together")
    parser.add_argument("--num_threads", type=int, default=0, help="torch CPU threads in all (0: torch's default)")
    add_search_options(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(args.log_file or str(out / "decode.log"), args.verbose)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    opts = search_options(args)
    device = pick_device(args.ngpu)
    if args.ngpu > torch.cuda.device_count():
        raise DataError(f"--ngpu {args.ngpu} but {torch.cuda.device_count()} GPU(s) visible", "--ngpu")
    args.nj = args.nj or max(1, args.ngpu)

    from asrkit.features.store import FeatureReader, check_compatible

    model_dir = Path(args.model_dir)
    if args.average_nbest:
        args.checkpoint = average_checkpoints(model_dir, args.average_nbest)
    model, tokenizer, feats_attrs = _load(args, device)
    check_model(model, opts, str(model_dir))
    reader = FeatureReader(args.feats)
    check_compatible(reader.attrs, feats_attrs, args.feats)
    todo, skipped = plan(args.data, reader, model, float(reader.attrs.get("frame_rate", 50.0)))

    # resume: keep what an earlier run with the same options already decoded
    stamp_path = out / ".partial.options.json"
    stamp = run_stamp(opts, args.checkpoint, args.data, args.feats)
    same = stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp
    done = read_partials(out) if same else {}
    for p in out.glob(".partial*.jsonl"):
        p.unlink()
    write_jsonl(out / ".partial.jsonl", done.values())
    write_json(stamp_path, stamp)
    if done:
        log.info("resuming: %d utterances already decoded", len(done))
    remaining = [u for u in todo if u["utt_id"] not in done]
    log.info("decoding %d utterances (%d skipped) on %s with %d process(es): %s", len(remaining), len(skipped),
             device, args.nj, stamp["search"])
    t0 = time.perf_counter()
    if args.nj == 1:
        spent = decode_all(model, tokenizer, reader, remaining, opts, args.batch_size, device,
                           out / ".partial.jsonl", skipped)
    else:
        del model
        ctx = torch.multiprocessing.get_context("spawn")
        with ctx.Pool(args.nj) as pool:
            results = pool.starmap(_worker, [(r, args, remaining[r:: args.nj], opts) for r in range(args.nj)])
        skipped += [s for _, sk in results for s in sk]
        spent = time.perf_counter() - t0  # wall time, the processes' start included

    by_id = read_partials(out)
    records = [by_id[u["utt_id"]] for u in sorted(todo, key=lambda u: u["utt_id"]) if u["utt_id"] in by_id]
    write_jsonl(out / "hyp.jsonl", records)
    with atomic_open(out / "skipped.txt") as f:
        f.writelines(f"{u}\t{why}\n" for u, why in skipped)
    audio_s = sum(u["seconds"] for u in remaining if u["utt_id"] in by_id)
    rtf = spent / audio_s if audio_s else 0.0
    info = {"rtf": rtf, "decode_seconds": spent, "audio_seconds": audio_s, "utterances": len(records),
            "skipped": len(skipped), "device": str(device), "nj": args.nj, "threads": torch.get_num_threads(),
            "batch_size": args.batch_size, "model_dir": str(model_dir), "checkpoint": args.checkpoint,
            "data": args.data, "feats": args.feats, **stamp["search"],
            "versions": {"asrkit": asrkit.__version__, "torch": torch.__version__, "python": platform.python_version()}}
    write_json(out / "decode_info.json", info)
    for p in [*out.glob(".partial*.jsonl"), stamp_path]:
        p.unlink()
    if skipped:
        log.warning("%d utterance(s) skipped, listed in %s", len(skipped), out / "skipped.txt")
    speed = f"{len(remaining) / spent:.2f} utt/s" if spent else "nothing new decoded"
    print(f"decoded {len(records)} utterances into {out / 'hyp.jsonl'}; RTF {rtf:.4f} "
          f"({spent:.1f} s for {audio_s:.1f} s of audio, {speed})")
    return 0


if __name__ == "__main__":
    run_main(main)
