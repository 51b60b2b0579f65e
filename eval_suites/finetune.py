"""Fine-tune any plugin checkpoint end to end on HEAR bundles with clip labels (SSAST's recipe).

    python -m eval_suites finetune --tasks-dir DIR --model NAME=CKPT --out RUNS [--task BUNDLE] [--seeds 0 1 2]
    torchrun --nproc-per-node=4 -m eval_suites finetune ...           # DDP, one GPU per process
    python -m results aggregate RUNS --out DIR                         # fine-tuned rows beside frozen ones

What runs, per (model, bundle, seed, data split): the checkpoint as `hear_ssam.load_model`
loads it (every family, official files included), its window set to the bundle's clip length
where its positions allow, the patch stride of the recipe (SSAST / SSAMBA: overlapping
patches), a head on the pooled tokens, trained on the split's train folds, the best epoch
chosen on its validation fold, that epoch's weights scored on its test fold with heareval's
own score functions. Splits are heareval's (`get_splits_from_metadata`): train/valid/test, or
for k folds, k splits (test fold i, valid fold i + 1, train the rest). The recipe and why each
default is what it is: docs/finetuning.md.

Layout under --out, beside the frozen runs of `python -m eval_suites run`:
    NAME/model.json                          checkpoint, sha256, "finetuned": true, the recipe
    NAME/seedK/BUNDLE/test.predicted-scores.json   heareval's layout (folds, aggregated_scores)
    NAME/seedK/BUNDLE/task_metadata.json     a copy: what `results aggregate` labels the task by
    NAME/seedK/BUNDLE/SPLIT.state.safetensors      the split's training state (resume; deleted when done)
    NAME/seedK/BUNDLE/SPLIT.best-epochE.safetensors  the best epoch's weights so far (likewise)
    NAME/seedK/BUNDLE/SPLIT.epochs.csv        per epoch: train loss, validation score, lr, clips/s
NAME defaults to the checkpoint's name + "-finetuned", so aggregate marks the row.

Resume: a split's state (weights, Adam moments, the best epoch and its score) is written
atomically after every epoch; the best epoch's weights only when the best changes, to a file
named by its epoch, written before the state that names it and the previous one deleted
after, so whenever a run dies the state's best epoch has its file. Every random draw (clip
order, augmentation, mixup, the head's initialisation, drop-path) comes from a generator seeded by
`derive_seed(purpose, seed, bundle, split, epoch, step)`, so a killed run started again
continues exactly where its last epoch ended and ends with the same weights and scores.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pretrain.seeds import derive_seed

from .finetune_recipe import FinetuneError, Recipe, parse_patch_stride
from .runner import SCORES, ModelSpec, _audio_source, _weights_sha256

log = logging.getLogger("eval_suites.finetune")
STATE_FORMAT = "hear_ssam-finetune/2"
PRETRAINING_ONLY = ("pred.", "cpred.", "mask_token")  # the encoder's heads and mask token: frozen, unused


# ------------------------------------------------------------------ bundles

@dataclasses.dataclass
class Bundle:
    """A HEAR bundle with clip labels, as fine-tuning reads it."""
    name: str
    audio_root: Path                  # the folder with 16000/SPLIT/ (the bundle or its resampled view)
    meta: dict
    labels: list                      # the vocabulary, in idx order
    clips: dict                       # split -> {clip file name: [labels]}

    @property
    def multilabel(self) -> bool:
        return self.meta["prediction_type"] == "multilabel"

    @property
    def metrics(self) -> list:
        return list(self.meta["evaluation"])

    def data_splits(self) -> list:
        """heareval's splits: [{"train": [...], "valid": [...], "test": [...]}]."""
        from heareval.predictions.task_predictions import get_splits_from_metadata
        return get_splits_from_metadata(self.meta)


