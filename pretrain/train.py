"""Masked spectrogram modelling (SSAST-style), one readable loop; DDP under torchrun.

    python -m pretrain train --config pretrain/configs/ssam_tiny.yaml --data DIR_OR_MANIFEST --out runs/NAME
    torchrun --nproc-per-node=4 -m pretrain train --config ... --data ... --out ...

The encoder sees all 1 + 250 tokens; masked patches are replaced by the learnable,
position-free mask token; the head predicts every patch; the masking and the objective are
named choices (pretrain/objectives.py; the recipe: unstructured, MSE over all patches).
Checkpoints (pretrain/checkpoints.py) are one safetensors file written atomically every
`ckpt_every` steps; `--resume` continues exactly (data order, crops and masks are all
functions of the seed and the step, so nothing stateful needs saving).
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from tqdm import tqdm

from hear_ssam import SpectrogramEncoder

from .checkpoints import CHECKPOINT, load_training_checkpoint, save_training_checkpoint
from .config import TrainConfig
from .data import CropDataset, EpochSampler, list_audio
from .export import export
from .objectives import MASKINGS, MaskedSpectrogramModel
from .seeds import derive_seed

log = logging.getLogger("pretrain")


def lr_at(step, total, warmup, peak):
    """Linear warm-up, then half-cosine to zero, per step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------ logging

