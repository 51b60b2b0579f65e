"""The masked-spectrogram encoder shared by every family (MAE / SSAST framework).

    crop [B, 1, T, F] -> patchify / patch_embed -> + positions -> mask -> prepend CLS
                      -> blocks (in the config's traversal) -> encoder_norm -> tokens [B, 1 + N, D]
                      -> `pred` head -> reconstructed patches [B, N, pt * pf]   (pretraining only)
                      -> `cpred` head -> patch scores [B, N, pt * pf]    (SSAST's InfoNCE, if configured)

Two configs: `EncoderConfig` is the architecture that runs (all a HEAR embedding depends on);
`PretrainingOptions` is what only pretraining reads (the heads' activation, whether `cpred`
exists, how a masked patch enters, the pixel order of the targets, stochastic depth).

Masking: SSAM replaces masked patches by the mask token after adding positions (so mask
tokens carry no position); SSAST / SSAMBA replace them before (`mask_token_position`).

A family is data (`presets.py`): which block (`modules.BLOCKS`), its options, the traversal,
the sizes, its pretraining options. Patching, positions, CLS/mask tokens and the head are
shared here, and the parameter names match the official checkpoints (`cls_token`,
`pos_embed`, `blocks.i.*`, `encoder_norm`, `pred`).

Stochastic depth (`drop_path_rate`, add-norm blocks, training mode only): Vim's per-sample
drop of a block's incoming hidden where it joins the residual, at block i's rate
([0] + linspace(0, drop_path_rate, depth))[i], and of the last hidden at the final add at the
full rate; in a forward traversal mixer i's output is thus dropped at linspace(...)[i]. See
`SpectrogramEncoder.__init__`; eval mode is unaffected.

Overlapping patches (`patch_stride_time` / `patch_stride_freq` below the patch size; SSAST's
and SSAMBA's fine-tuning geometry): a checkpoint pretrained on non-overlapping patches gets
them with `SpectrogramEncoder.set_patch_stride`, which changes the convolution's stride and
resamples the positions (`interpolate_positions`). They serve embeddings only: the
pretraining targets (`patchify`) need each value in one patch.

Traversals (`TRAVERSALS`): "forward" runs every block left to right; "alternate" flips the
whole sequence (CLS included) around every odd block (AxLSTM); "flipped_pairs" runs each
pair of blocks on the sequence and on its flip and adds the two streams (SSAMBA / Vim).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from .modules import BLOCKS, DropPath


def supports_drop_path(block_cls) -> bool:
    """Whether a BLOCKS entry takes `drop_path=` (the block contract in hear_ssam.modules)."""
    return getattr(block_cls, "supports_drop_path", False)


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of one encoder: everything its forward, and so a HEAR embedding, depends
    on. Defaults: ssam-tiny. How it is pretrained is `PretrainingOptions`."""
    block: str = "mamba"  # key of modules.BLOCKS
    block_options: dict = dataclasses.field(default_factory=lambda: {"d_state": 24, "d_conv": 4, "expand": 3})
    traversal: str = "forward"  # key of TRAVERSALS
    embed_dim: int = 192
    depth: int = 12
    n_mels: int = 80  # feature bins of the frontend
    crop_frames: int = 200  # 2 s at a 10 ms hop
    patch_time: int = 4
    patch_freq: int = 16
    norm_eps: float = 1e-6  # encoder_norm, and the blocks' norms unless block_options say otherwise
    patch_order: str = "time-major"  # token index t * n_f + f (SSAM), or "freq-major" f * n_t + t (SSAST)
    positions: str = "sincos"  # fixed 2-D sin-cos table (MAE), or "learned" (trunc-normal 0.02)
    final_norms: int = 1  # encoder_norm applications at the end (the released SSAMBA applies it twice)
    # Patch step in frames / bins; None: the patch size (non-overlapping patches, as pretrained).
    # SSAST and SSAMBA fine-tune with overlapping patches (stride 10 of 16); see `set_patch_stride`.
    patch_stride_time: Optional[int] = None
    patch_stride_freq: Optional[int] = None

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
        if self.traversal not in TRAVERSALS:
            raise ValueError(f"traversal must be one of {sorted(TRAVERSALS)}, got {self.traversal!r}")
        if self.traversal == "flipped_pairs" and self.depth % 2:
            raise ValueError(f"traversal 'flipped_pairs' needs an even depth, got {self.depth}")
        # Resolved here (the dataclass is frozen) so that a config stored before the stride
        # existed, or written without it, equals the preset it is.
        for name, patch in (("patch_stride_time", "patch_time"), ("patch_stride_freq", "patch_freq")):
            stride, size = getattr(self, name), getattr(self, patch)
            if stride is None:
                object.__setattr__(self, name, size)
            elif isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= size:
                unit = "frames" if patch == "patch_time" else "bins"
                raise ValueError(f"{name} must be a whole number from 1 to {patch} ({size} {unit}), got {stride!r}: "
                                 f"a stride above the patch would skip {unit} between patches; use at most {size}")
        if not self.overlapping:
            if self.crop_frames % self.patch_time or self.n_mels % self.patch_freq:
                raise ValueError("crop_frames and n_mels must be multiples of the patch size")
        elif self.crop_frames < self.patch_time or self.n_mels < self.patch_freq:
            raise ValueError(f"a crop of {self.crop_frames} frames x {self.n_mels} bins holds no "
                             f"{self.patch_time} x {self.patch_freq} patch")
        for name, allowed in (("patch_order", PATCH_ORDERS), ("positions", ("sincos", "learned"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.final_norms < 1:
            raise ValueError(f"final_norms must be >= 1, got {self.final_norms}")

    @property
    def overlapping(self) -> bool:
        """Whether patches overlap (a stride below the patch size in either dimension)."""
        return (self.patch_stride_time, self.patch_stride_freq) != (self.patch_time, self.patch_freq)

    @property
    def grid(self) -> tuple[int, int]:
        """(time, freq) patches per crop: (50, 5) for the paper's models; (101, 12) for SSAMBA's
        128 x 1024 at stride 10. Frames (bins) that do not fill a last patch are not covered."""
        return ((self.crop_frames - self.patch_time) // self.patch_stride_time + 1,
                (self.n_mels - self.patch_freq) // self.patch_stride_freq + 1)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_dim(self) -> int:
        return self.patch_time * self.patch_freq

    @property
    def frame_embedding_size(self) -> int:
        """One output frame = the freq patches of one time step, concatenated."""
        return self.grid[1] * self.embed_dim

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PretrainingOptions:
    """What only pretraining reads: the heads, how a masked patch enters the encoder, the
    layout of the reconstruction targets, stochastic depth. Defaults: SSAM's (a preset's
    own: `presets.Family.pretraining`). An embedding never depends on them: the heads are
    not run, no patch is masked, and eval mode ignores stochastic depth."""
    head_activation: str = "gelu"  # of the heads `pred` / `cpred` (SSAST's heads use ReLU)
    mask_token_position: bool = False  # mask tokens get their patch's position (SSAST) or none (SSAM)
    contrastive_head: bool = False  # add `cpred` (SSAST's cpredlayer, D -> D -> pt * pf) for InfoNCE
    # a patch's pt x pf values in patchify's targets and the heads' outputs: "time-major"
    # (t * pf + f, SSAM) or "freq-major" (f * pt + t, SSAST's Unfold of the [F, T] spectrogram)
    patch_pixel_order: str = "time-major"
    # Stochastic depth in training (Vim / SSAMBA: 0.1; SSAM, SSAST, AxLSTM: 0). Eval mode ignores
    # it. Configs stored before this field load with 0: what the code that trained them did.
    drop_path_rate: float = 0.0

    def __post_init__(self):
        for name, allowed in (("head_activation", tuple(HEAD_ACTIVATIONS)), ("patch_pixel_order", PATCH_ORDERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def check_block(self, block: str) -> None:
        """Refuse options the encoder's block cannot honour (`block`: a key of modules.BLOCKS)."""
        if self.drop_path_rate and not supports_drop_path(BLOCKS[block]):
            raise ValueError(f"drop_path_rate > 0 is implemented for the add-norm blocks "
                             f"{sorted(k for k, b in BLOCKS.items() if supports_drop_path(b))}, "
                             f"not for {block!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PATCH_ORDERS = ("time-major", "freq-major")
HEAD_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table for a time-major (T, F) grid, CLS row of zeros first.

    [1, 1 + T * F, dim]. The first half of the channels encodes the frequency index, the
    second half the time index (MAE's meshgrid(w, h) convention, as in the released checkpoints).
    """
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    n_t, n_f = grid
    f_idx, t_idx = np.meshgrid(np.arange(n_f, dtype=np.float64), np.arange(n_t, dtype=np.float64))
    table = np.concatenate([one_axis(dim // 2, f_idx), one_axis(dim // 2, t_idx)], axis=1)
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


def interpolate_positions(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                          patch_order: str) -> torch.Tensor:
    """A position table [1, C + n_t * n_f, D] of `old_grid` resampled to `new_grid`
    ([1, C + n_t' * n_f', D]); the C leading rows (CLS) are kept unchanged.

    Grids are (time, freq) as `EncoderConfig.grid`; `patch_order` is the order of the table's
    rows ("freq-major": f * n_t + t, SSAST / SSAMBA; "time-major": t * n_f + f, SSAM). The
    recipe is the one SSAST's fine-tuning constructor applies (and SSAMBA, which reuses it)
    when the patch stride or the input size changes: the patch rows as an image
    [1, D, n_f, n_t] (freq x time); time first: centre columns [n_t/2 - n_t'/2, ... + n_t')
    (integer halves) if the new grid is shorter, else bilinear resampling to (n_f, n_t'); then
    frequency the same way to (n_f', n_t'); bilinear with align_corners=False, torch's
    default, as there. (The official code writes the intermediate size as (8, n_t'), its
    pretraining n_f, and ends its frequency crop at + n_t' where n_f' is meant; a crop needs a
    coarser grid, which no stride <= patch gives.) A time-major table is resampled the same
    way, through the same [D, F, T] image, so both orders give the same positions.
    """
    (p_t, p_f), (t, f) = old_grid, new_grid
    n_cls = pos_embed.shape[1] - p_t * p_f
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1 or n_cls < 0:
        raise ValueError(f"pos_embed must be [1, C + {p_t} * {p_f}, D] for a {old_grid} grid, "
                         f"got {tuple(pos_embed.shape)}")
    if patch_order not in PATCH_ORDERS:
        raise ValueError(f"patch_order must be one of {PATCH_ORDERS}, got {patch_order!r}")
    D, dtype = pos_embed.shape[-1], pos_embed.dtype
    rows = pos_embed[:, n_cls:].float()
    if patch_order == "freq-major":
        image = rows.transpose(1, 2).reshape(1, D, p_f, p_t)
    else:
        image = rows.reshape(1, p_t, p_f, D).permute(0, 3, 2, 1)
    if t < p_t:
        start = p_t // 2 - t // 2
        image = image[:, :, :, start:start + t]
    else:
        image = nn.functional.interpolate(image, size=(p_f, t), mode="bilinear", align_corners=False)
    if f < p_f:
        start = p_f // 2 - f // 2
        image = image[:, :, start:start + f, :]
    else:
        image = nn.functional.interpolate(image, size=(f, t), mode="bilinear", align_corners=False)
    if patch_order == "freq-major":
        rows = image.reshape(1, D, f * t).transpose(1, 2)
    else:
        rows = image.permute(0, 3, 2, 1).reshape(1, t * f, D)
    return torch.cat([pos_embed[:, :n_cls], rows.to(dtype)], dim=1)


class PatchEmbed(nn.Module):
    """[B, 1, T, F] -> [B, n_t * n_f, D] (n_t, n_f: `cfg.grid`), tokens in the config's patch order."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        k = (cfg.patch_time, cfg.patch_freq)
        self.freq_major = cfg.patch_order == "freq-major"
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=k, stride=(cfg.patch_stride_time, cfg.patch_stride_freq))
        nn.init.xavier_uniform_(self.proj.weight.view(cfg.embed_dim, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        x = self.proj(x)  # [B, D, n_t, n_f]
        return (x.transpose(2, 3) if self.freq_major else x).flatten(2).transpose(1, 2)


# ------------------------------------------------------------------ traversals

def _flipped(block, hidden, residual):
    """Run `block` on the time-reversed sequence and reverse its outputs back."""
    flip = lambda t: None if t is None else t.flip(1)  # noqa: E731
    h, r = block(flip(hidden), flip(residual))
    return flip(h), flip(r)


def traverse_forward(blocks, hidden, residual):
    for blk in blocks:
        hidden, residual = blk(hidden, residual)
    return hidden, residual


def traverse_alternate(blocks, hidden, residual):
    for i, blk in enumerate(blocks):
        hidden, residual = _flipped(blk, hidden, residual) if i % 2 else blk(hidden, residual)
    return hidden, residual


def traverse_flipped_pairs(blocks, hidden, residual):
    for fwd, bwd in zip(blocks[0::2], blocks[1::2]):
        h_f, r_f = fwd(hidden, residual)
        h_b, r_b = _flipped(bwd, hidden, residual)
        hidden = h_f + h_b
        residual = None if r_f is None else r_f + r_b
    return hidden, residual


TRAVERSALS = {"forward": traverse_forward, "alternate": traverse_alternate,
              "flipped_pairs": traverse_flipped_pairs}


class SpectrogramEncoder(nn.Module):
    """Patch embedding + CLS + positions -> blocks -> encoder_norm (+ `pred`, and `cpred` if configured).

    `cfg`: the architecture; `pretraining`: how it is pretrained (None: SSAM's defaults). A
    preset's encoder with its family's options: `presets.preset_encoder(name)`.

    Why the pretraining heads live in this module, not beside it: the released checkpoints of
    every family hold `pred` (SSAMBA's also `cpred`) beside the mask token in the encoder's
    state dict, which loads strictly; and the seeded initialisation draws the heads between
    the blocks and the CLS / mask tokens, so building them elsewhere would change every
    seeded initialisation. So the options choose the heads, built here, in this order.
    """

    def __init__(self, cfg: EncoderConfig, pretraining: Optional[PretrainingOptions] = None):
        super().__init__()
        if not isinstance(cfg, EncoderConfig):
            raise TypeError(f"cfg must be an EncoderConfig, got {type(cfg).__name__}")
        pretraining = PretrainingOptions() if pretraining is None else pretraining
        if not isinstance(pretraining, PretrainingOptions):
            raise TypeError(f"pretraining must be PretrainingOptions or None (SSAM's), "
                            f"got {type(pretraining).__name__}")
        pretraining.check_block(cfg.block)
        self.cfg = cfg
        self.pretraining = pretraining
        D = cfg.embed_dim
        block_cls = BLOCKS[cfg.block]
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        if cfg.positions == "sincos":
            self.pos_embed = nn.Parameter(sincos_pos_embed_2d(D, cfg.grid), requires_grad=False)
        else:
            self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1 + cfg.num_patches, D), std=0.02))
        options = {"norm_eps": cfg.norm_eps, **cfg.block_options}
        if supports_drop_path(block_cls):
            # Vim's schedule: mixer i's output is dropped at rate dpr[i], dpr = linspace(0, rate,
            # depth) (torch's float32 linspace, as Vim computes it). An add-norm block drops the
            # hidden it receives, i.e. the previous mixer's output, so block i gets dpr[i - 1]
            # (Vim's inter_dpr = [0] + dpr) and the last mixer's output is dropped at the final
            # add, at the full rate (`self.drop_path`). With flipped pairs, both blocks of a pair
            # receive the previous pair's summed output and drop it independently, at their own
            # rates (block 2i at dpr[2i - 1], block 2i + 1 at dpr[2i]), as in Vim / SSAMBA.
            dpr = torch.linspace(0, pretraining.drop_path_rate, cfg.depth, device="cpu").tolist()  # not on "meta"
            inter_dpr = [0.0] + dpr
            self.blocks = nn.ModuleList(block_cls(D, drop_path=inter_dpr[i], **options) for i in range(cfg.depth))
        else:
            self.blocks = nn.ModuleList(block_cls(D, **options) for _ in range(cfg.depth))
        self.drop_path = DropPath(pretraining.drop_path_rate)  # the last mixer's output, at the final add
        self.encoder_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.pred = nn.Sequential(nn.Linear(D, D), HEAD_ACTIVATIONS[pretraining.head_activation](),
                                  nn.Linear(D, cfg.patch_dim))
        if pretraining.contrastive_head:  # SSAST's cpredlayer: scores a masked token against the input patches
            self.cpred = nn.Sequential(nn.Linear(D, D), HEAD_ACTIVATIONS[pretraining.head_activation](),
                                       nn.Linear(D, cfg.patch_dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        block_cls.init_encoder(self, cfg.depth)

    def extend_window(self, crop_frames: int) -> None:
        """Encode crops of `crop_frames` frames instead of the pretraining crop.

        The fixed sin-cos table is extended by its own formula; with time-major tokens its
        first rows (the pretraining crop) are the stored ones, so a causal encoder's first 2 s
        are exactly what they were. Refused for positions that are not the fixed table.
        """
        if self.cfg.overlapping:
            raise ValueError("this model has overlapping patches (patch stride "
                             f"{self.cfg.patch_stride_time} x {self.cfg.patch_stride_freq}), whose positions "
                             "were resampled to its crop; use its window, or extend the window first and "
                             "then set the stride")
        if self.cfg.positions != "sincos" or self.cfg.patch_order != "time-major":
            raise ValueError(f"this model's positions ({self.cfg.positions}, {self.cfg.patch_order} tokens) "
                             "cannot be extended to a longer window; use its pretraining window")
        if crop_frames % self.cfg.patch_time:
            raise ValueError(f"a window must be a whole number of patches ({self.cfg.patch_time} frames), "
                             f"got {crop_frames} frames")
        expected = sincos_pos_embed_2d(self.cfg.embed_dim, self.cfg.grid)
        if not torch.allclose(self.pos_embed.detach().float().cpu(), expected, atol=2e-3):  # fp16 storage
            raise ValueError("this model's positions are not the fixed sin-cos table, so they cannot be "
                             "extended to a longer window; use its pretraining window")
        cfg = dataclasses.replace(self.cfg, crop_frames=crop_frames)
        table = sincos_pos_embed_2d(cfg.embed_dim, cfg.grid)
        keep = min(table.shape[1], self.pos_embed.shape[1])  # the stored rows stay bit-exact
        table[:, :keep] = self.pos_embed.detach()[:, :keep].float().cpu()
        self.pos_embed = nn.Parameter(table.to(self.pos_embed.device, self.pos_embed.dtype), requires_grad=False)
        self.cfg = cfg

    def set_patch_stride(self, stride_time: int, stride_freq: int, crop_frames: Optional[int] = None) -> None:
        """Encode overlapping patches: step `stride_time` frames and `stride_freq` bins between
        patches (at most the patch size; equal to it: nothing changes), in place; with
        `crop_frames`, also windows of that many frames (SSAST's fine-tuning `target_length`:
        the positions go from the pretraining grid to the new one in one resample, a shorter
        window taking the centre columns, as SSAST's constructor does).

        What SSAST's and SSAMBA's fine-tuning does with a checkpoint pretrained on
        non-overlapping patches: the patch embedding keeps its weights and bias and only its
        convolution's stride changes; the position table is resampled from the pretraining
        grid to the new one by `interpolate_positions` (the CLS row kept). SSAMBA's 128 x 1024
        at stride 10: 12 x 101 = 1212 tokens instead of 8 x 64 = 512. Nothing else is rebuilt.
        Refused for a model that already has overlapping patches (its positions were resampled
        once; load the checkpoint again) or whose positions do not cover its grid.
        """
        cfg = dataclasses.replace(self.cfg, patch_stride_time=stride_time, patch_stride_freq=stride_freq,
                                  crop_frames=self.cfg.crop_frames if crop_frames is None else crop_frames)
        if cfg == self.cfg:
            return
        if self.cfg.overlapping:
            raise ValueError(f"this model already has overlapping patches (stride {self.cfg.patch_stride_time} x "
                             f"{self.cfg.patch_stride_freq}) and positions resampled to them; set the stride "
                             "on the checkpoint as pretrained (load it again)")
        rows = 1 + self.cfg.num_patches
        if self.pos_embed.shape[1] != rows:
            raise ValueError(f"this model's positions have {self.pos_embed.shape[1]} rows, its {self.cfg.grid} "
                             f"grid needs {rows} (CLS + patches); they cannot be resampled to another stride")
        table = interpolate_positions(self.pos_embed.detach(), self.cfg.grid, cfg.grid, self.cfg.patch_order)
        self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        self.patch_embed.proj.stride = (cfg.patch_stride_time, cfg.patch_stride_freq)
        self.cfg = cfg

    def set_drop_path_generator(self, generator: Optional[torch.Generator]) -> None:
        """Draw the drop-path masks of the following training forwards from `generator` (a CPU
        generator makes them device-independent; None: the global RNG, as timm). A training
        loop that seeds it per step from its own seeds keeps a resumed run exact."""
        for m in self.modules():
            if isinstance(m, DropPath):
                m.generator = generator

    @property
    def is_causal(self) -> bool:
        """Token k depends only on tokens <= k, and tokens are in time order (so later padding
        cannot change earlier time steps)."""
        return (self.cfg.traversal == "forward" and BLOCKS[self.cfg.block].causal
                and self.cfg.patch_order == "time-major" and not self.cfg.overlapping)

    def _patch_axes(self):
        """Permutation of [B, n_t, pt, n_f, pf] to the patch order, then the pixel order."""
        tokens = (3, 1) if self.cfg.patch_order == "freq-major" else (1, 3)
        pixels = (4, 2) if self.pretraining.patch_pixel_order == "freq-major" else (2, 4)
        return (0, *tokens, *pixels)

    def _require_non_overlapping(self, what: str) -> None:
        if self.cfg.overlapping:
            raise ValueError(f"{what}: pretraining needs non-overlapping patches (each spectrogram value "
                             f"in one target), but this model steps {self.cfg.patch_stride_time} frames x "
                             f"{self.cfg.patch_stride_freq} bins between {self.cfg.patch_time} x "
                             f"{self.cfg.patch_freq} patches; pretrain the checkpoint as loaded, without "
                             "patch_stride")

    def patchify(self, spec):
        """[B, 1, T, F] -> [B, N, pt*pf] targets: patches in the token order, each patch's values
        in `patch_pixel_order` (time-major t * pf + f, or SSAST's freq-major f * pt + t)."""
        self._require_non_overlapping("patchify")
        n_t, n_f = self.cfg.grid
        pt, pf = self.cfg.patch_time, self.cfg.patch_freq
        x = spec.reshape(spec.shape[0], n_t, pt, n_f, pf)
        return x.permute(*self._patch_axes()).reshape(spec.shape[0], n_t * n_f, pt * pf)

    def unpatchify(self, patches):
        """[B, N, pt*pf] (patchify's layout) -> [B, 1, T, F]; the inverse of `patchify`."""
        self._require_non_overlapping("unpatchify")
        n_t, n_f = self.cfg.grid
        pt, pf = self.cfg.patch_time, self.cfg.patch_freq
        axes = self._patch_axes()
        shape = [patches.shape[0], n_t, pt, n_f, pf]
        x = patches.reshape(*(shape[a] for a in axes))
        inverse = sorted(range(5), key=axes.__getitem__)
        return x.permute(*inverse).reshape(patches.shape[0], 1, n_t * pt, n_f * pf)

    def tokens_to_grid(self, tokens):
        """[B, N, D] patch tokens (CLS dropped) -> [B, n_t, n_f, D], whatever the patch order
        (n_f from `cfg.grid`; n_t = N / n_f, fewer than the grid's for a causal prefix)."""
        B, N, D = tokens.shape
        n_f = self.cfg.grid[1]
        if self.cfg.patch_order == "freq-major":
            return tokens.view(B, n_f, N // n_f, D).transpose(1, 2)
        return tokens.view(B, N // n_f, n_f, D)

    def embed(self, spec, mask: Optional[torch.Tensor] = None):
        """[B, 1, T, F] -> tokens [B, 1 + N, D]; masked patches ([B, N] True) become the mask
        token, position-free (SSAM: replaced after the positions are added) or with the
        patch's position (`mask_token_position`, SSAST: replaced before); CLS (+ its
        position) is prepended."""
        x = self.patch_embed(spec)
        pos = self.pos_embed[:, 1:1 + x.shape[1]]
        if not self.pretraining.mask_token_position:
            x = x + pos
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        if self.pretraining.mask_token_position:
            x = x + pos
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls.to(x.dtype), x], dim=1)

    def forward_blocks(self, x):
        """[B, 1 + N, D] tokens -> [B, 1 + N, D] after the blocks and encoder_norm."""
        hidden, residual = TRAVERSALS[self.cfg.traversal](self.blocks, x, None)
        x = hidden if residual is None else residual + self.drop_path(hidden)
        for _ in range(self.cfg.final_norms):
            x = self.encoder_norm(x.to(self.encoder_norm.weight.dtype))
        return x

    def forward(self, spec, mask: Optional[torch.Tensor] = None):
        """Encoded patch tokens [B, N, D] (CLS dropped) for a batch of crops [B, 1, T, F].

        A causal encoder also accepts a crop cut short (T < crop_frames, T a multiple of the
        patch time): it yields the first T / patch_time time steps of tokens, exactly as the
        full zero-padded crop would, at a fraction of the cost.
        """
        self._check_input(spec, allow_prefix=self.is_causal and mask is None)
        return self.forward_blocks(self.embed(spec, mask))[:, 1:]

    def encode_masked(self, spec, mask):
        """Pretraining forward: the final tokens [B, 1 + N, D] (CLS first) of a masked crop,
        for the heads (`pred`, `cpred`) to read."""
        self._require_non_overlapping("encode_masked")
        self._check_input(spec)
        return self.forward_blocks(self.embed(spec, mask))

    def reconstruct(self, spec, mask):
        """Pretraining forward: predicted patches [B, N, patch_dim] from a masked crop."""
        self._require_non_overlapping("reconstruct")
        return self.pred(self.encode_masked(spec, mask))[:, 1:]

    def _check_input(self, spec, allow_prefix=False):
        want = (1, self.cfg.crop_frames, self.cfg.n_mels)
        got = tuple(spec.shape[1:]) if spec.ndim == 4 else None
        if allow_prefix and got and got[0::2] == want[0::2] and 0 < got[1] <= want[1] \
                and got[1] % self.cfg.patch_time == 0:
            return
        if got != want:
            raise ValueError(f"encoder input must be [batch, {want[0]}, {want[1]}, {want[2]}] "
                             f"log-mel crops, got {tuple(spec.shape)}")

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


SSAMEncoder = SpectrogramEncoder  # the name of releases <= 0.1