def read_bundle(path: Path, out: Path) -> Bundle:
    """Check `path` (runner.check_bundle, a 16 kHz view when it lacks 16000/) and read it.
    Refuses broken bundles and event tasks, naming the fix."""
    path = Path(path)
    source, problems, _ = _audio_source(path, out, embedded=False)
    if problems:
        raise FinetuneError(f"bundle {path.name} is broken: {'; '.join(problems)}")
    meta = json.loads((source / "task_metadata.json").read_text())
    if meta["embedding_type"] != "scene":
        raise FinetuneError(f"bundle {path.name} is an event (timestamp) task: fine-tuning needs one label set "
                            "per clip; probe its frozen timestamp embeddings with python -m eval_suites run")
    with open(source / "labelvocabulary.csv", newline="") as f:
        vocab = sorted(csv.DictReader(f), key=lambda r: int(r["idx"]))
    labels = [r["label"] for r in vocab]
    # check_bundle has held every clip's labels against the vocabulary (multiclass: exactly one;
    # multilabel: any number, none included, which binary cross-entropy reads as all negative)
    clips = {split: {c: [str(x) for x in ls] for c, ls in sorted(json.loads((source / f"{split}.json").read_text()).items())}
             for split in meta["splits"]}
    return Bundle(path.name, source, meta, labels, clips)


# ------------------------------------------------------------------ the model

class FinetuneModel(nn.Module):
    """Encoder + SSAST's `ft_avgtok` head: LayerNorm + Linear on the pooled tokens.

    pooling "tokens": the mean of every non-CLS token of the window, padding included (SSAST /
    SSAMBA, as released). "frames": the scene embedding of SSAM / AxLSTM, the mean over the
    clip's real time steps of the frequency patches concatenated ([B, n_f * D]); a head on it is
    our extension (their papers probe frozen embeddings only).
    """

    def __init__(self, encoder: nn.Module, n_labels: int, pooling: str):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        width = encoder.cfg.embed_dim * (encoder.cfg.grid[1] if pooling == "frames" else 1)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_labels))

    def pool(self, tokens: torch.Tensor, real_steps: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D], real time steps per clip [B] -> [B, width]."""
        if self.pooling == "tokens":
            return tokens.mean(dim=1)
        grid = self.encoder.tokens_to_grid(tokens)                       # [B, n_t, n_f, D]
        frames = grid.reshape(grid.shape[0], grid.shape[1], -1)          # [B, n_t, n_f * D]
        keep = (torch.arange(frames.shape[1], device=frames.device)[None] < real_steps[:, None]).to(frames.dtype)
        return (frames * keep[..., None]).sum(dim=1) / keep.sum(dim=1, keepdim=True)

    def forward(self, spec: torch.Tensor, real_steps: torch.Tensor) -> torch.Tensor:
        """spec [B, 1, T, F] -> logits [B, n_labels]."""
        return self.head(self.pool(self.encoder(spec), real_steps))


def family_name(encoder) -> str:
    from hear_ssam.presets import family_of_config
    family = family_of_config(encoder.cfg)
    return family.name if family else "custom"


def resolve_stride(recipe: Recipe, encoder, family: str):
    """(time, freq) stride of the run, or None (the checkpoint's own, non-overlapping patches).

    auto: SSAST's fine-tuning geometry (stride 10 where a patch is wider than 10) for the
    families whose papers fine-tune with it (SSAST, SSAMBA); none for SSAM and AxLSTM."""
    stride = parse_patch_stride(recipe.patch_stride)
    if stride != "auto":
        return stride
    if family not in ("ssast", "ssamba"):
        return None
    cfg = encoder.cfg
    stride = (min(10, cfg.patch_time), min(10, cfg.patch_freq))
    return None if stride == (cfg.patch_time, cfg.patch_freq) else stride


def check_stride(stride, cfg) -> None:
    """Refuse a stride the patches cannot take, naming the flag (before any training)."""
    for st, p, dim in zip(stride, (cfg.patch_time, cfg.patch_freq), ("time (frames)", "frequency (bins)")):
        if not 1 <= st <= p:
            raise FinetuneError(f"--patch-stride {stride[0]},{stride[1]}: the {dim} stride {st} must be from 1 to the "
                                f"patch's {p} (patches are {cfg.patch_time} frames x {cfg.patch_freq} bins)")


def window_frames(recipe: Recipe, model, bundle: Bundle) -> int:
    """Frames per window, in whole patches: --window-seconds, else the bundle's clip length
    (SSAST's target_length is its task's clip length), else (a bundle of varied lengths) the
    model's own window."""
    from hear_ssam.api import window_frames_of
    cfg, frontend = model.encoder.cfg, model.frontend.cfg
    seconds = recipe.window_seconds or bundle.meta.get("sample_duration") or 0
    return window_frames_of(seconds, frontend, cfg.patch_time) if seconds else cfg.crop_frames


def build_model(spec: ModelSpec, recipe: Recipe, bundle: Bundle, head_seed: int):
    """(FinetuneModel, the HearSSAM it came from, a description of the geometry); the head is
    drawn from `head_seed` (the caller's global generator is left alone)."""
    from hear_ssam.api import load_model
    plugin = load_model(spec.path)
    if not hasattr(plugin, "encoder"):
        raise FinetuneError(f"model {spec.name} is the log-mel baseline: it has no weights to fine-tune")
    encoder = plugin.encoder
    frames = window_frames(recipe, plugin, bundle)
    family = family_name(encoder)
    stride = resolve_stride(recipe, encoder, family) or (encoder.cfg.patch_stride_time, encoder.cfg.patch_stride_freq)
    check_stride(stride, encoder.cfg)
    if encoder.cfg.positions == "sincos" and encoder.cfg.patch_order == "time-major":
        if frames != encoder.cfg.crop_frames:  # the fixed table extended by its formula
            encoder.extend_window(frames)
        encoder.set_patch_stride(*stride)
    else:  # learned positions: resampled to the window and stride in one step, as SSAST does
        encoder.set_patch_stride(*stride, crop_frames=frames)
    for name, p in encoder.named_parameters():  # pretraining-only parts: no gradient reaches them
        if name.startswith(PRETRAINING_ONLY):
            p.requires_grad_(False)
    pooling = recipe.pooling if recipe.pooling != "auto" else \
        ("tokens" if family in ("ssast", "ssamba") else "frames")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed)
        model = FinetuneModel(encoder, len(bundle.labels), pooling)
    geometry = {"family": family, "window_frames": encoder.cfg.crop_frames,
                "grid": list(encoder.cfg.grid), "patch": [encoder.cfg.patch_time, encoder.cfg.patch_freq],
                "stride": [encoder.cfg.patch_stride_time, encoder.cfg.patch_stride_freq], "pooling": pooling}
    return model, plugin, geometry


