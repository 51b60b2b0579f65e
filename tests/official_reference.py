"""An independent statement of the official SSAM HEAR runtime, for parity tests.

The model is assembled from mamba_ssm's own `Mamba` module (its pure-torch reference
path) with the official Block order (add -> LayerNorm -> mixer, fp32 residual), and the
runtime follows the released hear_api: per-clip normalised log-mel, pad by
200 - T % 200 frames, independent 2 s chunks, `'b (f t) d -> b t (f d)'`, trim
int(50 * pad / 200) frames, mean for the scene embedding. Nothing here imports the code
under test except to copy weights in.

`ReferenceMamba` restates mamba_ssm's non-fused Mamba path with mamba_ssm's
parameter names and a plain per-step loop, so the parity tests also run where mamba-ssm
is not installed (tests/conftest.py's `mamba_cls` picks mamba_ssm's own module when it is).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from einops import rearrange


class ReferenceMamba(nn.Module):
    """Mamba-1 mixer, written from the maths: same parameter names and shapes as mamba_ssm."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2):
        super().__init__()
        E, R = expand * d_model, math.ceil(d_model / 16)
        self.dt_rank, self.d_state = R, d_state
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, kernel_size=d_conv, groups=E, padding=d_conv - 1)
        self.x_proj = nn.Linear(E, R + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(R, E)
        self.A_log = nn.Parameter(torch.randn(E, d_state))
        self.D = nn.Parameter(torch.randn(E))
        self.out_proj = nn.Linear(E, d_model, bias=False)

    def forward(self, u):
        L = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)  # [B, L, E]
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2))
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # [B, L, E]
        A = -torch.exp(self.A_log)
        h = x.new_zeros(x.shape[0], x.shape[2], self.d_state)
        ys = []
        for t in range(L):
            h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[..., None] * Bm[:, t, None, :]
            ys.append((h * Cm[:, t, None, :]).sum(-1) + self.D * x[:, t])
        y = torch.stack(ys, dim=1) * F.silu(z)
        return self.out_proj(y)


class OfficialBlock(nn.Module):
    def __init__(self, dim, mixer):
        super().__init__()
        self.mixer = mixer
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, hidden, residual):
        residual = hidden if residual is None else residual + hidden
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden), residual.to(torch.float32)


class OfficialSSAM(nn.Module):
    def __init__(self, mamba_cls, dim=192, depth=12):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(1, dim, kernel_size=(4, 16), stride=(4, 16))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 251, dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            OfficialBlock(dim, mamba_cls(d_model=dim, d_state=24, d_conv=4, expand=3))
            for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 64))
        self.embed_dim = dim

    def forward_features(self, x):
        x = self.patch_embed.proj(x)  # [B, D, 50, 5]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.embed_dim)  # time first
        x = x + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        hidden, residual = x, None
        for blk in self.blocks:
            hidden, residual = blk(hidden, residual)
        x = self.encoder_norm((residual + hidden).to(self.encoder_norm.weight.dtype))
        return rearrange(x[:, 1:], "b (f t) d -> b t (f d)", f=5, d=self.embed_dim)


def official_log_mel(audio):
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, n_fft=400, win_length=400, hop_length=160,
        f_min=50.0, f_max=8000.0, n_mels=80, power=2.0)
    x = (mel(audio) + torch.finfo().eps).log()
    x = (x - x.mean([1, 2], keepdim=True)) / (x.std([1, 2], keepdim=True) + 1e-8)
    return x.transpose(-2, -1).unsqueeze(1)


