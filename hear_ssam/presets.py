"""Model families as data, and the presets derived from them.

A `Family` says which block the encoder stacks and how (traversal), its sizes, the
frontend it was trained on, and how to read its official checkpoints: `detect(state)`
recognises a foreign state dict by its keys, `from_official(state)` renames its keys to
ours (timm's `checkpoint_filter_fn` pattern; returns (our keys, set-aside keys)), and
`block_options_from_state` reads the block's hyper-parameters off tensor shapes.

    PRESETS["ssam-tiny"]      -> EncoderConfig     (every family x size)
    preset_encoder("ssam-tiny") -> SpectrogramEncoder with its family's PretrainingOptions
    FAMILIES["ssam"].pretraining_options() -> PretrainingOptions
    FAMILIES["ssam"].frontend -> FrontendConfig
    FAMILIES["ssam"].runtimes -> what `load_model(runtime=...)` runs for it (hear_ssam.runtime)

Adding a family = one block module in `modules/` + one entry in FAMILIES.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from .encoder import EncoderConfig, PretrainingOptions, SpectrogramEncoder
from .frontend import SSAMBA_FBANK, FrontendConfig


# The HEAR runtimes of the SSAM framework's families (SSAM, SSAST, AxLSTM) and of encoders
# of no family: runtime name -> HearSSAM's frame layout and scene pooling (values: see
# hear_ssam.runtime). "official" is their released HEAR runtime.
SSAM_RUNTIMES = {"hear": {"frame_layout": "time-steps", "scene_pooling": "frames"},
                 "official": {"frame_layout": "released", "scene_pooling": "frames"}}
# SSAMBA's released code pools `ft_avgtok` over one padded-or-cut 10.24 s window and has no
# frame-level output, so its timestamp frames are ours under both runtimes. Our scene pooling
# is the other families': the mean of the clip's frames, each frequency patch kept apart
# (8 x D values): the mean over all tokens (ft_avgtok) averages the frequency rows together.
SSAMBA_RUNTIMES = {"hear": {"frame_layout": "time-steps", "scene_pooling": "frames"},
                   "official": {"frame_layout": "time-steps", "scene_pooling": "window_tokens"}}


def identity_keys(state: dict) -> tuple[dict, dict]:
    """Official SSAM/SSAST/AxLSTM files already use our names: nothing renamed or set aside."""
    return dict(state), {}


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    title: str  # paper / model name, for `info` and the docs
    block: str  # key of modules.BLOCKS
    block_options: dict  # shared by every size
    sizes: dict  # size -> {"embed_dim": D, **size-specific block options}
    traversal: str = "forward"
    frontend: FrontendConfig = FrontendConfig()
    encoder: dict = dataclasses.field(default_factory=dict)  # other EncoderConfig fields
    # PretrainingOptions fields of its recipe (the released checkpoints hold its heads)
    pretraining: dict = dataclasses.field(default_factory=dict)
    detect: Callable[[dict], bool] = lambda state: False
    from_official: Callable[[dict], tuple] = identity_keys
    block_options_from_state: Callable[[dict, int], dict] = lambda state, dim: {}
    # runtime ("hear", "official") -> HearSSAM's frame layout and scene pooling
    runtimes: dict = dataclasses.field(default_factory=lambda: SSAM_RUNTIMES)

    def config(self, size: str) -> EncoderConfig:
        spec = dict(self.sizes[size])
        dim = spec.pop("embed_dim")
        return EncoderConfig(block=self.block, block_options={**self.block_options, **spec},
                             traversal=self.traversal, embed_dim=dim, n_mels=self.frontend.n_mels,
                             **self.encoder)

    def config_from_state(self, state: dict) -> EncoderConfig:
        """The EncoderConfig of a (renamed) state dict, read off its tensor shapes."""
        dim = state["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        pt, pf = state["patch_embed.proj.weight"].shape[-2:]
        n_tokens = state["pos_embed"].shape[1] - 1
        n_f = self.frontend.n_mels // pf
        options = {**self.block_options, **self.block_options_from_state(state, dim)}
        fields = dict(self.encoder, depth=depth, patch_time=pt, patch_freq=pf,
                      crop_frames=pt * (n_tokens // n_f))
        return EncoderConfig(block=self.block, block_options=options, traversal=self.traversal,
                             embed_dim=dim, n_mels=self.frontend.n_mels, **fields)

    def pretraining_options(self) -> PretrainingOptions:
        """How this family is pretrained: its heads, mask tokens, targets and stochastic depth."""
        return PretrainingOptions(**self.pretraining)


def _mamba_options(state, dim):
    E, N = state["blocks.0.mixer.A_log"].shape
    return {"d_state": N, "expand": E // dim, "d_conv": state["blocks.0.mixer.conv1d.weight"].shape[-1]}


def _vit_options(state, dim):
    # Heads are not visible in the shapes; the SSAST baselines use 64 channels per head.
    return {"num_heads": max(1, dim // 64), "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / dim}


def _mlstm_options(state, dim):
    return {"expansion": state["blocks.0.layer.proj_up.weight"].shape[0] // (2 * dim),
            "num_heads": state["blocks.0.layer.mlstm_cell.igate.weight"].shape[0],
            "conv_kernel": state["blocks.0.layer.conv1d.conv.weight"].shape[-1],
            "qkv_block_size": state["blocks.0.layer.q_proj.weight"].shape[-1]}


def ssamba_keys(state: dict) -> tuple[dict, dict]:
    """A released SSAMBA state dict (SSAST model around a Vim backbone `v`, DataParallel
    prefix already stripped) -> (our keys, set-aside keys).

    v.layers.i.* -> blocks.i.*; v.norm_f -> encoder_norm; v.patch_embed / cls_token / pos_embed
    as ours, the patch kernel transposed (SSAST convolves [B, 1, F, T], we convolve
    [B, 1, T, F]); mask_embed -> mask_token; the generative head gpredlayer -> pred and the
    contrastive head cpredlayer -> cpred (both unchanged: the family's patch_pixel_order is
    SSAST's, so their 256 outputs are in the order of our targets). Set aside: the unused
    classifier v.head, p_input_fdim / p_input_tdim.
    """
    ours, aside = {}, {}
    for k, v in state.items():
        if k == "v.patch_embed.proj.weight":
            ours["patch_embed.proj.weight"] = v.transpose(-1, -2).contiguous()
        elif k.startswith("v.layers."):
            ours["blocks." + k[len("v.layers."):]] = v
        elif k.startswith("v.norm_f."):
            ours["encoder_norm." + k[len("v.norm_f."):]] = v
        elif k.startswith(("v.patch_embed.", "v.cls_token", "v.pos_embed")):
            ours[k[len("v."):]] = v
        elif k == "mask_embed":
            ours["mask_token"] = v
        elif k.startswith("gpredlayer."):
            ours["pred." + k[len("gpredlayer."):]] = v
        elif k.startswith("cpredlayer."):
            ours["cpred." + k[len("cpredlayer."):]] = v
        else:
            aside[k] = v
    return ours, aside


_SIZES = {"tiny": {"embed_dim": 192}, "small": {"embed_dim": 384}, "base": {"embed_dim": 768}}

FAMILIES = {f.name: f for f in (
    Family(name="ssam", title="SSAM (Audio Mamba, Yadav & Tan 2024)", block="mamba",
           block_options={"d_state": 24, "d_conv": 4, "expand": 3},
           sizes=_SIZES,
           detect=lambda state: "blocks.0.mixer.A_log" in state and "blocks.0.mixer.A_b_log" not in state,
           block_options_from_state=_mamba_options),
    Family(name="ssast", title="SSAST baseline (ViT, in the SSAM framework)", block="vit",
           block_options={"mlp_ratio": 4.0},
           sizes={"tiny": {"embed_dim": 192, "num_heads": 3}, "small": {"embed_dim": 384, "num_heads": 6},
                  "base": {"embed_dim": 768, "num_heads": 12}},
           detect=lambda state: "blocks.0.attn.qkv.weight" in state,
           block_options_from_state=_vit_options),
    # AxLSTM: 12 pre-LN mLSTM blocks (4 cell heads at every width), odd blocks run on the
    # flipped sequence; block norms eps 1e-5 (encoder_norm keeps 1e-6).
    Family(name="axlstm", title="AxLSTM (Audio xLSTMs, Yadav, Theodoridis & Tan 2025)", block="mlstm",
           block_options={"norm_eps": 1e-5, "num_heads": 4, "expansion": 2, "conv_kernel": 4,
                          "qkv_block_size": 4},
           sizes=_SIZES, traversal="alternate",
           detect=lambda state: "blocks.0.layer.proj_up.weight" in state,
           block_options_from_state=_mlstm_options),
    # SSAMBA: 24 bimamba-v2 layers in flipped pairs on 128-bin Kaldi fbank, 16x16 patches of
    # 10.24 s in frequency-major order, learned positions, final norm applied twice (as released).
    # Pretrained as SSAST: mask tokens replaced before the positions are added, a contrastive
    # head `cpred` beside `pred`, patch values in SSAST's Unfold order (pretrain ssast_joint),
    # with Vim's stochastic depth 0.1 (run_mask_patch_amba.sh: drop_path_rate=0.1).
    Family(name="ssamba", title="SSAMBA (Shams et al. 2024, bidirectional Mamba in SSAST)", block="bimamba",
           block_options={"norm_eps": 1e-5, "d_state": 16, "d_conv": 4, "expand": 2},
           sizes=_SIZES, traversal="flipped_pairs", frontend=SSAMBA_FBANK, runtimes=SSAMBA_RUNTIMES,
           encoder={"depth": 24, "crop_frames": 1024, "patch_time": 16, "patch_freq": 16, "norm_eps": 1e-5,
                    "patch_order": "freq-major", "positions": "learned", "final_norms": 2},
           pretraining={"head_activation": "relu", "mask_token_position": True, "contrastive_head": True,
                        "patch_pixel_order": "freq-major", "drop_path_rate": 0.1},
           detect=lambda state: "v.layers.0.mixer.A_b_log" in state,
           from_official=ssamba_keys, block_options_from_state=_mamba_options),
)}

PRESETS = {f"{family.name}-{size}": family.config(size)
           for family in FAMILIES.values() for size in family.sizes}


def family_of_preset(preset: str) -> Family:
    return FAMILIES[preset.split("-", 1)[0]]


def preset_encoder(preset: str) -> SpectrogramEncoder:
    """A freshly initialised encoder of a preset (drawn from the global RNG) with its family's
    pretraining options. Build a preset's module this way: `SpectrogramEncoder(PRESETS[name])`
    alone gets SSAM's options, i.e. other heads (and another seeded initialisation) for SSAMBA."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return SpectrogramEncoder(PRESETS[preset], family_of_preset(preset).pretraining_options())


def preset_name(cfg: EncoderConfig, pretraining: PretrainingOptions) -> str | None:
    """The preset an encoder is, if any: its architecture and its family's pretraining options."""
    return next((name for name, p in PRESETS.items()
                 if p == cfg and family_of_preset(name).pretraining_options() == pretraining), None)


def family_of_config(cfg: EncoderConfig) -> Family | None:
    """The family whose block and traversal a config uses (None for a custom combination)."""
    return next((f for f in FAMILIES.values() if f.block == cfg.block and f.traversal == cfg.traversal), None)