# ------------------------------------------------------------------ features and augmentation

def clip_features(plugin, bundle: Bundle, split: str, window: int):
    """(features [n, window, F] float32, real time steps [n], targets [n, labels]) of a split's clips:
    the plugin's frontend on each whole clip (normalised as the HEAR runtime does), padded with
    the padding value or cut to `window` frames (SSAST cuts to its target length)."""
    import soundfile as sf
    clips = bundle.clips[split]
    cfg = plugin.encoder.cfg
    index = {label: i for i, label in enumerate(bundle.labels)}
    feats, steps, targets = [], [], np.zeros((len(clips), len(bundle.labels)), np.float32)
    for row, (name, labels) in enumerate(clips.items()):
        path = bundle.audio_root / "16000" / split / name
        try:
            audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
        except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
            raise FinetuneError(f"bundle {bundle.name}: cannot read {path} ({e}); replace the file or drop "
                                f"it from {split}.json") from None
        with torch.no_grad():
            spec = plugin.frontend(torch.from_numpy(audio.mean(axis=1))[None])[0, 0]  # [T, F]
        real = min(spec.shape[0], window)
        spec = F.pad(spec[:window], (0, 0, 0, window - real), value=plugin.pad_value)
        feats.append(spec)
        steps.append(max(1, min(cfg.grid[0], (real - cfg.patch_time) // cfg.patch_stride_time + 1)))
        targets[row, [index[x] for x in labels]] = 1.0
    return torch.stack(feats), torch.tensor(steps), torch.from_numpy(targets)


def augment(spec: torch.Tensor, targets: torch.Tensor, recipe: Recipe, seed: int, pad_value: float):
    """SSAST's training augmentation on a batch [B, T, F], drawn from `seed`, in SSAST's order:
    mixup (each clip, with probability `mixup`, mixed with another clip of the batch, weight
    ~ Beta(10, 10), the targets mixed alike), SpecAugment's frequency and time masks
    (torchaudio, one mask of each per clip, set to the padding value), then noise
    (+ U(0,1) x U(0, 0.1)) and a roll of -10..9 frames."""
    import torchaudio
    g = torch.Generator().manual_seed(seed)
    spec, targets = spec.clone(), targets.clone()
    B, T, n_bins = spec.shape
    if recipe.mixup and B > 1:
        mixed = torch.rand(B, generator=g) < recipe.mixup
        partner = torch.randint(0, B - 1, (B,), generator=g)
        partner = partner + (partner >= torch.arange(B)).long()  # never itself
        lam = _beta(g, B)
        lam = torch.where(mixed, lam, torch.ones(B))
        spec = lam[:, None, None] * spec + (1 - lam[:, None, None]) * spec[partner]
        targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[partner]
    freq, time_ = int(recipe.freq_mask * n_bins), int(recipe.time_mask * T)
    if freq or time_:
        x = spec.transpose(1, 2).unsqueeze(1)  # torchaudio masks (..., freq, time)
        with torch.random.fork_rng(devices=[]):  # torchaudio draws from the global generator
            torch.manual_seed(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=g)))
            if freq:
                x = torchaudio.transforms.FrequencyMasking(freq, iid_masks=True)(x, mask_value=pad_value)
            if time_:
                x = torchaudio.transforms.TimeMasking(time_, iid_masks=True)(x, mask_value=pad_value)
        spec = x.squeeze(1).transpose(1, 2)
    if recipe.noise:
        scale = torch.rand(B, 1, 1, generator=g) / 10
        spec = spec + torch.rand(B, T, n_bins, generator=g) * scale
        shifts = torch.randint(-10, 10, (B,), generator=g)
        spec = torch.stack([torch.roll(s, int(k), dims=0) for s, k in zip(spec, shifts)])
    return spec, targets


def _beta(g: torch.Generator, n: int, a: float = 10.0) -> torch.Tensor:
    """n draws of Beta(a, a) from `g` (torch.distributions has no generator argument): the ratio
    of two Gamma draws, each the sum of a exponentials (a is a whole number)."""
    e = -torch.log(torch.rand(2, n, int(a), generator=g).clamp_min(1e-12)).sum(dim=2)
    return e[0] / (e[0] + e[1])


# ------------------------------------------------------------------ processes

def start_processes():
    """(ddp, rank, world, device): under torchrun (WORLD_SIZE > 1) join the process group (nccl on
    CUDA, gloo on CPU), one GPU per process; else this process alone, on the GPU if there is one."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.cuda.is_available()
    rank, world, local = 0, 1, 0
    if ddp:
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, world, local = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    return ddp, rank, world, device


def autocast_dtype(recipe: Recipe, device: torch.device):
    """(autocast dtype or None, whether to scale the loss)."""
    choice = recipe.precision
    if choice == "auto":
        choice = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]
    return dtype, dtype is torch.float16


# ------------------------------------------------------------------ one split

def score(bundle: Bundle, probs: np.ndarray, targets: np.ndarray) -> dict:
    """{test_<metric>: value} with heareval's score functions; "test_score" is the first metric's."""
    from heareval.score import available_scores
    label_to_idx = {label: i for i, label in enumerate(bundle.labels)}
    out = {}
    for metric in bundle.metrics:
        value = available_scores[metric](label_to_idx=label_to_idx)(probs, targets)
        if isinstance(value, tuple):  # (name, value) pairs: the first is the primary
            for name, v in value:
                out[f"test_{metric}_{name}"] = float(v)
            value = value[0][1]
        out[f"test_{metric}"] = float(value)
    out["test_score"] = out[f"test_{bundle.metrics[0]}"]
    return out


@torch.no_grad()
def predict(model: FinetuneModel, feats, steps, bundle: Bundle, device, dtype, batch: int) -> np.ndarray:
    """Class probabilities [n, labels] (softmax for multiclass, sigmoid for multilabel)."""
    model.eval()
    out = []
    for i in range(0, feats.shape[0], batch):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(feats[i:i + batch].unsqueeze(1).to(device), steps[i:i + batch].to(device)).float()
        out.append((torch.sigmoid(logits) if bundle.multilabel else torch.softmax(logits, dim=-1)).cpu())
    return torch.cat(out).numpy()


def cpu_weights(model) -> dict:
    """A copy of the model's weights on the CPU (the best epoch's, kept while training goes on)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _state_tensors(model, optimizer) -> dict:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for pid, state in optimizer.state_dict()["state"].items():
        for name, t in state.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(t).detach().cpu().contiguous()
    return tensors