@torch.no_grad()
def official_embeddings(model, audio):
    """Timestamp embeddings of the released runtime (batch size 1, as it forces)."""
    out = []
    for clip in audio:
        x = official_log_mel(clip.unsqueeze(0))
        pad = 200 - x.shape[-2] % 200
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        emb = torch.hstack([model.forward_features(x[:, :, i * 200:(i + 1) * 200])
                            for i in range(x.shape[-2] // 200)])
        trim = int(50 * pad / 200)
        out.append(emb[:, :-trim] if trim > 0 else emb)
    return torch.cat(out)


class OfficialAxLSTM(nn.Module):
    """The official AxLSTM encoder's forward_features, restated over a state dict with the
    official keys: SSAM's patching/positions/CLS, 12 blocks x + layer(norm(x))
    with odd blocks run on the flipped sequence, encoder_norm, and the `(f t)` reshape."""

    def __init__(self, state, depth=12):
        super().__init__()
        self.state, self.depth = state, depth
        self.embed_dim = state["cls_token"].shape[-1]

    def forward_features(self, x):
        from axlstm_reference import ref_block
        s = self.state
        x = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=(4, 16))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.embed_dim) + s["pos_embed"][:, 1:]
        cls = (s["cls_token"] + s["pos_embed"][:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for i in range(self.depth):
            p = {k[len(f"blocks.{i}."):]: v for k, v in s.items() if k.startswith(f"blocks.{i}.")}
            x = ref_block(x.flip(1), p)[0].flip(1) if i % 2 else ref_block(x, p)[0]
        x = F.layer_norm(x, (self.embed_dim,), s["encoder_norm.weight"], s["encoder_norm.bias"], eps=1e-6)
        return rearrange(x[:, 1:], "b (f t) d -> b t (f d)", f=5, d=self.embed_dim)


def official_finetuning_pos_embed(pos_embed, p_f_dim, p_t_dim, f_dim, t_dim, cls_token_num=1):
    """SSAST's fine-tuning constructor (which SSAMBA reuses) on a pretrained position table
    [1, cls + p_f * p_t, D] of frequency-major tokens: the patch rows as [1, D, p_f, p_t], time
    cut to its centre columns or bilinearly resized to (p_f, t) (the official code writes 8 for
    p_f), then frequency the same way to (f, t), flattened back and the CLS row(s) put first."""
    D = pos_embed.shape[-1]
    grid = pos_embed[:, cls_token_num:].detach().reshape(1, p_f_dim * p_t_dim, D).transpose(1, 2)
    grid = grid.reshape(1, D, p_f_dim, p_t_dim)
    if t_dim < p_t_dim:
        lo = int(p_t_dim / 2) - int(t_dim / 2)
        grid = grid[:, :, :, lo:lo + t_dim]
    else:
        grid = F.interpolate(grid, size=(p_f_dim, t_dim), mode="bilinear")
    if f_dim < p_f_dim:
        lo = int(p_f_dim / 2) - int(f_dim / 2)
        grid = grid[:, :, lo:lo + f_dim, :]
    else:
        grid = F.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    grid = grid.reshape(1, D, f_dim * t_dim).transpose(1, 2)
    return torch.cat([pos_embed[:, :cls_token_num].detach(), grid], dim=1)


class OfficialSSAMBA(nn.Module):
    """SSAMBA's released forward restated over its own state dict, keys as
    released (`v.*`, DataParallel prefix stripped): Kaldi fbank of the mean-removed clip, padded
    with zeros or cut to `frames`, normalised (x + 4.2677393) / (2 * 4.5689974); SSAST's patch
    embedding of [B, 1, F, T] (frequency-major tokens); CLS first; learned positions; pairs of
    bimamba layers on the sequence and its flip with the streams added; norm_f twice. Returns
    the tokens after the final norms [B, 1 + N, D]; `ft_avgtok` is their non-CLS mean.
    Fine-tuning with overlapping patches (`forward_tokens(..., fstride=, tstride=)`): the
    pretrained 16 x 16 kernel at the new stride, positions by `official_finetuning_pos_embed`."""

    def __init__(self, state, mixer_cls, depth, d_state=16):
        super().__init__()
        self.state, self.depth = state, depth
        D = state["v.cls_token"].shape[-1]
        self.mixers = nn.ModuleList()
        for i in range(depth):
            m = mixer_cls(D, d_state=d_state)
            m.load_state_dict({k[len(f"v.layers.{i}.mixer."):]: v for k, v in state.items()
                               if k.startswith(f"v.layers.{i}.mixer.")})
            self.mixers.append(m)

    def fbank(self, clip, frames=1024):
        x = torchaudio.compliance.kaldi.fbank(
            (clip - clip.mean()).unsqueeze(0), htk_compat=True, sample_frequency=16000, use_energy=False,
            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        x = F.pad(x, (0, 0, 0, max(0, frames - x.shape[0])))[:frames]  # zeros, then normalise
        return (x + 4.2677393) / (2 * 4.5689974)

    def layer(self, i, h, r, drop=lambda t, i: t):
        s = self.state
        r = h if r is None else r + drop(h, i)
        normed = F.layer_norm(r, r.shape[-1:], s[f"v.layers.{i}.norm.weight"], s[f"v.layers.{i}.norm.bias"], eps=1e-5)
        return self.mixers[i](normed), r

    def forward_tokens(self, fbank, drop_path_rate=0.0, generator=None, fstride=16, tstride=16):
        """Tokens [B, 1 + N, D]; with drop_path_rate > 0, a training forward with Vim's stochastic
        depth (vim/models_mamba.py): layer i's Block drops the hidden it receives at
        inter_dpr[i] = ([0] + linspace(0, rate, depth))[i] (not at the first pair, whose residual
        is None), both layers of a pair with their own draw (the forward layer first), and the
        final add drops the last pair's hidden at the full rate. Each drop: one draw per sample
        from `generator`, kept samples scaled by 1 / (1 - p) (timm's DropPath). fstride /
        tstride: the patch split stride of fine-tuning (16: the pretraining one, positions as
        stored; the official resize at equal size is the identity)."""
        inter_dpr = [0.0] + torch.linspace(0, drop_path_rate, self.depth).tolist()

        def drop(t, i, p=None):
            p = inter_dpr[i] if p is None else p
            if p == 0:
                return t
            kept = torch.rand(t.shape[0], generator=generator) < 1 - p
            return t * (kept.float() / (1 - p)).view(-1, 1, 1)
        s = self.state
        x = fbank.unsqueeze(1).transpose(2, 3)  # [B, 1, 128, T]
        x = F.conv2d(x, s["v.patch_embed.proj.weight"], s["v.patch_embed.proj.bias"], stride=(fstride, tstride))
        f_dim, t_dim = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)  # [B, f_dim * t_dim, D], index f * t_dim + t
        pos = s["v.pos_embed"]
        if (fstride, tstride) != (16, 16):
            p_f_dim = 128 // 16
            pos = official_finetuning_pos_embed(pos, p_f_dim, (pos.shape[1] - 1) // p_f_dim, f_dim, t_dim)
        x = torch.cat([s["v.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + pos
        h, r = x, None
        for i in range(0, self.depth, 2):
            h_f, r_f = self.layer(i, h, r, drop)
            h_b, r_b = self.layer(i + 1, h.flip(1), None if r is None else r.flip(1), drop)
            h, r = h_f + h_b.flip(1), r_f + r_b.flip(1)
        norm = lambda t: F.layer_norm(t, t.shape[-1:], s["v.norm_f.weight"], s["v.norm_f.bias"], eps=1e-5)  # noqa: E731
        return norm(norm(r + drop(h, None, p=drop_path_rate)))
