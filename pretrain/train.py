"""Masked spectrogram modelling (SSAST-style), one readable loop; DDP under torchrun.

    python -m pretrain train --config pretrain/configs/ssam_tiny.yaml --data DIR_OR_MANIFEST --out runs/NAME
    torchrun --nproc-per-node=4 -m pretrain train --config ... --data ... --out ...

The encoder sees all 1 + N tokens; masked patches are replaced by the learnable mask token
(position-free for SSAM, with position for SSAST / SSAMBA); the heads predict every patch; the
masking and the objective are named choices (pretrain/objectives.py; SSAM's recipe:
unstructured, MSE over all patches; SSAMBA's: cluster masking, SSAST's joint InfoNCE + MSE).
The lr warms up linearly, then follows a half-cosine (SSAM) or a plateau schedule (SSAMBA).
Checkpoints (pretrain/checkpoints.py) are one safetensors file written atomically every
`ckpt_every` steps and when the run is asked to stop (SIGTERM, as sent by `timeout`, batch
schedulers and torchrun, or a first Ctrl-C: the current step finishes, is saved, and the
process exits 128 + the signal number; a second Ctrl-C interrupts at once); `--resume`
continues exactly (data order, crops and masks are all functions of the seed and the step;
the plateau schedule's state is saved in the metadata).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from hear_ssam import SpectrogramEncoder

from .checkpoints import CHECKPOINT, checkpoint_step, load_training_checkpoint, read_init_weights, save_training_checkpoint
from .config import TrainConfig
from .data import CropDataset, EpochSampler, list_audio
from .export import export
from .objectives import MASKINGS, MaskedSpectrogramModel, masks_per_step, objective_metrics
from .provenance import corpus_info, git_commit, hardware
from .seeds import derive_seed

log = logging.getLogger("pretrain")


def lr_at(step, total, warmup, peak):
    """Linear warm-up, then half-cosine to zero, per step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_plateau(step, warmup, peak, scale):
    """Linear warm-up to the peak, times the plateau schedule's current scale (1, 0.5, ...).

    (SSAST / SSAMBA raise the lr in 50-step stairs from 0, `step / 1000 * lr` at every 50th step;
    this is the same ramp without the stairs, the house's warm-up.)"""
    return peak * scale * min(1.0, (step + 1) / warmup) if warmup else peak * scale


class Plateau:
    """torch's ReduceLROnPlateau (rel threshold 1e-4, cooldown 0, min_lr 0, eps 1e-8) acting on
    a scale of the peak lr, fed the mean of a training metric over each interval of steps.
    Its whole state is a small JSON dict, saved in the training checkpoint for an exact resume."""

    def __init__(self, peak, mode="min", factor=0.5, patience=2, threshold=1e-4, eps=1e-8):
        self.peak, self.mode, self.factor, self.patience = peak, mode, factor, patience
        self.threshold, self.eps = threshold, eps
        self.best, self.bad, self.scale, self.total, self.count, self.checks = None, 0, 1.0, 0.0, 0, 0

    def observe(self, value: float) -> None:
        """One step's metric (non-finite values, e.g. an fp16 overflow step, are left out)."""
        if math.isfinite(value):
            self.total += value
            self.count += 1

    def _better(self, value):
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best * (1 - self.threshold)
        return value > self.best * (1 + self.threshold)

    def step(self):
        """End of an interval: compare its mean with the best so far; maybe halve the scale.
        Returns the interval's mean (None if it had no finite value)."""
        value = self.total / self.count if self.count else float("nan")
        self.total, self.count, self.checks = 0.0, 0, self.checks + 1
        if self._better(value):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        if self.bad > self.patience:
            old = self.peak * self.scale
            if old - old * self.factor > self.eps:
                self.scale *= self.factor
            self.bad = 0
        return value if math.isfinite(value) else None

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad, "scale": self.scale, "total": self.total,
                "count": self.count, "checks": self.checks}

    def load_state_dict(self, state: dict) -> None:
        for k in ("best", "bad", "scale", "total", "count", "checks"):
            setattr(self, k, state[k])


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------ logging

class MetricsLog:
    """metrics.csv (+ TensorBoard when installed); rows past a resumed step are dropped.
    A joint objective adds its metrics (e.g. nce, mse, acc) as columns."""
    FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "clips_per_s", "elapsed_s"]

    def __init__(self, out: Path, resume_step: int, extra_fields=()):
        self.extra = list(extra_fields)
        self.FIELDS = self.FIELDS[:3] + self.extra + self.FIELDS[3:]
        self.path = out / "metrics.csv"
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:
            log.warning("tensorboard is not installed: logging to metrics.csv only")

    def write(self, row):
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(row)
        if self.tb:
            for k in ["loss", *self.extra, "lr", "grad_norm", "clips_per_s"]:
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def close(self):
        if self.tb:
            self.tb.close()


