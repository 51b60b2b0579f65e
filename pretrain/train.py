"""Masked spectrogram modelling (SSAST-style), one readable loop; DDP under torchrun.

    python -m pretrain train --config pretrain/configs/ssam_tiny.yaml --data DIR_OR_MANIFEST --out runs/NAME
    torchrun --nproc-per-node=4 -m pretrain train --config ... --data ... --out ...

The encoder sees all 1 + N tokens; masked patches are replaced by the learnable mask token
(position-free for SSAM, with position for SSAST / SSAMBA); the heads predict every patch; the
masking and the objective are named choices (pretrain/objectives.py; SSAM's recipe:
unstructured, MSE over all patches; SSAMBA's: cluster masking, SSAST's joint InfoNCE + MSE).
The lr warms up linearly, then follows a half-cosine (SSAM) or a plateau schedule (SSAMBA)
(pretrain/schedules.py). Checkpoints (pretrain/checkpoints.py) are one safetensors file written
atomically every `ckpt_every` steps and when the run is asked to stop (pretrain/stopping.py:
SIGTERM, as sent by `timeout`, batch schedulers and torchrun, or a first Ctrl-C: the current
step finishes, is saved, and the process exits 128 + the signal number; a second Ctrl-C
interrupts at once); `--resume` continues exactly (data order, crops and masks are all
functions of the seed and the step; the plateau schedule's state is saved in the metadata).
Metrics, curves and plots: pretrain/run_log.py.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import NamedTuple

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
from .run_log import MetricsLog, plot_reconstruction
from .schedules import LrSchedule
from .seeds import derive_seed
from .stopping import Stopped, StopRequest, ignore_stop_signals

log = logging.getLogger("pretrain")


# ------------------------------------------------------------------ setup

class Processes(NamedTuple):
    """This process's place in the run."""
    ddp: bool
    rank: int
    world: int
    local_rank: int
    device: torch.device


def start_processes() -> Processes:
    """Under torchrun (WORLD_SIZE > 1): join the DDP process group (nccl on CUDA, gloo on CPU),
    one GPU per process; otherwise the run's only process, on the GPU if there is one."""
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
    return Processes(ddp, rank, world, local, device)


def micro_steps_per_step(cfg: TrainConfig, world: int) -> int:
    """Gradient-accumulation micro-steps per optimizer step: global_batch = micro_batch x world x this."""
    if cfg.global_batch % (cfg.micro_batch * world):
        raise ValueError(f"global_batch {cfg.global_batch} is not a multiple of micro_batch "
                         f"{cfg.micro_batch} x {world} processes")
    return cfg.global_batch // (cfg.micro_batch * world)


def load_crops(cfg: TrainConfig, data: str, crop_frames: int, cache_dir, main_proc: bool, ddp: bool) -> CropDataset:
    """The crops of `data`'s readable files; a feature cache is filled once, by rank 0, while the
    other ranks wait, and then read by all."""
    dataset = CropDataset(list_audio(data), crop_frames=crop_frames, seed=cfg.seed, cache_dir=cache_dir,
                          frontend_cfg=cfg.frontend, short_files=cfg.short_files)
    if dataset.cache_dir:
        if main_proc:
            dataset.fill_cache()
        if ddp:
            dist.barrier()
    return dataset