class MetricsLog:
    """metrics.csv (+ TensorBoard when installed); rows past a resumed step are dropped."""
    FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "clips_per_s", "elapsed_s"]

    def __init__(self, out: Path, resume_step: int):
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
            for k in ("loss", "lr", "grad_norm", "clips_per_s"):
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])

    def close(self):
        if self.tb:
            self.tb.close()


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
    out.mkdir(parents=True, exist_ok=True)

    if cfg.global_batch % (cfg.micro_batch * world):
        raise ValueError(f"global_batch {cfg.global_batch} is not a multiple of micro_batch "
                         f"{cfg.micro_batch} x {world} processes")
    accum = cfg.global_batch // (cfg.micro_batch * world)

    torch.manual_seed(cfg.seed)
    encoder = SpectrogramEncoder(cfg.encoder_config())
    files = list_audio(data)
    dataset = CropDataset(files, crop_frames=encoder.cfg.crop_frames, seed=cfg.seed, cache_dir=cache_dir,
                          frontend_cfg=cfg.frontend)
    if dataset.cache_dir:  # filled once, by rank 0; the other ranks wait and then read it
        if main_proc:
            dataset.fill_cache()
        if ddp:
            dist.barrier()
    epoch_clips = cfg.epoch_clips or len(dataset)
    steps_per_epoch = epoch_clips // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch of {epoch_clips} clips is smaller than one global batch "
                         f"({cfg.global_batch}); set epoch_clips or a smaller global_batch")
    total = cfg.max_steps or int(cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    optimizer = torch.optim.AdamW(param_groups(encoder, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    use_amp = cuda and cfg.precision != "fp32"
    amp_dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and cfg.precision == "fp16")
    step = 0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.exists():
        meta, model_state, opt_state = load_training_checkpoint(ckpt_path)
        encoder.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(opt_state)
        scaler.load_state_dict(meta["scaler"])
        step = meta["step"]
        if main_proc:
            log.info("resumed from %s at step %d", ckpt_path, step)
    elif resume and main_proc:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
    encoder.to(device)
    model = MaskedSpectrogramModel(encoder, cfg.objective)
    make_mask = MASKINGS[cfg.masking]
    model = DDP(model, device_ids=[local] if cuda else None) if ddp else model

    if main_proc:
        log.info("%s: %s trainable parameters; %d files (%.2f h, %d unreadable skipped); "
                 "%d steps of %d clips (%d x %d x %d accum), %d steps/epoch, lr %.2e, %s on %s",
                 cfg.preset, f"{encoder.num_trainable_parameters():,}", len(dataset), dataset.hours,
                 len(dataset.skipped), total, cfg.global_batch, world, cfg.micro_batch, accum,
                 steps_per_epoch, cfg.lr, cfg.precision if use_amp else "fp32", device)
    metrics = MetricsLog(out, step) if main_proc else None
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not main_proc,
               dynamic_ncols=True)
    started, clips_since, t_last = time.time(), 0, time.time()
    extra = {"data": str(data), "files": len(dataset), "data_hours": round(dataset.hours, 3),
             "skipped_files": len(dataset.skipped), "command": command}

    def batches_from(step):
        """Micro-batches from `step` on, epoch by epoch (each epoch its own deterministic order)."""
        while True:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            sampler = EpochSampler(len(dataset), steps_per_epoch * cfg.global_batch, cfg.seed, epoch,
                                   rank, world, start=in_epoch * cfg.micro_batch * accum)
            loader = DataLoader(dataset, batch_size=cfg.micro_batch, sampler=sampler,
                                num_workers=cfg.num_workers, drop_last=True,
                                persistent_workers=False, pin_memory=cuda)
            for batch in loader:
                yield epoch, batch
            step = (epoch + 1) * steps_per_epoch

    loss_value = float("nan")
    stream = batches_from(step)
    try:
        while step < total:
            lr = lr_at(step, total, warmup, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                epoch, spec = next(stream)
                spec = spec.to(device, non_blocking=True)
                g = torch.Generator().manual_seed(derive_seed("mask", cfg.seed, step, rank, micro))
                mask = make_mask(spec.shape[0], encoder.cfg.num_patches, cfg.mask_ratio, g, device)
                sync = contextlib.nullcontext() if (not ddp or micro == accum - 1) else model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                        loss, pred = model(spec, mask)
                    scaler.scale(loss / accum).backward()
                loss_sum += loss.detach() / accum
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(encoder.parameters(), float("inf"))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            clips_since += cfg.global_batch
            if ddp:
                dist.all_reduce(loss_sum)  # gloo has no AVG
                loss_sum /= world
            loss_value = loss_sum.item()
            if not math.isfinite(loss_value) and not scaler.is_enabled():
                raise FloatingPointError(f"loss became {loss_value} at step {step}")
            bar.update(1)
            if main_proc and (step % cfg.log_every == 0 or step == total):
                now = time.time()
                rate = clips_since / max(1e-9, now - t_last)
                clips_since, t_last = 0, now
                metrics.write({"step": step, "epoch": epoch, "loss": f"{loss_value:.6f}", "lr": f"{lr:.6e}",
                               "grad_norm": f"{grad_norm.item():.4f}", "clips_per_s": f"{rate:.2f}",
                               "elapsed_s": f"{now - started:.1f}"})
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.1e}", clips_s=f"{rate:.1f}")
            if main_proc and cfg.plot_every and step % cfg.plot_every == 0:
                from .plots import save_reconstruction
                save_reconstruction(out / "plots" / f"step_{step:07d}.png", encoder, spec[0], mask[0],
                                    pred[0].detach(), step, loss_value)
            if main_proc and (step % cfg.ckpt_every == 0 or step == total):
                save_training_checkpoint(ckpt_path, encoder, cfg.frontend, optimizer, scaler, step, cfg,
                                         dict(extra, last_loss=loss_value))
    except KeyboardInterrupt:
        if main_proc:
            log.warning("interrupted at step %d; the last checkpoint is %s (rerun with --resume)",
                        step, ckpt_path)
        raise
    finally:
        bar.close()
        if metrics:
            metrics.close()
        if ddp:
            dist.destroy_process_group()

    model_path = out / "model.safetensors"
    if main_proc:
        export(ckpt_path, model_path)
        log.info("done: %d steps, final loss %.4f; plugin checkpoint %s", step, loss_value, model_path)
    return model_path