class Stopped(KeyboardInterrupt):
    """The run stopped early on a signal, after saving its checkpoint: `--resume` continues it."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step


class StopRequest:
    """SIGTERM or a first SIGINT asks the loop to stop at the end of the current step (so that
    it can save the step it paid for); a second SIGINT interrupts at once. Handlers can only be
    installed from the main thread: elsewhere (a notebook's worker thread) signals keep their
    usual meaning and only the periodic checkpoints protect the run."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: stopping after this step and saving a checkpoint (Ctrl-C again to "
                    "interrupt at once)", signal.Signals(signum).name)

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def ignore_stop_signals(worker_id: int):
    """DataLoader workers share the run's process group: Ctrl-C reaches them too, and so does
    SIGTERM from `timeout`, Slurm or `pkill -f`; a worker that exits on either would fail the
    step the main process is finishing to save. The main process stops them when it exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ------------------------------------------------------------------ the loop

def train(cfg: TrainConfig, data: str, out: Path, resume: bool = False, cache_dir=None,
          command: str = "") -> Path:
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.cuda.is_available()
    if ddp:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local = 0, 1, 0
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    main_proc = rank == 0
    if not resume and (out / CHECKPOINT).exists():
        # A fresh start here would restart the curve and overwrite the saved state at its first
        # save: hours of training lost to a forgotten flag. Refuse before touching anything.
        raise ValueError(f"{out} already holds a run's training checkpoint ({checkpoint_step(out / CHECKPOINT)}): "
                         f"pass --resume to continue it, or give a new --out to start another run")
    out.mkdir(parents=True, exist_ok=True)

    if cfg.global_batch % (cfg.micro_batch * world):
        raise ValueError(f"global_batch {cfg.global_batch} is not a multiple of micro_batch "
                         f"{cfg.micro_batch} x {world} processes")
    accum = cfg.global_batch // (cfg.micro_batch * world)

    torch.manual_seed(cfg.seed)
    encoder = SpectrogramEncoder(cfg.encoder_config())
    core = MaskedSpectrogramModel(encoder, cfg.objective)  # refuses an objective whose heads are missing
    # On the device before the optimizer exists: a resumed optimizer state is placed on its
    # parameters' device (moved later, the state stayed on the CPU and a GPU resume failed)
    encoder.to(device)
    files = list_audio(data)
    dataset = CropDataset(files, crop_frames=encoder.cfg.crop_frames, seed=cfg.seed, cache_dir=cache_dir,
                          frontend_cfg=cfg.frontend, short_files=cfg.short_files)
    if dataset.cache_dir:  # filled once, by rank 0; the other ranks wait and then read it
        if main_proc:
            dataset.fill_cache()
        if ddp:
            dist.barrier()
    epoch_clips = cfg.epoch_clips or len(dataset)
    weights = dataset.length_weights(cfg.length_weight_cap_s) if cfg.length_weight_cap_s else None
    steps_per_epoch = epoch_clips // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch of {epoch_clips} clips is smaller than one global batch "
                         f"({cfg.global_batch}); set epoch_clips or a smaller global_batch")
    total = cfg.max_steps or int(cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_epochs * steps_per_epoch)
    plateau = None
    if cfg.schedule == "plateau":
        plateau = Plateau(cfg.lr, mode="max" if cfg.plateau_metric == "accuracy" else "min",
                          factor=cfg.plateau_factor, patience=cfg.plateau_patience)

    def lr_for(step):
        if plateau is not None:
            return lr_plateau(step, warmup, cfg.lr, plateau.scale)
        return lr_at(step, total, warmup, cfg.lr)

    optimizer = torch.optim.AdamW(param_groups(encoder, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    # Autocast: fp16 (with a GradScaler) or bf16 on CUDA; on CPU only bf16, which oneDNN runs
    # natively where the CPU has AVX512-BF16 / AMX (a paper config's fp16 runs fp32 on a CPU).
    use_amp = cfg.precision == "bf16" or (cuda and cfg.precision == "fp16")
    amp_dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.precision == "fp16")
    step = 0
    segments = []  # one per (re)start: where it ran, which steps, how long (the provenance's hardware)
    ckpt_path = out / CHECKPOINT
    meta = None  # the resumed checkpoint's metadata
    if resume and ckpt_path.exists():
        meta, model_state, opt_state = load_training_checkpoint(ckpt_path)
        encoder.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(opt_state)
        scaler.load_state_dict(meta["scaler"])
        step = meta["step"]
        segments = meta.get("segments", [])
        if plateau is not None and "plateau" in meta:
            plateau.load_state_dict(meta["plateau"])
        if main_proc:
            log.info("resumed from %s at step %d", ckpt_path, step)
    elif resume and main_proc:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
    init_record = None
    if meta is not None:  # resumed: the run's second-stage origin, if any, is in its metadata
        init_record = meta.get("init_from")
    elif cfg.init_from:
        init_state, init_record = read_init_weights(cfg.init_from, encoder.cfg, cfg.frontend)
        encoder.load_state_dict(init_state, strict=True)
        if main_proc:
            log.info("starting from the weights of %s (%s crops seen, sha256 %s...)", cfg.init_from,
                     init_record["clips_seen"], init_record["sha256"][:12])
    make_mask = MASKINGS[cfg.masking]
    grid = (*encoder.cfg.grid, encoder.cfg.patch_order)  # (n_t, n_f, token order)
    n_masks = masks_per_step(cfg.objective)
    metric_names = objective_metrics(cfg.objective)
    model = DDP(core, device_ids=[local] if cuda else None) if ddp else core

    if main_proc:
        log.info("%s: %s trainable parameters; %d files (%.2f h, %d unreadable skipped); "
                 "%d steps of %d clips (%d x %d x %d accum), %d steps/epoch, lr %.2e (%d warm-up steps, %s), "
                 "%s masking, %s, %s on %s",
                 cfg.preset, f"{encoder.num_trainable_parameters():,}", len(dataset), dataset.hours,
                 len(dataset.skipped), total, cfg.global_batch, world, cfg.micro_batch, accum,
                 steps_per_epoch, cfg.lr, warmup, cfg.schedule, cfg.masking, cfg.objective,
                 cfg.precision if use_amp else "fp32", device)
    metrics = MetricsLog(out, step, metric_names) if main_proc else None
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not main_proc,
               dynamic_ncols=True)
    started, clips_since, t_last = time.time(), 0, time.time()
    extra = {"data": str(data), "files": len(dataset), "data_hours": round(dataset.hours, 3),
             "skipped_files": len(dataset.skipped), "command": command, **corpus_info(data)}
    if init_record:
        extra["init_from"] = init_record
    segment = {"hardware": hardware(device, world), "git_commit": git_commit(), "from_step": step,
               "to_step": step, "wall_s": 0.0,
               "precision": cfg.precision if use_amp else "fp32"}  # what ran: fp16 configs run fp32 on CPUs

    def draws_from(step):
        """This process's (epoch, position, file) draws from `step` on, epoch after epoch (each
        epoch its own deterministic order; epochs end on step boundaries)."""
        epoch, in_epoch = divmod(step, steps_per_epoch)
        start = in_epoch * cfg.micro_batch * accum
        while True:
            yield from EpochSampler(len(dataset), steps_per_epoch * cfg.global_batch, cfg.seed, epoch,
                                    rank, world, start=start, weights=weights)
            epoch, start = epoch + 1, 0

    def batches_from(step):
        """(epoch, micro-batch) from `step` on, through one DataLoader for the whole run: its
        workers are forked once, here, while this process is small. A loader per epoch forked
        them from a process holding a training step's freed memory, which copy-on-write then
        duplicated as training reused it (ssamba-tiny's CPU run, 16 GB, was OOM-killed at its
        first epoch boundary, twice)."""
        loader = DataLoader(dataset, batch_size=cfg.micro_batch, sampler=draws_from(step),
                            num_workers=cfg.num_workers, drop_last=True, worker_init_fn=ignore_stop_signals,
                            pin_memory=cuda)
        for i, batch in enumerate(loader):
            yield (step + i // accum) // steps_per_epoch, batch

    loss_value = float("nan")
    stream = batches_from(step)
    stop, stopping = StopRequest(), False
    stop.install()
    try:
        while step < total and not stopping:
            lr = lr_for(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # loss, then the objective's metrics, then whether a stop was asked for (summed over
            # the processes with the rest: every rank stops at the same step)
            sums = torch.zeros(2 + len(metric_names), device=device)
            for micro in range(accum):
                epoch, spec = next(stream)
                spec = spec.to(device, non_blocking=True)
                g = torch.Generator().manual_seed(derive_seed("mask", cfg.seed, step, rank, micro))
                masks = [make_mask(spec.shape[0], encoder.cfg.num_patches, cfg.mask_ratio, g, device, grid=grid)
                         for _ in range(n_masks)]  # one generator: the first mask is the same for any n_masks
                mask = masks[0] if n_masks == 1 else torch.stack(masks)
                if encoder.cfg.drop_path_rate:  # stochastic depth drawn from the run's seeds: resume stays exact
                    encoder.set_drop_path_generator(
                        torch.Generator().manual_seed(derive_seed("drop_path", cfg.seed, step, rank, micro)))
                sync = contextlib.nullcontext() if (not ddp or micro == accum - 1) else model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        loss, pred = model(spec, mask)
                    scaler.scale(loss / accum).backward()
                sums[0] += loss.detach().float() / accum
                for i, name in enumerate(metric_names):
                    sums[1 + i] += core.metrics[name].float() / accum
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(encoder.parameters(), float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            clips_since += cfg.global_batch
            sums[-1] = float(stop.signum is not None)
            if ddp:
                dist.all_reduce(sums)  # gloo has no AVG
                sums /= world
            values = sums.tolist()
            loss_value, named = values[0], dict(zip(metric_names, values[1:-1]))
            stopping = values[-1] > 0
            if not math.isfinite(loss_value) and not scaler.is_enabled():
                raise FloatingPointError(f"loss became {loss_value} at step {step}")
            if plateau is not None:
                plateau.observe(named["acc"] if cfg.plateau_metric == "accuracy" else loss_value)
                if step % cfg.plateau_every == 0:
                    scale = plateau.scale
                    mean = plateau.step()
                    if main_proc and plateau.scale != scale:
                        log.info("step %d: mean %s %s, no better than %.4f for %d checks: lr x %g (now %.2e)",
                                 step, cfg.plateau_metric, "nan" if mean is None else f"{mean:.4f}",
                                 plateau.best, cfg.plateau_patience + 1, cfg.plateau_factor, cfg.lr * plateau.scale)
            bar.update(1)
            if main_proc and (step % cfg.log_every == 0 or step == total):
                now = time.time()
                rate = clips_since / max(1e-9, now - t_last)
                clips_since, t_last = 0, now
                metrics.write({"step": step, "epoch": epoch, "loss": f"{loss_value:.6f}", "lr": f"{lr:.6e}",
                               "grad_norm": f"{grad_norm.item():.4f}", "clips_per_s": f"{rate:.2f}",
                               "elapsed_s": f"{now - started:.1f}", **{k: f"{v:.6f}" for k, v in named.items()}})
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.1e}", clips_s=f"{rate:.1f}")
            if main_proc and cfg.plot_every and (step % cfg.plot_every == 0 or step == 1):  # 1: the start
                from .plots import save_reconstruction
                shown = mask[-1] if mask.ndim == 3 else mask  # the mask of the pass that `pred` reconstructs
                save_reconstruction(out / "plots" / f"step_{step:07d}.png", encoder, spec[0], shown[0],
                                    pred[0].detach(), step, loss_value)
            if main_proc and (step % cfg.ckpt_every == 0 or step == total or stopping):
                wall = time.time() - started  # this segment's, start-up and checkpoints included
                segment.update(to_step=step, wall_s=round(wall, 1),
                               clips_per_s=round((step - segment["from_step"]) * cfg.global_batch / max(wall, 1e-9), 2))
                state = dict(extra, last_loss=loss_value, segments=[*segments, segment])
                if plateau is not None:
                    state["plateau"] = plateau.state_dict()
                save_training_checkpoint(ckpt_path, encoder, cfg.frontend, optimizer, scaler, step, cfg, state)
                from .plots import save_training_curve
                seen_before = (init_record or {}).get("clips_seen") or 0  # a second stage's start
                save_training_curve(out / "training_curve.png", metrics.path, cfg.global_batch,
                                    f"{cfg.preset}: loss after {seen_before + step * cfg.global_batch:,} crops: "
                                    f"{loss_value:.4f}", start_crops=seen_before)
    except KeyboardInterrupt:
        if main_proc:
            log.warning("interrupted at step %d; the last checkpoint is %s (rerun with --resume)",
                        step, ckpt_path)
        raise
    finally:
        stop.restore()
        bar.close()
        if metrics:
            metrics.close()
        if ddp:
            dist.destroy_process_group()

    if step < total:  # stopped on a signal, its step saved
        if main_proc:
            log.warning("stopped at step %d of %d; checkpoint %s (rerun with --resume to continue)",
                        step, total, ckpt_path)
        raise Stopped(stop.signum or signal.SIGTERM, step)  # another rank's signal: the same stop
    model_path = out / "model.safetensors"
    if main_proc:
        export(ckpt_path, model_path)
        log.info("done: %d steps, final loss %.4f; plugin checkpoint %s", step, loss_value, model_path)
    return model_path
