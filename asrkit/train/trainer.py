"""The training loop: DDP, gradient accumulation, AMP, clipping, validation, checkpoints, resume.

Resume state lives in exp_dir/checkpoint.pth (model, optimizer, scheduler, scaler, position in the
epoch, per-rank RNG states, epoch history: tensors and plain containers, read back with
weights_only=True), written atomically every `save_interval_steps` updates
and at the end of each epoch; a rerun continues from it, mid-epoch included, and reproduces the
uninterrupted run. Rank 0 alone writes files; every rank runs the same number of steps.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from asrkit import model_io
from asrkit.data import BucketBatchSampler, SpeechDataset, collate
from asrkit.distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier
from asrkit.errors import DataError
from asrkit.train.config import TrainOptions
from asrkit.train.ctc_head import char_edits, fit_ctc_head
from asrkit.train.optim import build_optimizer, build_scheduler
from asrkit.train.reporter import Reporter

log = logging.getLogger(__name__)
TRAIN_KEYS = ("loss", "loss_ctc", "loss_att", "acc")
SUM_KEYS = (*TRAIN_KEYS, "utts", "frames")  # running train sums: each metric x utterances, then the counts
VALID_KEYS = ("loss", "acc", "utts", "tokens", "char_edits", "chars")  # validation sums (loss x utts, acc x tokens)


def rng_state() -> dict:
    """The RNG states as tensors and plain containers (what torch.load's weights_only reads back)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def train_metrics(sums) -> dict[str, float]:
    """The mean of each train metric from running sums laid out as SUM_KEYS."""
    s = dict(zip(SUM_KEYS, sums))
    return {k: s[k] / max(s["utts"], 1) for k in TRAIN_KEYS}


@dataclass
class State:
    """Where training stands; saved in checkpoint.pth."""
    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # of this rank's batches in `epoch`
    step: int = 0  # optimizer updates so far (skipped ones included)
    history: list = field(default_factory=list)  # one record per finished epoch
    sums: list = field(default_factory=lambda: [0.0] * len(SUM_KEYS))  # running train sums
    stopped_early: bool = False


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a gradient scaler); no autocast on CPU."""
    if amp == "none" or device.type != "cuda":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Trainer:
    def __init__(self, opts: TrainOptions, model: torch.nn.Module, train_set: SpeechDataset,
                 valid_set: SpeechDataset, tokenizer, dist: DistInfo):
        self.opts, self.dist, self.tokenizer = opts, dist, tokenizer
        self.exp_dir = Path(opts.exp_dir)
        self.device = dist.device
        self.module = model.to(self.device)
        self.model = (DistributedDataParallel(self.module, device_ids=[self.device] if self.device.type == "cuda"
                                              else None, find_unused_parameters=opts.ddp_find_unused_parameters)
                      if dist.distributed else self.module)
        self.train_set, self.valid_set = train_set, valid_set
        kw = dict(num_replicas=dist.world_size, rank=dist.rank)
        self.train_sampler = BucketBatchSampler(train_set.lengths, opts.batch_bins, shuffle=True,
                                                seed=opts.seed, **kw)
        self.valid_sampler = BucketBatchSampler(valid_set.lengths, opts.valid_batch_bins or opts.batch_bins,
                                                shuffle=False, **kw)
        self.train_loader = self._loader(train_set, self.train_sampler)
        self.valid_loader = self._loader(valid_set, self.valid_sampler)
        self.epoch_len = len(self.train_sampler)
        updates = math.ceil(self.epoch_len / opts.accum_grad) * opts.max_epoch
        self.optimizer = build_optimizer(opts.optim, self.module, opts.optim_conf)
        self.scheduler = build_scheduler(opts.scheduler, self.optimizer, opts.scheduler_conf, updates)
        self.amp = amp_dtype(opts.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.state = State()
        self.last_batch = None
        self.reporter = None

    def _loader(self, dataset, sampler) -> DataLoader:
        workers = self.opts.num_workers
        # its own generator: starting an epoch's iterator must not draw from the global RNG, or a
        # resumed run would see other dropout/SpecAugment draws than an uninterrupted one
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                          prefetch_factor=4 if workers > 0 else None, generator=torch.Generator())

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        rng = all_gather_objects(rng_state())  # a collective: every rank calls save()
        if self.dist.is_main:
            model_io.save_checkpoint({
                "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "state": vars(self.state), "rng": rng, "world_size": self.dist.world_size,
            }, self.exp_dir / model_io.RESUME)

    def resume(self) -> bool:
        path = self.exp_dir / model_io.RESUME
        if not (self.opts.resume and path.is_file()):
            return False
        c = model_io.load_checkpoint(path)
        if not isinstance(c, dict) or (missing := {"model", "optimizer", "scheduler", "scaler", "state", "rng",
                                                   "world_size"} - set(c)):
            raise DataError(f"not a training checkpoint (it lacks {sorted(missing) if isinstance(c, dict) else 'all'})",
                            str(path), "train in a new --exp_dir, or pass --resume false to start over")
        try:
            self.module.load_state_dict(c["model"])
        except RuntimeError as e:
            raise DataError(f"the checkpoint does not fit the model of this config ({str(e).splitlines()[0]})",
                            str(path), "train in a new --exp_dir, or pass --resume false to start over") from None
        self.optimizer.load_state_dict(c["optimizer"])
        self.scheduler.load_state_dict(c["scheduler"])
        if c["scaler"]:  # empty when the run was on CPU or in bf16
            self.scaler.load_state_dict(c["scaler"])
        self.state = State(**c["state"])
        if c["world_size"] == self.dist.world_size:
            set_rng_state(c["rng"][self.dist.rank])
        else:
            log.warning("checkpoint was written by %d processes, now %d: RNG states reseeded and the "
                        "epoch restarted", c["world_size"], self.dist.world_size)
            torch.manual_seed(self.opts.seed + self.dist.rank + self.state.step)
            self.state.batches_done, self.state.sums = 0, [0.0] * len(self.state.sums)
        log.info("resumed from %s: epoch %d, batch %d of %d, update %d", path, self.state.epoch,
                 self.state.batches_done, self.epoch_len, self.state.step)
        return True

    # ---- steps -------------------------------------------------------------------------------
    def buffers(self) -> dict[str, torch.Tensor]:
        """A copy of the buffers (BatchNorm statistics and counts), to undo a forward pass."""
        return {k: v.clone() for k, v in self.module.named_buffers()}

    @torch.no_grad()
    def restore_buffers(self, saved: dict[str, torch.Tensor]) -> None:
        for k, v in self.module.named_buffers():
            if k in saved:
                v.copy_(saved[k])

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, ...]:
        d = self.device
        return (batch["feats"].to(d, non_blocking=True).float(), batch["feat_lens"].to(d, non_blocking=True),
                batch["ys"].to(d, non_blocking=True), batch["ys_lens"].to(d, non_blocking=True))

    def autocast(self):
        return torch.autocast(self.device.type, self.amp) if self.amp else contextlib.nullcontext()

    def forward(self, batch: dict, model: torch.nn.Module | None = None, **options) -> dict:
        with self.autocast():
            return (model or self.model)(*self._to_device(batch), **options)

    def backward(self, batch: dict, sync: bool, weight: float = 1.0) -> dict:
        """Forward and backward of one micro-batch; without `sync`, DDP skips its all-reduce."""
        no_sync = self.model.no_sync() if (self.dist.distributed and not sync) else contextlib.nullcontext()
        with no_sync:
            out = self.forward(batch)
            self.scaler.scale(out["loss"] * (weight / self.opts.accum_grad)).backward()
        return out

    def update(self) -> tuple[float, bool]:
        """Clip and step; a non-finite gradient norm skips the update (the same on every rank)."""
        self.scaler.unscale_(self.optimizer)
        clip = self.opts.grad_clip if self.opts.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip))
        ok = math.isfinite(norm)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the step itself when gradients overflowed
        elif ok:
            self.optimizer.step()
        self.scaler.update()
        if ok:
            self.scheduler.step()
        else:
            scale = f" (fp16 loss scale now {self.scaler.get_scale():g})" if self.scaler.is_enabled() else ""
            log.warning("update %d: gradient norm is %s, update skipped%s", self.state.step + 1, norm, scale)
        self.optimizer.zero_grad(set_to_none=True)
        return norm, ok

    # ---- epochs ------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Forward/backward of this rank's largest batches, so an out-of-memory shows at once.

        Leaves no trace: gradients, buffers (BatchNorm statistics) and RNG states are restored.
        """
        batches = self.train_sampler.largest(self.opts.preflight_batches)
        if not batches:
            return
        rng, buffers = rng_state(), self.buffers()
        self.model.train()
        t0 = time.time()
        for idx in batches:
            batch = collate([self.train_set[i] for i in idx])
            if batch is None:
                continue
            try:
                self.scaler.scale(self.forward(batch)["loss"]).backward()
            except torch.OutOfMemoryError:
                raise DataError(f"out of memory on a batch of {len(idx)} utterances, "
                                f"{self.train_sampler.padded_frames(idx)} padded frames", "--batch_bins",
                                "lower --batch_bins (or raise --accum_grad to keep the effective batch)") from None
            self.last_batch = batch
        self.optimizer.zero_grad(set_to_none=True)
        self.restore_buffers(buffers)
        set_rng_state(rng)
        mem = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
               if self.device.type == "cuda" else "")
        log.info("pre-flight: %d largest batches (up to %d padded frames) ran in %.1fs%s", len(batches),
                 self.train_sampler.padded_frames(batches[0]), time.time() - t0, mem)

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; False when max_steps stopped it early."""
        st, opts = self.state, self.opts
        self.model.train()
        self.train_sampler.set_epoch(st.epoch, st.batches_done)
        bar = tqdm(total=self.epoch_len, initial=st.batches_done, desc=f"epoch {st.epoch}", unit="batch",
                   disable=not self.dist.is_main, dynamic_ncols=True, leave=False,
                   mininterval=0.5 if sys.stderr.isatty() else 60)  # a log file gets a line a minute
        window = torch.zeros(len(SUM_KEYS), dtype=torch.float64, device=self.device)  # sums since the last update
        t_last = time.time()
        saved = self.buffers()
        with contextlib.closing(bar):
            for batch in self.train_loader:
                st.batches_done += 1
                sync = st.batches_done % opts.accum_grad == 0 or st.batches_done == self.epoch_len
                window += self.micro_batch(batch, sync)
                bar.update(1)
                if not sync:
                    continue
                norm, ok = self.update()
                if not ok:  # the bad batch also went through BatchNorm: undo its running statistics
                    self.restore_buffers(saved)
                saved = self.buffers()
                st.step += 1
                t_last = self.report_update(window.tolist(), norm, ok, t_last, bar)
                window.zero_()
                if opts.max_steps and st.step >= opts.max_steps:
                    return False
                if opts.save_interval_steps and st.step % opts.save_interval_steps == 0:
                    self.save()
        return True

    def micro_batch(self, batch: dict | None, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; its SUM_KEYS sums (metrics x utterances, utterances,
        frames), on the device (read once per update). A batch of which no utterance could be read (None)
        runs the last one again with weight 0: every rank steps alike, nothing is learned."""
        weight = 1.0
        if batch is None:
            batch, weight = self.last_batch, 0.0
        self.last_batch = batch
        out = self.backward(batch, sync, weight)
        n = len(batch["utt_ids"]) * weight
        frames = batch["feat_lens"].sum().to(self.device) * weight
        return torch.cat([torch.stack([out[k].detach() for k in TRAIN_KEYS]) * n,
                          torch.stack([frames.new_tensor(n), frames])]).double()

    def report_update(self, sums: list[float], norm: float, ok: bool, t_last: float, bar) -> float:
        """Add an update's sums to the epoch's, and record (and every log_interval updates log) its
        metrics and speed; returns the time it was reported at."""
        st = self.state
        st.sums = [a + b for a, b in zip(st.sums, sums)]
        now = time.time()
        rate = self.dist.world_size / max(now - t_last, 1e-9)  # all ranks, estimated from rank 0
        counts = dict(zip(SUM_KEYS, sums))
        rec = train_metrics(sums)
        rec.update(epoch=st.epoch, lr=self.scheduler.get_last_lr()[0], grad_norm=norm, skipped=not ok,
                   frames_per_s=counts["frames"] * rate, utts_per_s=counts["utts"] * rate)
        if self.device.type == "cuda":
            rec["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        if self.reporter:
            self.reporter.record("step", st.step, **rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", fps=f"{rec['frames_per_s']:.0f}", refresh=False)
            if st.step % self.opts.log_interval == 0:
                log.info("epoch %d update %d: %s", st.epoch, st.step,
                         " ".join(f"{k}={v:.4g}" for k, v in rec.items() if isinstance(v, float)))
        return now

    @torch.no_grad()
    def validate(self) -> dict:
        """Loss, attention accuracy and greedy CTC CER over the validation set (all ranks together)."""
        self.module.eval()
        total = dict.fromkeys(VALID_KEYS, 0.0)
        has_ctc = getattr(self.module, "ctc", None) is not None
        for batch in self.valid_loader:
            if batch is None:
                continue
            with self.autocast():  # the CER's CTC head runs on the forward's encoder output
                out = self.forward(batch, self.module, return_encoder=has_ctc)
                logp = self.module.ctc_log_probs(out["enc"]) if has_ctc else None
            n, tokens = len(batch["utt_ids"]), int(batch["ys_lens"].sum()) + len(batch["utt_ids"])  # + <eos>
            total["loss"] += float(out["loss"]) * n
            total["acc"] += float(out["acc"]) * tokens
            total["utts"] += n
            total["tokens"] += tokens
            if has_ctc:
                edits, chars = char_edits(self.module, logp, out["enc_lens"], batch["ys"], batch["ys_lens"],
                                          self.tokenizer)
                total["char_edits"], total["chars"] = total["char_edits"] + edits, total["chars"] + chars
        sums = all_reduce_sum(torch.tensor([total[k] for k in VALID_KEYS], dtype=torch.float64, device=self.device))
        total = dict(zip(VALID_KEYS, sums.cpu().tolist()))
        nan = float("nan")  # no readable validation utterance
        res = {"loss": total["loss"] / total["utts"] if total["utts"] else nan,
               "acc": total["acc"] / total["tokens"] if total["tokens"] else nan}
        if has_ctc:
            res["cer"] = total["char_edits"] / max(total["chars"], 1)
        return res

    def end_epoch(self, valid: dict, seconds: float) -> bool:
        """Record the epoch, keep the best/last weights, checkpoint; True to go on training."""
        st, opts = self.state, self.opts
        sums = all_reduce_sum(torch.tensor(st.sums, dtype=torch.float64, device=self.device)).cpu().tolist()
        train = train_metrics(sums)
        record = {"epoch": st.epoch, "step": st.step, "train": train, "valid": valid, "time_s": seconds,
                  "lr": self.scheduler.get_last_lr()[0]}
        st.history.append(record)
        best = model_io.best_epochs(st.history, opts.best_model_criterion, 1)
        since_best = st.epoch - best[0] if best else 0
        log.info("epoch %d: train loss %.4f acc %.4f | valid %s | %.0fs", st.epoch, train["loss"], train["acc"],
                 " ".join(f"{k} {v:.4f}" for k, v in valid.items()), seconds)
        if self.dist.is_main:
            model_io.save_weights(self.module.state_dict(), model_io.epoch_weights(self.exp_dir, st.epoch))
            model_io.prune_epochs(self.exp_dir, st.history, opts.best_model_criterion, opts.keep_nbest_models,
                              opts.keep_last_models)
            self.reporter.record("epoch", st.step, **{k: v for k, v in record.items() if k != "step"})
            self.reporter.plot()
        early = bool(opts.patience) and since_best >= opts.patience
        if early:
            log.info("early stop: valid %s has not improved for %d epochs (best: epoch %d)",
                     opts.best_model_criterion, since_best, best[0])
        st.epoch, st.batches_done, st.sums = st.epoch + 1, 0, [0.0] * len(st.sums)
        st.stopped_early = early
        self.save()
        return not early and st.epoch <= opts.max_epoch

    def run(self) -> None:
        self.resume()
        if self.dist.is_main:
            self.reporter = Reporter(self.exp_dir, self.opts.tensorboard, self.state.step, self.state.epoch)
        st = self.state
        steps_left = not self.opts.max_steps or st.step < self.opts.max_steps  # a rerun at the limit does nothing
        if not st.stopped_early and st.epoch <= self.opts.max_epoch and steps_left:
            self.preflight()
            while True:
                t0 = time.time()
                if not self.train_epoch():
                    log.info("stopped at update %d (--max_steps); rerun to continue", st.step)
                    self.save()
                    break
                if not self.end_epoch(self.validate(), time.time() - t0):
                    break
        if self.dist.is_main:
            model_io.average_best(self.exp_dir, st.history, self.opts.best_model_criterion, self.opts.keep_nbest_models)
            if self.opts.ctc_head_epochs and getattr(self.module, "ctc", None) is not None:
                fit_ctc_head(self.module, self.train_set, self.valid_set, self.tokenizer, self.exp_dir,
                             self.opts.ctc_head_epochs, self.opts.ctc_head_lr,
                             self.opts.valid_batch_bins or self.opts.batch_bins, self.opts.seed, self.device,
                             self.reporter)
            if lines := model_io.write_layer_weights(self.exp_dir):  # which layers the model uses (slice_store keeps fewer)
                log.info("learned weights of the feature layers (%s):\n%s", model_io.AVERAGE, "\n".join(lines))
            self.reporter.plot()
            self.reporter.close()
        barrier()
