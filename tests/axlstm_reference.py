"""An independent restatement of the official AxLSTM block (as the released code defines it), for parity tests.

Plain functions of a state dict with the official key names: a LayerNorm written out, the
causal conv as a sum of shifted taps, the block-diagonal projections as one dense
block-diagonal matrix, and the mLSTM cell as a loop over time of the stabilised recurrence.
Nothing here imports the code under test.
"""
import math

import torch
import torch.nn.functional as F

NH = 4  # AxLSTM's cell always has 4 heads


def ref_layer_norm(x, offset, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * (1 + offset)


def ref_block_diag(x, w):
    """w [nb, out, in] -> dense [E, E] block-diagonal matrix, y = x W^T."""
    return x @ torch.block_diag(*w.unbind(0)).T


def ref_causal_conv(x, w, b):
    """x [B, L, E]; w [E, 1, K]; out_t = b + sum_s w[:, K-1-s] * x_{t-s} (zeros before t=0)."""
    K = w.shape[-1]
    out = b.expand_as(x).clone()
    for s in range(K):
        shifted = torch.cat([x.new_zeros(x.shape[0], s, x.shape[2]), x[:, :x.shape[1] - s]], 1)
        out = out + w[:, 0, K - 1 - s] * shifted
    return out


def ref_mlstm_loop(q, k, v, ig, fg, eps=1e-6):
    """Stabilised recurrent mLSTM from the empty state (m_0 = -inf).

    q, k, v [B, L, NH, DH]; ig, fg [B, L, NH] (pre-activations). Returns h [B, L, NH, DH] and a
    bool [B, L, NH] telling where exp(-m_t) won the max in the denominator.
    """
    B, L, H, DH = q.shape
    C = q.new_zeros(B, H, DH, DH)  # C[v, k]
    n = q.new_zeros(B, H, DH)
    m = q.new_full((B, H), float("-inf"))
    hs, branch = [], []
    for t in range(L):
        logf = F.logsigmoid(fg[:, t])
        m_new = torch.maximum(logf + m, ig[:, t])
        f_s = torch.exp(logf + m - m_new)
        i_s = torch.exp(ig[:, t] - m_new)
        kt = k[:, t] / math.sqrt(DH)
        outer = v[:, t, :, :, None] * kt[:, :, None, :]                  # v_t k_t^T
        C = f_s[..., None, None] * C + i_s[..., None, None] * outer
        n = f_s[..., None] * n + i_s[..., None] * kt
        qn = (n * q[:, t]).sum(-1)
        floor = torch.exp(-m_new)
        denom = torch.maximum(qn.abs(), floor) + eps
        hs.append((C @ q[:, t, :, :, None])[..., 0] / denom[..., None])
        branch.append(floor > qn.abs())
        m = m_new
    return torch.stack(hs, 1), torch.stack(branch, 1)


def ref_block(x, p, eps=1e-5):
    """The AxLSTM block x + layer(norm(x)) from a state dict p with the official keys."""
    g = lambda name: p["layer." + name]  # noqa: E731
    B, L, D = x.shape
    up = ref_layer_norm(x, p["norm.weight"], eps) @ g("proj_up.weight").T
    E = up.shape[-1] // 2
    x_m, z = up[..., :E], up[..., E:]
    x_c = F.silu(ref_causal_conv(x_m, g("conv1d.conv.weight"), g("conv1d.conv.bias")))
    q = ref_block_diag(x_c, g("q_proj.weight"))
    k = ref_block_diag(x_c, g("k_proj.weight"))
    v = ref_block_diag(x_m, g("v_proj.weight"))
    qkv = torch.cat([q, k, v], -1)
    ig = qkv @ g("mlstm_cell.igate.weight").T + g("mlstm_cell.igate.bias")
    fg = qkv @ g("mlstm_cell.fgate.weight").T + g("mlstm_cell.fgate.bias")
    split = lambda t: t.reshape(B, L, NH, E // NH)  # noqa: E731
    h, branch = ref_mlstm_loop(split(q), split(k), split(v), ig, fg)
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    h = ((h - mu) / torch.sqrt(var + eps)).reshape(B, L, E) * (1 + g("mlstm_cell.outnorm.weight"))
    h = (h + g("learnable_skip") * x_c) * F.silu(z)
    return x + h @ g("proj_down.weight").T, branch