def save_state(path: Path, model, optimizer, info: dict):
    """The split's training state, atomically (a .tmp renamed over the last one)."""
    from hear_ssam.checkpoint import write_safetensors
    write_safetensors(path, _state_tensors(model, optimizer),
                      {"finetune": json.dumps({"format": STATE_FORMAT, **info})})


def best_path(folder: Path, split: str, epoch: int) -> Path:
    return folder / f"{split}.best-epoch{epoch}.safetensors"


def save_best(path: Path, best_state: dict):
    """The best epoch's weights, atomically; written only when the best epoch changes."""
    from hear_ssam.checkpoint import write_safetensors
    write_safetensors(path, {k: v.contiguous() for k, v in best_state.items()}, {"finetune": STATE_FORMAT})


def load_state(path: Path, folder: Path, split: str, model, optimizer, read_best: bool):
    """(info, best_state) from a state file and the best-weights file it names (read only
    where `read_best`: process 0 alone scores), the model and optimiser restored in place."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        info = json.loads((f.metadata() or {})["finetune"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if info.get("format") != STATE_FORMAT:
        raise FinetuneError(f"{path} is not a fine-tuning state of this version; delete it to start the split again")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt = optimizer.state_dict()
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt["state"].setdefault(int(pid), {})[name] = t
    optimizer.load_state_dict(opt)
    if info["best_epoch"] == 0 or not read_best:
        return info, None
    best = best_path(folder, split, info["best_epoch"])
    if not best.is_file():
        raise FinetuneError(f"{path} names {best.name} as its best epoch's weights, and that file is missing; "
                            f"delete {path.name} to start the split again")
    from safetensors.torch import load_file
    return info, load_file(str(best))


def finetune_split(spec: ModelSpec, recipe: Recipe, bundle: Bundle, split: dict, seed: int, folder: Path,
                   procs, features: dict) -> dict:
    """Train on split["train"], pick the epoch on split["valid"], score it on split["test"];
    returns heareval's per-split entry (test scores, validation_score, epoch, time_in_min)."""
    ddp, rank, world, device = procs
    name = "|".join(split["test"])
    started = time.time()
    model, plugin, geometry = build_model(spec, recipe, bundle, derive_seed("head", seed, bundle.name, name))
    model.to(device)
    window = model.encoder.cfg.crop_frames

    def split_data(folds):
        for fold in folds:
            if fold not in features:
                features[fold] = clip_features(plugin, bundle, fold, window)
        return tuple(torch.cat(x) for x in zip(*(features[f] for f in folds)))
    train, valid, test = (split_data(split[k]) for k in ("train", "valid", "test"))
    head = set(id(p) for p in model.head.parameters())
    optimizer = torch.optim.Adam(
        [{"params": [p for p in model.parameters() if id(p) not in head and p.requires_grad], "lr_factor": 1.0},
         {"params": list(model.head.parameters()), "lr_factor": recipe.head_lr_factor}],
        lr=recipe.lr, weight_decay=recipe.weight_decay, betas=tuple(recipe.betas))
    dtype, scaled = autocast_dtype(recipe, device)
    scaler = torch.amp.GradScaler(device.type, enabled=scaled)
    loss_kind = recipe.loss if recipe.loss != "auto" else ("bce" if bundle.multilabel else "ce")
    state_path = folder / f"{name}.state.safetensors"
    log_path = folder / f"{name}.epochs.csv"
    best_state = None
    info = {"epoch": 0, "step": 0, "best_epoch": 0, "best_score": -math.inf}
    if state_path.exists():
        info, best_state = load_state(state_path, folder, name, model, optimizer, read_best=rank == 0)
        if info.get("scaler"):
            scaler.load_state_dict(info["scaler"])
        log.info("%s seed %d %s: resuming after epoch %d", bundle.name, seed, name, info["epoch"])
    if log_path.exists() and rank == 0:  # epochs logged after the last saved state are run again
        lines = log_path.read_text().splitlines(keepends=True)
        log_path.write_text("".join(lines[:1 + info["epoch"]]))
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if ddp else model
    n = train[0].shape[0]
    per_step = recipe.batch_size
    steps_per_epoch = max(1, math.ceil(n / per_step))
    bar = tqdm(total=recipe.epochs, initial=info["epoch"], desc=f"{bundle.name} seed {seed} test={name}",
               unit="epoch", disable=rank != 0, dynamic_ncols=True, leave=False)
    for epoch in range(info["epoch"], recipe.epochs):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(
            derive_seed("order", seed, bundle.name, name, epoch)))
        t0, losses, seen = time.time(), [], 0
        for b in range(steps_per_epoch):
            step = info["step"]
            lr = recipe.lr_at(epoch, step)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_factor"]
            idx = order[b * per_step:(b + 1) * per_step]
            if idx.numel() < world:  # a last batch too small to give every process a clip
                continue
            x, y = augment(train[0][idx], train[2][idx], recipe,
                           derive_seed("augment", seed, bundle.name, name, epoch, b), plugin.pad_value)
            mine = slice(rank, None, world)  # this process's share of the global batch
            x, y, s = x[mine].to(device), y[mine].to(device), train[1][idx][mine].to(device)
            if model.encoder.pretraining.drop_path_rate:
                model.encoder.set_drop_path_generator(torch.Generator().manual_seed(
                    derive_seed("drop_path", seed, bundle.name, name, epoch, b, rank)))
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = net(x.unsqueeze(1), s).float()
            per_clip = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=1) \
                if loss_kind == "bce" else F.cross_entropy(logits, y, reduction="none")  # soft targets: mixup
            # Sum over this process's clips, scaled so that DDP's mean over processes is the mean
            # over the global batch whatever the shares (one process: the batch mean).
            loss = per_clip.sum() * world / idx.numel()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total = per_clip.detach().sum()
            if ddp:
                dist.all_reduce(total)
            losses.append(total.item() / idx.numel())
            seen += idx.numel()
            info["step"] = step + 1
            info["scaler"] = scaler.state_dict()
        train_s = time.time() - t0
        if rank == 0:
            valid_score = score(bundle, predict(model, valid[0], valid[1], bundle, device, dtype, 2 * per_step),
                                valid[2].numpy())["test_score"]
            if math.isnan(valid_score):
                log.warning("%s seed %d test=%s epoch %d: validation %s is NaN (a fold too small for the "
                            "metric?); this epoch cannot be chosen", bundle.name, seed, name, epoch + 1,
                            bundle.metrics[0])
            elif valid_score > info["best_score"]:  # ties keep the earlier epoch
                info.update(best_score=valid_score, best_epoch=epoch + 1)
                best_state = cpu_weights(model)
                save_best(best_path(folder, name, epoch + 1), best_state)
            info["epoch"] = epoch + 1
            info["train_clips_per_s"] = seen / train_s
            new = not log_path.exists()
            with open(log_path, "a") as f:  # before the state: a resume cuts the log back to the state's epochs
                if new:
                    f.write("epoch,train_loss,valid_score,lr,train_clips_per_s\n")
                f.write(f"{epoch + 1},{np.mean(losses):.6f},{valid_score:.6f},{lr:.3e},{seen / train_s:.2f}\n")
            save_state(state_path, model, optimizer, {**info, "recipe": recipe.to_dict()})
            for old in folder.glob(f"{name}.best-epoch*.safetensors"):  # after the state naming the new one
                if old != best_path(folder, name, info["best_epoch"]):
                    old.unlink()
            bar.set_postfix(loss=f"{np.mean(losses):.3f}", valid=f"{valid_score:.3f}", best=info["best_epoch"])
        else:
            info["epoch"] = epoch + 1
        bar.update(1)
        if ddp:
            dist.barrier()
        if recipe.stops_after(epoch):
            log.info("%s seed %d test=%s: lr below lr/%g after epoch %d: stopping, as SSAST does", bundle.name,
                     seed, name, 1 / recipe.lr_floor, epoch + 1)
            break
    bar.close()
    if rank != 0:
        return {}
    if info["best_epoch"] == 0:  # no epoch had a validation score
        log.warning("%s seed %d test=%s: no epoch had a validation score; scoring the last epoch",
                    bundle.name, seed, name)
        best_state = cpu_weights(model)
        info["best_epoch"] = info["epoch"]
    model.load_state_dict(best_state)
    result = score(bundle, predict(model, test[0], test[1], bundle, device, dtype, 2 * per_step), test[2].numpy())
    result.update(validation_score=info["best_score"], epoch=info["best_epoch"] - 1,  # 0-based, as heareval
                  time_in_min=(time.time() - started) / 60, train_clips_per_s=info.get("train_clips_per_s"),
                  geometry=geometry)
    return result