def run_length(cfg: TrainConfig, n_files: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warm-up steps); an epoch is `epoch_clips` crops (default:
    one per file) and ends on a step boundary."""
    epoch_clips = cfg.epoch_clips or n_files
    steps_per_epoch = epoch_clips // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch of {epoch_clips} clips is smaller than one global batch "
                         f"({cfg.global_batch}); set epoch_clips or a smaller global_batch")
    total = cfg.max_steps or int(cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_epochs * steps_per_epoch)
    return steps_per_epoch, total, warmup


class Precision(NamedTuple):
    """What the forward pass runs in."""
    autocast: bool      # under torch.autocast, in `dtype`
    dtype: torch.dtype
    ran: str            # the name the provenance records: "fp32" where the config's fp16 cannot run


def choose_precision(cfg: TrainConfig, cuda: bool) -> Precision:
    # Autocast: fp16 (with a GradScaler) or bf16 on CUDA; on CPU only bf16, which oneDNN runs
    # natively where the CPU has AVX512-BF16 / AMX (a paper config's fp16 runs fp32 on a CPU).
    autocast = cfg.precision == "bf16" or (cuda and cfg.precision == "fp16")
    dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    return Precision(autocast, dtype, cfg.precision if autocast else "fp32")


def param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: TrainConfig, encoder, precision: Precision):
    """(AdamW without weight decay on biases and 1-d parameters, the loss scaler: active for fp16 only)."""
    optimizer = torch.optim.AdamW(param_groups(encoder, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.autocast and cfg.precision == "fp16")
    return optimizer, scaler


def resume_or_start(out: Path, resume: bool, cfg: TrainConfig, encoder, optimizer, scaler, schedule: LrSchedule,
                    main_proc: bool) -> tuple[int, list, dict | None]:
    """(the step this segment starts at, the earlier segments' records, the init_from record).
    With --resume and a checkpoint in `out`: its weights, AdamW and loss-scaler states, schedule
    state and records. Otherwise step 0, from `cfg.init_from`'s weights where it names a file."""
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.exists():
        meta, model_state, opt_state = load_training_checkpoint(ckpt_path)
        encoder.load_state_dict(model_state, strict=True)
        optimizer.load_state_dict(opt_state)
        scaler.load_state_dict(meta["scaler"])
        schedule.load_state_dict(meta)
        if main_proc:
            log.info("resumed from %s at step %d", ckpt_path, meta["step"])
        # the run's second-stage origin, if any, is in its metadata
        return meta["step"], meta.get("segments", []), meta.get("init_from")
    if resume and main_proc:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", out)
    init_record = None
    if cfg.init_from:
        init_state, init_record = read_init_weights(cfg.init_from, encoder.cfg, encoder.pretraining, cfg.frontend)
        encoder.load_state_dict(init_state, strict=True)
        if main_proc:
            log.info("starting from the weights of %s (%s crops seen, sha256 %s...)", cfg.init_from,
                     init_record["clips_seen"], init_record["sha256"][:12])
    return 0, [], init_record


def training_batches(dataset: CropDataset, cfg: TrainConfig, start_step: int, steps_per_epoch: int, accum: int,
                     rank: int, world: int, pin_memory: bool):
    """(epoch, micro-batch spec [micro_batch, 1, T, F]) from `start_step` on, epoch after epoch,
    through one DataLoader for the whole run: its workers are forked once, here, while this
    process is small. A loader per epoch forked them from a process holding a training step's
    freed memory, which copy-on-write then duplicated as training reused it (ssamba-tiny's CPU
    run, 16 GB, was OOM-killed at its first epoch boundary, twice)."""
    weights = dataset.length_weights(cfg.length_weight_cap_s) if cfg.length_weight_cap_s else None

    def draws():
        """This process's (epoch, position, file) draws, each epoch its own deterministic order."""
        epoch, in_epoch = divmod(start_step, steps_per_epoch)
        start = in_epoch * cfg.micro_batch * accum
        while True:
            yield from EpochSampler(len(dataset), steps_per_epoch * cfg.global_batch, cfg.seed, epoch,
                                    rank, world, start=start, weights=weights)
            epoch, start = epoch + 1, 0

    loader = DataLoader(dataset, batch_size=cfg.micro_batch, sampler=draws(), num_workers=cfg.num_workers,
                        drop_last=True, worker_init_fn=ignore_stop_signals, pin_memory=pin_memory)
    for i, batch in enumerate(loader):
        yield (start_step + i // accum) // steps_per_epoch, batch


def seeded_masks(cfg: TrainConfig, encoder, batch_size: int, step: int, rank: int, micro: int, device):
    """One micro-step's masks, [B, N], or [n_masks, B, N] for an objective with several passes,
    drawn from derive_seed("mask", seed, step, rank, micro): a resume draws them again."""
    n_masks = masks_per_step(cfg.objective)
    g = torch.Generator().manual_seed(derive_seed("mask", cfg.seed, step, rank, micro))
    grid = (*encoder.cfg.grid, encoder.cfg.patch_order)  # (n_t, n_f, token order)
    masks = [MASKINGS[cfg.masking](batch_size, encoder.cfg.num_patches, cfg.mask_ratio, g, device, grid=grid)
             for _ in range(n_masks)]  # one generator: the first mask is the same for any n_masks
    return masks[0] if n_masks == 1 else torch.stack(masks)


def provenance_records(data: str, dataset: CropDataset, command: str, init_record: dict | None, device,
                       world: int, step: int, precision: Precision) -> tuple[dict, dict]:
    """(what every checkpoint of the run records: data, command, second-stage origin; this
    segment's record: where it ran, from which step, in which precision, filled in at each save)."""
    extra = {"data": str(data), "files": len(dataset), "data_hours": round(dataset.hours, 3),
             "skipped_files": len(dataset.skipped), "command": command, **corpus_info(data)}
    if init_record:
        extra["init_from"] = init_record
    segment = {"hardware": hardware(device, world), "git_commit": git_commit(), "from_step": step,
               "to_step": step, "wall_s": 0.0, "precision": precision.ran}
    return extra, segment


def checkpoint_metadata(extra: dict, segments: list, segment: dict, started: float, step: int, global_batch: int,
                        loss: float, schedule: LrSchedule) -> dict:
    """What a checkpoint at `step` records beside the config: the data, the last loss, every
    segment's record (this one's brought up to `step`) and the schedule's state."""
    wall = time.time() - started  # this segment's, start-up and checkpoints included
    segment.update(to_step=step, wall_s=round(wall, 1),
                   clips_per_s=round((step - segment["from_step"]) * global_batch / max(wall, 1e-9), 2))
    return {**extra, "last_loss": loss, "segments": [*segments, segment], **schedule.state_dict()}


# ------------------------------------------------------------------ the loop

def train(cfg: TrainConfig, data: str, out: Path, resume: bool = False, cache_dir=None,
          command: str = "") -> Path:
    """Pretrain `cfg`'s encoder on the audio of `data` (a folder or a manifest) into the run folder
    `out`; returns the exported plugin checkpoint, out/model.safetensors. Raises Stopped (a
    KeyboardInterrupt) after saving the step a stop signal arrived in."""
    ddp, rank, world, local, device = start_processes()
    cuda, main_proc = device.type == "cuda", rank == 0
    ckpt_path = out / CHECKPOINT
    if not resume and ckpt_path.exists():
        # A fresh start here would restart the curve and overwrite the saved state at its first
        # save: hours of training lost to a forgotten flag. Refuse before touching anything.
        raise ValueError(f"{out} already holds a run's training checkpoint ({checkpoint_step(ckpt_path)}): "
                         f"pass --resume to continue it, or give a new --out to start another run")
    if cfg.init_from and not (resume and ckpt_path.exists()) and not Path(cfg.init_from).is_file():
        # Checked here, before the corpus is read and its features cached (minutes), not after.
        raise FileNotFoundError(f"init_from {cfg.init_from} does not exist: export the stage it names first "
                                "(python -m pretrain export RUN/checkpoint.safetensors FILE) or restore it "
                                "from git (docs/checkpoints.md, Older files)")
    out.mkdir(parents=True, exist_ok=True)
    accum = micro_steps_per_step(cfg, world)

    torch.manual_seed(cfg.seed)
    encoder = SpectrogramEncoder(cfg.encoder_config(), cfg.pretraining_options())
    core = MaskedSpectrogramModel(encoder, cfg.objective)  # refuses an objective whose heads are missing
    # On the device before the optimizer exists: a resumed optimizer state is placed on its
    # parameters' device (moved later, the state stayed on the CPU and a GPU resume failed)
    encoder.to(device)
    dataset = load_crops(cfg, data, encoder.cfg.crop_frames, cache_dir, main_proc, ddp)
    steps_per_epoch, total, warmup = run_length(cfg, len(dataset))
    schedule = LrSchedule(cfg, total, warmup, log_cuts=main_proc)
    precision = choose_precision(cfg, cuda)
    optimizer, scaler = build_optimizer(cfg, encoder, precision)
    step, segments, init_record = resume_or_start(out, resume, cfg, encoder, optimizer, scaler, schedule, main_proc)
    metric_names = objective_metrics(cfg.objective)
    model = DDP(core, device_ids=[local] if cuda else None) if ddp else core

    if main_proc:
        log.info("%s: %s trainable parameters; %d files (%.2f h, %d unreadable skipped); "
                 "%d steps of %d clips (%d x %d x %d accum), %d steps/epoch, lr %.2e (%d warm-up steps, %s), "
                 "%s masking, %s, %s on %s",
                 cfg.preset, f"{encoder.num_trainable_parameters():,}", len(dataset), dataset.hours,
                 len(dataset.skipped), total, cfg.global_batch, world, cfg.micro_batch, accum,
                 steps_per_epoch, cfg.lr, warmup, cfg.schedule, cfg.masking, cfg.objective, precision.ran, device)
    metrics = MetricsLog(out, step, cfg.global_batch, metric_names) if main_proc else None
    bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not main_proc,
               dynamic_ncols=True)
    started = time.time()
    extra, segment = provenance_records(data, dataset, command, init_record, device, world, step, precision)
    clips_before = (init_record or {}).get("clips_seen") or 0  # a second stage's start weights had seen these

    loss_value = float("nan")
    stream = training_batches(dataset, cfg, step, steps_per_epoch, accum, rank, world, pin_memory=cuda)
    stop, stopping = StopRequest(), False
    stop.install()
    try:
        while step < total and not stopping:
            lr = schedule.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # loss, then the objective's metrics, then whether a stop was asked for (summed over
            # the processes with the rest: every rank stops at the same step)
            sums = torch.zeros(2 + len(metric_names), device=device)
            for micro in range(accum):
                epoch, spec = next(stream)
                spec = spec.to(device, non_blocking=True)
                mask = seeded_masks(cfg, encoder, spec.shape[0], step, rank, micro, device)
                if encoder.pretraining.drop_path_rate:  # drawn from the run's seeds: resume stays exact
                    encoder.set_drop_path_generator(
                        torch.Generator().manual_seed(derive_seed("drop_path", cfg.seed, step, rank, micro)))
                sync = contextlib.nullcontext() if (not ddp or micro == accum - 1) else model.no_sync()
                with sync:
                    with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.autocast):
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
            sums[-1] = float(stop.signum is not None)
            if ddp:
                dist.all_reduce(sums)  # gloo has no AVG
                sums /= world
            values = sums.tolist()
            loss_value, named = values[0], dict(zip(metric_names, values[1:-1]))
            stopping = values[-1] > 0
            if not math.isfinite(loss_value) and not scaler.is_enabled():
                raise FloatingPointError(f"loss became {loss_value} at step {step}")
            schedule.after_step(step, loss_value, named)
            bar.update(1)
            if main_proc and (step % cfg.log_every == 0 or step == total):
                rate = metrics.write(step, epoch, loss_value, lr, grad_norm, named)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.1e}", clips_s=f"{rate:.1f}")
            if main_proc and cfg.plot_every and (step % cfg.plot_every == 0 or step == 1):  # 1: the start
                plot_reconstruction(out, step, encoder, spec, mask, pred, loss_value)
            if main_proc and (step % cfg.ckpt_every == 0 or step == total or stopping):
                metadata = checkpoint_metadata(extra, segments, segment, started, step, cfg.global_batch,
                                               loss_value, schedule)
                save_training_checkpoint(ckpt_path, encoder, cfg.frontend, optimizer, scaler, step, cfg, metadata)
                metrics.redraw_curve(f"{cfg.preset}: loss after {clips_before + step * cfg.global_batch:,} crops: "
                                     f"{loss_value:.4f}", start_crops=clips_before)
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
        # Only after a loop every rank left at the same step (after an error the others may
        # sit in a collective, and waiting for them would hang). The barrier waits for rank 0's
        # checkpoint: a gloo group torn down while a peer still works aborts the process.
        dist.barrier()
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
