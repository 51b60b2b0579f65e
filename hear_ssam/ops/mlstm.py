"""mLSTM cell numerics (xLSTM's matrix-memory LSTM), in three interchangeable forms.

mLSTM cell (per batch element and head; k is scaled by 1/sqrt(DH); i_t = exp(i~_t),
f_t = sigmoid(f~_t))::

    C_t = f_t C_{t-1} + i_t v_t k_t^T,   n_t = f_t n_{t-1} + i_t k_t
    h_t = C_t q_t / max(|n_t^T q_t|, 1)

Unrolled, h_t = sum_{j<=t} D[t, j] (q_t . k_j) v_j / max(|sum_{j<=t} D[t, j] (q_t . k_j)|, 1) with
log D[t, j] = sum_{l=j+1..t} log f_l + i~_j.

Stabilisation. exp(i~) overflows, so every row is rescaled by exp(-m_t) with
m_t = max_{j<=t} log D[t, j]: all weights w[t, j] = exp(log D[t, j] - m_t) lie in (0, 1] and the
largest is exactly 1. Numerator and denominator are both multiplied by exp(-m_t), so the "1" in
the denominator's max becomes exp(-m_t):

    h_t = sum_j w[t,j] (q_t.k_j) v_j / (max(|sum_j w[t,j] (q_t.k_j)|, exp(-m_t)) + eps)

Mathematically any m_t gives the same h_t; only eps = 1e-6, added *after* the rescaling (as in
the official code), depends on the choice. To agree to rounding with the official parallel form,
every form here uses the same m_t: the recurrence m_t = max(log f_t + m_{t-1}, i~_t) started
from the empty state m_0 = -inf gives exactly the row max above (a max over j <= t of a
telescoping sum). (xLSTM's own ``step`` starts from m_0 = 0, which changes results only
through eps.)

Interchangeable forms of the cell (``mLSTMLayer(backend=...)``, ``layer.mlstm_cell.backend``):

* ``"parallel"``: the official form, L x L matrices per head, memory O(L^2).
* ``"chunkwise"``: exact intra-chunk parallel form plus a carried (C, n, m) state between
  chunks of ``chunk_size`` tokens; memory O(L * chunk_size + (L / chunk_size) * DH^2), i.e. O(L).
* ``"recurrent"``: one token at a time (the definition above); O(L) memory but slow; the
  reference for streaming.
* ``"auto"`` (default): parallel up to ``parallel_max_len`` (1024) tokens, chunkwise beyond.

The chunkwise and recurrent forms run in (at least) float32 with autocast disabled (they carry
a state over many steps); the parallel form runs in whatever dtype autocast gives it, as the
official code does.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "parallel", "chunkwise", "recurrent")

# (C [B, NH, DH_k, DH_v], n [B, NH, DH_k], m [B, NH]); C and n are the stabilised values, i.e. the
# true ones times exp(-m). The empty state is (0, 0, -inf).
MLSTMState = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# Cell kernels. q, k, v: [B, NH, L, DH]; igate, fgate (pre-activations): [B, NH, L].
# ----------------------------------------------------------------------------------------------

def mlstm_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                   fgate: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Stabilised parallel mLSTM (the official form).

    q, k, v [B, NH, L, DH], igate/fgate [B, NH, L] -> h [B, NH, L, DH].

    log D[t, j] = F_t - F_j + i~_j for j <= t (else -inf), F = cumsum(logsigmoid(f~));
    m_t = max_j log D[t, j]; C = (q k^T / sqrt(DH)) * exp(log D - m);
    h = C / (max(|C 1|, exp(-m)) + eps) @ v. Memory O(L^2) per head.
    """
    L, DH = q.shape[-2], q.shape[-1]
    cum = torch.cumsum(F.logsigmoid(fgate), dim=-1)                  # [B, NH, L]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = cum.unsqueeze(-1) - cum.unsqueeze(-2) + igate.unsqueeze(-2)  # [B, NH, L(t), L(j)]
    log_d = torch.where(causal, log_d, float("-inf"))
    m = log_d.amax(dim=-1, keepdim=True)                               # [B, NH, L, 1], finite
    c = (q @ (k / math.sqrt(DH)).transpose(-2, -1)) * torch.exp(log_d - m)
    normaliser = torch.maximum(c.sum(dim=-1, keepdim=True).abs(), torch.exp(-m))
    return (c / (normaliser + eps)) @ v


def mlstm_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
               fgate: torch.Tensor, state: Optional[MLSTMState] = None, eps: float = 1e-6,
               ) -> Tuple[torch.Tensor, MLSTMState]:
    """One recurrent step. q, k, v [B, NH, DH]; igate/fgate [B, NH]; state as ``MLSTMState``
    (None = empty). Returns (h [B, NH, DH], new state).

    m_t = max(log f_t + m_{t-1}, i~_t); C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1}
    + exp(i~_t - m_t) k_t v_t^T (k scaled by 1/sqrt(DH)), likewise n_t;
    h_t = q_t^T C_t / (max(|q_t^T n_t|, exp(-m_t)) + eps).
    """
    k = k / math.sqrt(k.shape[-1])
    if state is None:  # empty state: m_0 = -inf, so m_1 = i~_1 and the old state gets weight 0
        m = igate
        c = k.unsqueeze(-1) * v.unsqueeze(-2)
        n = k
    else:
        c_old, n_old, m_old = state
        log_f = F.logsigmoid(fgate)
        m = torch.maximum(log_f + m_old, igate)
        decay = torch.exp(log_f + m_old - m).unsqueeze(-1)             # [B, NH, 1]
        inp = torch.exp(igate - m).unsqueeze(-1)
        c = decay.unsqueeze(-1) * c_old + (inp * k).unsqueeze(-1) * v.unsqueeze(-2)
        n = decay * n_old + inp * k
    num = (q.unsqueeze(-2) @ c).squeeze(-2)                            # [B, NH, DH_v]
    qn = (q * n).sum(-1, keepdim=True)
    h = num / (torch.maximum(qn.abs(), torch.exp(-m).unsqueeze(-1)) + eps)
    return h, (c, n, m)