# ------------------------------------------------------------------ the command

def _aggregate(results: dict) -> dict:
    """heareval's aggregated_scores (<score>_mean / _std over folds) of the splits' numeric entries."""
    from heareval.predictions.task_predictions import aggregate_test_results
    return aggregate_test_results({k: {s: v for s, v in r.items() if isinstance(v, (int, float))}
                                   for k, r in results.items()})


def remove_split_states(target: Path) -> None:
    """Delete the split states of a scored bundle: they served their purpose (unfinished
    .tmp writes included)."""
    for pattern in ("*.state.safetensors", "*.best-epoch*.safetensors", "*.safetensors.tmp"):
        for f in target.glob(pattern):
            f.unlink()


def check_model_folder(weights: str, recipe: Recipe, folder: Path) -> None:
    """Refuse a folder holding runs of other weights (sha256 `weights`) or another recipe (their
    scores would mix)."""
    path = folder / "model.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    if old and old.get("weights_sha256") != weights:
        raise FinetuneError(f"{folder} holds fine-tuning runs of another checkpoint; give another name (NAME=CKPT) "
                            "or another --out")
    if old and old.get("recipe") != json.loads(json.dumps(recipe.to_dict())):
        raise FinetuneError(f"{folder} holds runs made with another recipe ({_diff(old.get('recipe', {}), recipe)}); "
                            "give another name (NAME=CKPT) or another --out, or rerun with the same flags")


