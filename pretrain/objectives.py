"""What pretraining optimises, as named choices: masking strategies and objectives.

    MASKINGS["unstructured"](batch, n_patches, ratio, generator, device, grid=None) -> [B, N] bool
    MASKINGS["cluster"](batch, n_patches, ratio, generator, device, grid=(n_t, n_f, patch_order))
    OBJECTIVES["mse_all"](pred, target, mask) -> scalar loss           (a reconstruction loss)
    OBJECTIVES["ssast_joint"](encoder, spec, masks, target) -> (loss, pred, metrics)

A masking marks `N - int(N * (1 - ratio))` patches of each sample (True = masked), drawn only
from `generator`; `grid` tells it the patch grid and the token order (train.py passes the
encoder's). A reconstruction loss scores the `pred` head of one masked forward. A joint
objective (`EncoderObjective`) runs the encoder itself, on `n_masks` masks of its own, and
reports metrics beside its loss.

The SSAM / AxLSTM recipe: unstructured masking of 50 % of the patches, MSE over all patches
("mse_all", the official choice) or over the masked ones only ("mse_masked").
The SSAST / SSAMBA recipe: cluster masking of 300 of 512 patches (mask_ratio 300/512 =
0.5859375, exact in binary), and "ssast_joint": SSAST's masked patch classification (InfoNCE
through the `cpred` head) + 10 x masked patch reconstruction (MSE through `pred`), each on its
own forward pass with its own mask, as SSAST / SSAMBA's `pretrain_joint` task runs `mpc` and
`mpg`. "ssast_joint_shared" feeds both heads from one forward on one mask (half the
compute; not the official recipe).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def masked_count(n_patches: int, ratio: float) -> int:
    """Patches a masking marks per sample: N - int(N * (1 - ratio)) (0.5859375 of 512 = 300)."""
    return n_patches - int(n_patches * (1 - ratio))


def unstructured_mask(batch, n_patches, ratio, generator, device, grid=None):
    """The `ratio` of patches with the largest uniform noise, per sample (argsort of noise)."""
    noise = torch.rand(batch, n_patches, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)
    return (rank >= int(n_patches * (1 - ratio))).to(device)


CLUSTER_SIZES = (3, 4, 5)  # SSAST: cur_clus = randrange(3) + 3, one size per sample
_STARTS_PER_DRAW = 16  # cluster origins drawn at a time (unused ones are discarded)


def cluster_mask(batch, n_patches, ratio, generator, device, grid=None):
    """SSAST's `gen_maskid_patch`, per sample, on the (freq, time) patch grid.

    In SSAST's layout (index f * n_t + t, frequency-major): one cluster size c in {3, 4, 5}
    is drawn per sample; then random origins s (uniform over the N patches) each mask the
    c x c patches s + n_t * i + j (i = 0..c-1 frequency rows up, j = 0..c-1 time steps on),
    until more than `count` patches are masked; the `count` lowest indices are kept.
    Quirks of the official code, kept so that the masks have its distribution: an index past
    the last time step wraps into the next frequency row (only indices < N are kept), patch 0
    is never masked (`mask_cand > 0`), and the surplus is dropped from the highest indices
    (`list(set(ids))[:count]` iterates small ints in ascending order). The indices are then
    put in the encoder's token order (`grid[2]`). Deterministic given `generator`.
    """
    if grid is None:
        raise ValueError("cluster masking needs the patch grid: grid=(n_t, n_f, patch_order)")
    n_t, n_f, order = grid
    if n_t * n_f != n_patches:
        raise ValueError(f"grid {n_t} x {n_f} does not have {n_patches} patches")
    count = masked_count(n_patches, ratio)
    if count > n_patches - 2:  # patch 0 is never masked, and the loop needs count + 1 patches
        raise ValueError(f"cluster masking can mask at most {n_patches - 2} of {n_patches} patches, "
                         f"ratio {ratio} asks for {count}")
    out = torch.zeros(batch, n_patches, dtype=torch.bool)
    for b in range(batch):
        size = CLUSTER_SIZES[int(torch.randint(len(CLUSTER_SIZES), (1,), generator=generator))]
        offsets = (np.arange(size)[:, None] * n_t + np.arange(size)[None, :]).ravel()
        hit = np.zeros(n_patches, dtype=bool)
        masked = 0
        while masked <= count:
            for start in torch.randint(n_patches, (_STARTS_PER_DRAW,), generator=generator).tolist():
                cells = start + offsets
                hit[cells[(cells > 0) & (cells < n_patches)]] = True
                masked = int(hit.sum())
                if masked > count:
                    break
        ids = np.flatnonzero(hit)[:count]  # frequency-major f * n_t + t, lowest first
        if order == "time-major":
            ids = (ids % n_t) * n_f + ids // n_t
        out[b, torch.from_numpy(ids)] = True
    return out.to(device)


# ------------------------------------------------------------------ reconstruction losses

def mse_all(pred, target, mask):
    """Mean squared error over every patch, masked and visible (the official SSAM loss)."""
    return (pred.float() - target).pow(2).mean()


def mse_masked(pred, target, mask):
    """Mean squared error over the masked patches only (MAE's choice; SSAST's `mpg`)."""
    err = (pred.float() - target).pow(2).mean(-1)  # [B, N]
    return (err * mask).sum() / mask.sum()


def masked_info_nce(scores, target, mask):
    """SSAST's `mpc` loss and accuracy: for each sample, over its M masked patches,
    S = target_m @ scores_m^T [M, M] (rows: input patches, columns: predictions; the other
    masked patches of the same clip are the negatives); loss = -mean over samples and rows of
    log_softmax(S, over columns)[i, i]; accuracy = how often argmax over rows of column j is j.
    (SSAST normalises over the predictions, not over the targets as the paper's equation (1)
    does; see github.com/YuanGongND/ssast/issues/13.) -> (loss, accuracy)."""
    counts = mask.sum(1)
    if bool((counts == counts[0]).all()):  # every sample masks as many patches: one batched product
        B, M = mask.shape[0], int(counts[0])
        s = scores.float()[mask].view(B, M, -1)
        t = target.float()[mask].view(B, M, -1)
        total = torch.bmm(t, s.transpose(1, 2))  # [B, M, M]
        nce = -F.log_softmax(total, dim=-1).diagonal(dim1=1, dim2=2).mean()
        acc = (total.argmax(dim=1) == torch.arange(M, device=total.device)).float().mean()
        return nce, acc
    nce, correct = scores.new_zeros((), dtype=torch.float32), 0
    for s, t, m in zip(scores.float(), target.float(), mask):
        total = t[m] @ s[m].T
        nce = nce - F.log_softmax(total, dim=-1).diagonal().sum()
        correct += int((total.argmax(dim=0) == torch.arange(total.shape[0], device=total.device)).sum())
    return nce / counts.sum(), torch.tensor(correct / counts.sum().item())


# ------------------------------------------------------------------ objectives that run the encoder

class EncoderObjective:
    """An objective that runs the encoder itself: (encoder, spec, masks [n_masks, B, N], target)
    -> (loss, predicted patches [B, N, P], {metric: detached scalar})."""
    n_masks = 1
    heads = ("pred",)
    metrics = ()


class SSASTJoint(EncoderObjective):
    """SSAST's `pretrain_joint`: InfoNCE of `cpred` over the masked patches (`mpc`) +
    `mse_weight` x MSE of `pred` over the masked patches (`mpg`), targets the input patches.
    Official: two forward passes, each with its own mask; `shared=True`: one pass, one mask."""
    heads = ("pred", "cpred")
    metrics = ("nce", "mse", "acc")

    def __init__(self, shared: bool = False, mse_weight: float = 10.0):
        self.shared, self.mse_weight = shared, mse_weight
        self.n_masks = 1 if shared else 2

    def __call__(self, encoder, spec, masks, target):
        mask_c, mask_g = masks[0], masks[-1]
        tokens = encoder.encode_masked(spec, mask_c)[:, 1:]
        nce, acc = masked_info_nce(encoder.cpred(tokens), target, mask_c)
        if not self.shared:
            tokens = encoder.encode_masked(spec, mask_g)[:, 1:]
        pred = encoder.pred(tokens)
        mse = mse_masked(pred, target, mask_g)
        loss = nce + self.mse_weight * mse
        return loss, pred, {"nce": nce.detach(), "mse": mse.detach(), "acc": acc.detach()}


MASKINGS = {"unstructured": unstructured_mask, "cluster": cluster_mask}
RECONSTRUCTION = {"mse_all": mse_all, "mse_masked": mse_masked}
JOINT = {"ssast_joint": SSASTJoint(), "ssast_joint_shared": SSASTJoint(shared=True)}
OBJECTIVES = {**RECONSTRUCTION, **JOINT}


def objective_error(name: str) -> str | None:
    """Why `name` is not an objective (None if it is)."""
    if name in OBJECTIVES:
        return None
    return (f"objective must be one of {sorted(RECONSTRUCTION)} (reconstruction by the head `pred`) or "
            f"{sorted(JOINT)} (SSAST's joint objective, heads `pred` + `cpred`), got {name!r}")


def masks_per_step(name: str) -> int:
    """Masks an objective needs per batch (2 for SSAST's joint objective: one per pass)."""
    obj = OBJECTIVES[name]
    return obj.n_masks if isinstance(obj, EncoderObjective) else 1


def objective_metrics(name: str) -> tuple:
    obj = OBJECTIVES[name]
    return obj.metrics if isinstance(obj, EncoderObjective) else ()


class MaskedSpectrogramModel(nn.Module):
    """Encoder + heads with the loss inside forward(), so DDP sees one module call."""

    def __init__(self, encoder, objective: str = "mse_all"):
        super().__init__()
        self.encoder, self.objective = encoder, OBJECTIVES[objective]
        missing = [h for h in getattr(self.objective, "heads", ("pred",)) if not hasattr(encoder, h)]
        if missing:
            raise ValueError(f"objective {objective!r} needs the encoder head(s) {missing}: "
                             "PretrainingOptions(contrastive_head=True) adds `cpred` (in a pretraining "
                             "config: encoder_overrides: {contrastive_head: true})")
        self.metrics = {}  # the last forward's metrics (joint objectives), detached

    def forward(self, spec, mask):
        """spec [B, 1, T, F], mask [B, N] (or [n_masks, B, N]) -> (loss, predicted patches
        [B, N, patch_dim]); a joint objective's metrics are left in `self.metrics`."""
        target = self.encoder.patchify(spec)
        if isinstance(self.objective, EncoderObjective):
            masks = mask if mask.ndim == 3 else mask.unsqueeze(0)
            if masks.shape[0] != self.objective.n_masks:
                raise ValueError(f"the objective takes {self.objective.n_masks} masks per batch, "
                                 f"got {masks.shape[0]}")
            loss, pred, self.metrics = self.objective(self.encoder, spec, masks, target)
            return loss, pred
        pred = self.encoder.reconstruct(spec, mask)
        return self.objective(pred, target, mask), pred