def _float32_inputs(*tensors):
    """Promote to at least float32 (float64 stays float64)."""
    return [t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors]


def mlstm_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                    fgate: torch.Tensor, eps: float = 1e-6, state: Optional[MLSTMState] = None,
                    return_state: bool = False):
    """Token-by-token mLSTM (loop of ``mlstm_step``), computed in (at least) float32.

    q, k, v [B, NH, L, DH], igate/fgate [B, NH, L] -> h [B, NH, L, DH] (input dtype), and the
    final state when ``return_state``. Memory O(L) (autograd keeps one DH x DH state per step).
    """
    out_dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, igate, fgate = _float32_inputs(q, k, v, igate, fgate)
        hs = []
        for t in range(q.shape[-2]):
            h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], igate[:, :, t],
                                  fgate[:, :, t], state, eps)
            hs.append(h)
        h = torch.stack(hs, dim=2) if hs else q.new_zeros(q.shape[:-1] + v.shape[-1:])
    h = h.to(out_dtype)
    return (h, state) if return_state else h


def mlstm_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                    fgate: torch.Tensor, chunk_size: int = 64, eps: float = 1e-6,
                    state: Optional[MLSTMState] = None, return_state: bool = False):
    """Chunkwise mLSTM, exact (same maths as ``mlstm_parallel``), computed in (at least)
    float32.

    q, k, v [B, NH, L, DH], igate/fgate [B, NH, L] -> h [B, NH, L, DH] (input dtype), and the
    final state when ``return_state``. Memory O(L * chunk_size) activations plus one
    DH x DH state per chunk.

    Within a chunk starting after a state (C, n, m_prev) and b_t = sum of log f over the chunk
    up to t: the state contributes with log weight b_t + m_prev, token j of the chunk with
    b_t - b_j + i~_j (j <= t); m_t is the max of all of these (= the parallel row max) and the
    new state is the last row's aggregate, rescaled by its own m.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = q.dtype
    L, DH = q.shape[-2], q.shape[-1]
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, igate, fgate = _float32_inputs(q, k, v, igate, fgate)
        k = k / math.sqrt(DH)
        log_f = F.logsigmoid(fgate)
        outs = []
        for s in range(0, L, chunk_size):
            e = min(s + chunk_size, L)
            qc, kc, vc, ic = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], igate[:, :, s:e]
            b = torch.cumsum(log_f[:, :, s:e], dim=-1)                 # [B, NH, c]
            n_c = e - s
            causal = torch.ones(n_c, n_c, dtype=torch.bool, device=q.device).tril()
            log_d = torch.where(causal, b.unsqueeze(-1) - b.unsqueeze(-2) + ic.unsqueeze(-2),
                                float("-inf"))                         # [B, NH, c, c]
            m = log_d.amax(dim=-1)                                     # [B, NH, c]
            if state is not None:
                c_old, n_old, m_old = state
                log_w_old = b + m_old.unsqueeze(-1)                    # [B, NH, c]
                m = torch.maximum(m, log_w_old)
            w = torch.exp(log_d - m.unsqueeze(-1))                     # [B, NH, c, c]
            scores = (qc @ kc.transpose(-2, -1)) * w
            num = scores @ vc                                          # [B, NH, c, DH]
            den = scores.sum(-1)                                       # [B, NH, c]
            if state is not None:
                w_old = torch.exp(log_w_old - m)                       # [B, NH, c]
                num = num + w_old.unsqueeze(-1) * (qc @ c_old)
                den = den + w_old * (qc @ n_old.unsqueeze(-1)).squeeze(-1)
            outs.append(num / (torch.maximum(den.abs(), torch.exp(-m)) + eps).unsqueeze(-1))
            # carry the state to the end of this chunk, stabilised by the last row's m
            m_new = m[..., -1]                                         # [B, NH]
            w_in = torch.exp(b[..., -1:] - b + ic - m_new.unsqueeze(-1))    # [B, NH, c]
            kw = kc * w_in.unsqueeze(-1)
            c_new = kw.transpose(-2, -1) @ vc                          # [B, NH, DH, DH]
            n_new = kw.sum(-2)                                         # [B, NH, DH]
            if state is not None:
                decay = torch.exp(b[..., -1] + m_old - m_new)          # [B, NH]
                c_new = c_new + decay[..., None, None] * c_old
                n_new = n_new + decay.unsqueeze(-1) * n_old
            state = (c_new, n_new, m_new)
        h = torch.cat(outs, dim=2) if outs else q.new_zeros(q.shape[:-1] + v.shape[-1:])
    h = h.to(out_dtype)
    return (h, state) if return_state else h