def write_model_json(spec: ModelSpec, weights: str, recipe: Recipe, folder: Path):
    """NAME/model.json: which weights (file and sha256), that the row is fine-tuned, and the recipe."""
    path = folder / "model.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": folder.name, "checkpoint": spec.path, "weights_sha256": weights,
                                "baseline": False, "finetuned": True, "suite": None,
                                "protocol": "fine-tuned end to end (docs/finetuning.md)", "recipe": recipe.to_dict(),
                                "date": old.get("date") or time.strftime("%Y-%m-%d")}, indent=1))


def _diff(old: dict, recipe: Recipe) -> str:
    new = json.loads(json.dumps(recipe.to_dict()))
    return ", ".join(f"--{k.replace('_', '-')}: {old.get(k)!r} -> {v!r}" for k, v in new.items()
                     if old.get(k) != v) or "unknown"


def read_bundles(paths, tasks_dir: Path, out: Path, strict: bool):
    """(bundles, {(name, None): "skipped: why"}): every bundle checked before any training starts.
    `strict` (bundles named by --task): a bundle that cannot be fine-tuned is an error."""
    bundles, status = [], {}
    for path in paths:
        if not path.is_dir():
            found = ", ".join(p.name for p in tasks_dir.iterdir() if (p / "task_metadata.json").is_file())
            raise FinetuneError(f"--task {path.name}: no such bundle in {tasks_dir} (bundles there: {found or 'none'})")
        try:
            bundles.append(read_bundle(path, out))
        except FinetuneError as e:
            if strict:
                raise
            log.warning("skipping %s: %s", path.name, e)
            status[(path.name, None)] = f"skipped: {e}"
    return bundles, status


def finetune(spec: ModelSpec, tasks_dir: Path, out: Path, recipe: Recipe, seeds=(0, 1, 2), tasks=None) -> dict:
    """Fine-tune `spec` on every scene bundle of `tasks_dir` (or `tasks`) for each seed; returns
    {(bundle, seed): "done" | "skipped: why"}. Event bundles are skipped with a note (and
    refused by name if asked for with --task)."""
    if spec.baseline or not spec.path:
        raise FinetuneError(f"--model {spec.name}: give a checkpoint file to fine-tune (the bundled default is "
                            "hear_ssam/assets/ssam_tiny.safetensors); the log-mel baseline has no weights")
    paths = sorted(p for p in Path(tasks_dir).iterdir() if (p / "task_metadata.json").is_file()) \
        if tasks is None else [Path(tasks_dir) / t for t in tasks]
    if not paths:
        raise FinetuneError(f"no HEAR bundles (folders with a task_metadata.json) in {tasks_dir}")
    own_group = not dist.is_initialized()  # a caller's own process group is left to the caller
    procs = start_processes()
    ddp, rank = procs[0], procs[1]
    folder, weights = Path(out) / spec.name, _weights_sha256(spec)
    check_model_folder(weights, recipe, folder)  # every process, before any writes
    if ddp and rank != 0:
        dist.barrier()  # process 0 reads the bundles first: it may write their resampled views
    bundles, status = read_bundles(paths, Path(tasks_dir), Path(out), strict=tasks is not None)
    if ddp and rank == 0:
        dist.barrier()
    if rank == 0:
        write_model_json(spec, weights, recipe, folder)
    for bundle in bundles:
        features = {}  # fold -> features: computed once for all seeds and splits
        for seed in seeds:
            target = folder / f"seed{seed}" / bundle.name
            if (target / SCORES).exists():
                if rank == 0:
                    remove_split_states(target)  # left by a run killed between its scores and its cleanup
                status[(bundle.name, seed)] = "done"
                continue
            target.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                (target / "task_metadata.json").write_text(json.dumps(bundle.meta, indent=1))
            results = {}
            for split in bundle.data_splits():
                key = "test" if bundle.meta["split_mode"] == "trainvaltest" else "|".join(split["test"])
                results[key] = finetune_split(spec, recipe, bundle, split, seed, target, procs, features)
            if rank == 0:
                if len(results) > 1:
                    results["aggregated_scores"] = _aggregate(results)
                results["finetune"] = {"recipe": recipe.to_dict(), "seed": seed}
                tmp = target / (SCORES + ".tmp")
                tmp.write_text(json.dumps(results, indent=1))
                tmp.replace(target / SCORES)
                remove_split_states(target)
                primary = results.get("aggregated_scores", {}).get("test_score_mean", results.get("test", {}).get(
                    "test_score"))
                log.info("%s seed %d on %s: test %s = %.4f", spec.name, seed, bundle.name, bundle.metrics[0], primary)
            status[(bundle.name, seed)] = "done"
    if ddp and own_group:
        # The barrier waits for process 0's score files: a gloo group torn down while a peer
        # still works aborts the process. Not after an error: the others may sit in a
        # collective, and waiting for them would hang.
        dist.barrier()
        dist.destroy_process_group()
    return status
