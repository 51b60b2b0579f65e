"""Selective scan (the S6 recurrence of Mamba-1) as Triton kernels, forward and backward.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t,      y = y * silu(z)

`selective_scan_triton` has mamba_ssm's `selective_scan_fn` signature and semantics
(u, delta, z: [batch, E, L]; A: [E, N]; B, C: [batch, N, L], time-varying; D, delta_bias: [E]),
fp32 maths whatever the input dtype, output in u's dtype. It is meant for CUDA machines
where mamba_ssm's compiled kernels are missing; on CPU it runs only under Triton's
interpreter (TRITON_INTERPRET=1), which is how the tests exercise it.

Kernel design (both directions)
- One program per (block of BE channels, batch element); it walks the sequence in tiles of
  BL time steps, with the state of its BE channels in registers. A tile is a 4-D tensor
  [BL, NSP, BE, NG]: state index n = s * NG + g. Triton's default layout for that shape puts
  NG lanes on N, the remaining lanes and the warps on channels, and the time axis and the
  NSP entries inside each thread; so the scans along time are sequential register code,
  sums over N are in-thread adds plus log2(NG) shuffles, and there is one channel per
  thread. (State-shaped loads and stores are 3-D [NSP, BE, NG]: a 4-D load would impose its
  memory-coalesced layout, all 32 lanes on N, on the whole computation.)
- N is split into two power-of-2 parts of NSA and NSB in-thread entries (N = 24: 16 + 8),
  so nothing is padded for the usual sizes; entries past N are masked (A = 0, B = C = 0).
- Inside a tile the recurrence is tl.associative_scan with (a1, b1), (a2, b2) ->
  (a1 a2, b1 a2 + b2), the carried state folded into the first step so that only the
  b-chain (one FMA per step) survives compilation. delta_bias, softplus, the D skip and the
  silu(z) gate are fused. [BL, BE] tiles of u / delta / z / dout and [BL, NSP, NG] tiles of
  B / C are loaded contiguous along L, cast to fp32 at once, and prefetched one tile ahead.
- The forward saves the state every `chunk` steps (64: bounded memory,
  batch * E * N * L / 64 floats, never [batch, E, L, N]).
- The backward walks the chunks in reverse. Per chunk it recomputes the tile-start states
  (kept in a small per-program scratch buffer), then walks the tiles in reverse: recompute
  the tile's states h_t from its start state and run the reverse-time scan
      G_t = g_t C_t + dA_{t+1} G_{t+1}        (G = dL/dh, dA_t = exp(delta_t A))
  as a forward scan over the time-flipped tile (tl.flip of an in-thread axis is a register
  renaming; reverse=True scans compile to shuffles) over triples that carry dA_{t+1}
  without shifting registers; the carry into the previous tile is Q = dA_{t0} G_{t0}. With
  W_t = G_t dA_t h_{t-1} = G_t (h_t - delta_t B_t u_t) (no shifted h_{t-1} needed):
      dA += sum_t W_t delta_t,   ddelta_t = sum_n (G_t B_t u_t + W_t A),
      du_t = delta_t sum_n G_t B_t + D g_t,  dB_t = sum_e G_t delta_t u_t,  dC_t = sum_e g_t h_t.
  dB and dC are reduced over a program's BE channels in registers and added into fp32
  [batch, N, L] buffers with (relaxed) atomics; dA, dD and ddelta_bias are per-program
  partials summed over the batch in PyTorch.
"""
from __future__ import annotations

import os

import torch

try:  # Triton is optional: the dispatcher asks load_triton() whether it can run here.
    import triton
    import triton.language as tl
    _TRITON_ERROR = None
except Exception as _e:  # ImportError, or a broken install
    triton = None
    tl = None
    _TRITON_ERROR = f"{type(_e).__name__}: {_e}"

DEFAULT_CHUNK = 64           # time steps between saved states (a power of 2, a multiple of the tiles)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _fix_interpreter_for_numpy2():
    """Triton's interpreter turns loop bounds into ints with int(ndarray of shape (1,)), which
    NumPy >= 2.4 refuses ("only 0-dimensional arrays can be converted"): any `range(0, n)` over
    a runtime argument then fails. Swap in a conversion that works on every NumPy. Only ever
    applied when TRITON_INTERPRET is on (the interpreter is for tests on CPU)."""
    try:
        from triton.runtime import interpreter as _interp
    except Exception:  # pragma: no cover - another Triton layout; nothing to fix
        return
    original = getattr(_interp, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_numpy2_fixed", False):
        return

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    _patch_lang_tensor._numpy2_fixed = True
    _interp._patch_lang_tensor = _patch_lang_tensor


def load_triton():
    """The Triton selective scan, or BackendUnavailable saying why it cannot run here."""
    from .errors import BackendUnavailable

    if triton is None:
        raise BackendUnavailable(f"triton does not import ({_TRITON_ERROR})")
    if not torch.cuda.is_available() and not _interpreting():
        raise BackendUnavailable("the Triton scan needs a CUDA device (or TRITON_INTERPRET=1 for Triton's "
                                 "CPU interpreter, which is for tests only)")
    return selective_scan_triton


# --------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _linear_combine(a1, b1, a2, b2):
        # x_t = a_t x_{t-1} + b_t composed left (earlier) to right (later)
        return a1 * a2, b1 * a2 + b2

    @triton.jit
    def _reverse_combine(f1, p1, v1, f2, p2, v2):
        # Segments of G_t = b_t + a_{t+1} G_{t+1} as (a_first, P, V) with
        # G_first = V + P * a_{last+1} G_{last+1}. Scanned over the time-flipped tile, so the
        # left operand (1) is the later segment and the right operand (2) the earlier one.
        k = p2 * f1
        return f2, k * p1, v2 + k * v1

    @triton.jit
    def _sigmoid(x):
        return 1.0 / (1.0 + tl.exp(-x))

    @triton.jit
    def _softplus(x):
        # torch.nn.functional.softplus (threshold 20); log1p(e) by Kahan's trick, as
        # log(1 + e) alone loses e when e < 1e-7.
        e = tl.exp(tl.minimum(x, 20.0))
        w = 1.0 + e
        lp = tl.where(w == 1.0, e, e * tl.log(w) / (w - 1.0))
        return tl.where(x > 20.0, x, lp)

    @triton.jit
    def _state_index(e1, E, N, N_OFF: tl.constexpr, NSP: tl.constexpr, NG: tl.constexpr):
        """Offsets e * N + n and mask of one state part, [NSP, BE, NG] with n = N_OFF + s * NG + g."""
        n3 = N_OFF + tl.arange(0, NSP)[:, None, None] * NG + tl.arange(0, NG)[None, None, :]
        e3 = e1[None, :, None]
        return e3 * N + n3, (n3 < N) & (e3 < E)

    @triton.jit
    def _bc_index(t1, L, N, N_OFF: tl.constexpr, NSP: tl.constexpr, NG: tl.constexpr):
        """n of one state part and the mask of a [BL, NSP, NG] tile of B or C (time t1)."""
        n3 = N_OFF + tl.arange(0, NSP)[None, :, None] * NG + tl.arange(0, NG)[None, None, :]
        return n3, (t1[:, None, None] < L) & (n3 < N)

    @triton.jit
    def _load_bc(base, s_n, t1, L, N, N_OFF: tl.constexpr, NSP: tl.constexpr, NG: tl.constexpr):
        n3, m3 = _bc_index(t1, L, N, N_OFF, NSP, NG)
        return tl.load(base + n3 * s_n + t1[:, None, None], mask=m3, other=0.0).to(tl.float32)

    @triton.jit
    def _load_et(base, s_e, t1, L, e1, E):
        """A [BL, BE] tile (time x channel) of a [E, L] slab, as fp32.

        Tiles are cast where they are loaded (and carried across loop iterations when
        prefetched): the per-(t, e) math on them then stays in the load's layout, one element
        per thread, instead of being redone in the lanes-along-N layout of the state tiles.
        """
        m2 = (t1[:, None] < L) & (e1[None, :] < E)
        return tl.load(base + e1[None, :] * s_e + t1[:, None], mask=m2, other=0.0).to(tl.float32)

    @triton.jit
    def _delta(dt_raw, bias, m2, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
        """delta after bias and softplus (0 outside the sequence: dA = 1, dBu = 0 there), and
        the softplus input."""
        dt = dt_raw.to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        dt_pre = dt
        if SOFTPLUS:
            dt = _softplus(dt)
        return tl.where(m2, dt, 0.0), dt_pre

    @triton.jit
    def _states(dt, dtu, Bp, A2p, hp, BL: tl.constexpr):
        """dA, dBu and the states h_t [BL, NSP, BE, NG] of one state part over a tile, from hp [NSP, BE, NG].

        The carried state is folded into the first step (b_0 = dA_0 h + dBu_0), so the scan's
        cumulative products of dA are never used and the compiler drops them: the in-thread
        scan is one FMA per step.
        """
        dA = tl.exp2(dt[:, None, :, None] * A2p[None, :, :, :])
        dBu = dtu[:, None, :, None] * Bp[:, :, None, :]
        l4 = tl.arange(0, BL)[:, None, None, None]
        b = tl.where(l4 == 0, dA * hp[None, :, :, :] + dBu, dBu)
        _a, hs = tl.associative_scan((dA, b), axis=0, combine_fn=_linear_combine)
        return dA, dBu, hs

    @triton.jit
    def _last(x, BL: tl.constexpr):
        """x at the last step of the tile: [BL, ...] -> [...] (the time axis is in-thread)."""
        l4 = tl.arange(0, BL)[:, None, None, None]
        return tl.sum(tl.where(l4 == BL - 1, x, 0.0), axis=0)

    @triton.jit
    def _first(x, BL: tl.constexpr):
        l4 = tl.arange(0, BL)[:, None, None, None]
        return tl.sum(tl.where(l4 == 0, x, 0.0), axis=0)

    @triton.jit
    def _sum_s(x):
        # [BL, NSP, BE, NG] -> [BL, BE, NG]: the in-thread part of a sum over N; the parts'
        # partial sums are added before the one reduction across the NG lanes (tl.sum(., 2))
        return tl.sum(x, axis=1)

    @triton.jit
    def _selective_scan_fwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, ckpt_ptr, last_ptr,
        E, N, L, n_ckpt,
        s_ub, s_ue, s_db, s_de, s_Bb, s_Bn, s_Cb, s_Cn, s_zb, s_ze, s_ob, s_oe,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        SAVE_CKPT: tl.constexpr, SAVE_LAST: tl.constexpr,
        BL: tl.constexpr, BE: tl.constexpr, NG: tl.constexpr, NSA: tl.constexpr, NSB: tl.constexpr,
        CKPT_TILES: tl.constexpr,
    ):
        # The state is split into parts a (NSA * NG entries) and b (NSB * NG, possibly none)
        # so that e.g. N = 24 runs as 16 + 8 with no padding. State-shaped loads and stores
        # are 3-D [NSP, BE, NG]: a 4-D one would impose its memory-coalesced layout (all 32
        # lanes along N) on the whole computation.
        pid_e = tl.program_id(0)
        pid_b = tl.program_id(1).to(tl.int64)
        e1 = pid_e * BE + tl.arange(0, BE)
        e_mask = e1 < E
        LOG2E: tl.constexpr = 1.4426950408889634
        offa, ma = _state_index(e1, E, N, 0, NSA, NG)
        A2a = tl.load(A_ptr + offa, mask=ma, other=0.0).to(tl.float32) * LOG2E
        ha = tl.zeros([NSA, BE, NG], dtype=tl.float32)
        if NSB > 0:
            offb, mb = _state_index(e1, E, N, NSA * NG, NSB, NG)
            A2b = tl.load(A_ptr + offb, mask=mb, other=0.0).to(tl.float32) * LOG2E
            hb = tl.zeros([NSB, BE, NG], dtype=tl.float32)
        bias = tl.zeros([BE], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + e1, mask=e_mask, other=0.0).to(tl.float32)
        Dv = tl.zeros([BE], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + e1, mask=e_mask, other=0.0).to(tl.float32)

        u_base = u_ptr + pid_b * s_ub
        dt_base = dt_ptr + pid_b * s_db
        B_base = B_ptr + pid_b * s_Bb
        C_base = C_ptr + pid_b * s_Cb
        z_base = z_ptr + pid_b * s_zb
        out_base = out_ptr + pid_b * s_ob
        ckpt_base = ckpt_ptr + pid_b * n_ckpt * E * N
        lanes_l = tl.arange(0, BL)

        # tile 0's inputs; inside the loop the next tile's loads are issued before this
        # tile's arithmetic, so their latency hides behind it
        t1 = lanes_l
        u_r = _load_et(u_base, s_ue, t1, L, e1, E)
        dt_r = _load_et(dt_base, s_de, t1, L, e1, E)
        Ba_r = _load_bc(B_base, s_Bn, t1, L, N, 0, NSA, NG)
        Ca_r = _load_bc(C_base, s_Cn, t1, L, N, 0, NSA, NG)
        if NSB > 0:
            Bb_r = _load_bc(B_base, s_Bn, t1, L, N, NSA * NG, NSB, NG)
            Cb_r = _load_bc(C_base, s_Cn, t1, L, N, NSA * NG, NSB, NG)
        if HAS_Z:
            z_r = _load_et(z_base, s_ze, t1, L, e1, E)
        n_tiles = tl.cdiv(L, BL)
        for it in range(0, n_tiles):
            if SAVE_CKPT:
                if it % CKPT_TILES == 0:
                    cbase = ckpt_base + (it // CKPT_TILES) * E * N
                    tl.store(cbase + offa, ha, mask=ma)
                    if NSB > 0:
                        tl.store(cbase + offb, hb, mask=mb)
            t1 = it * BL + lanes_l
            m2 = (t1[:, None] < L) & e_mask[None, :]
            u = u_r.to(tl.float32)
            dt, dt_pre = _delta(dt_r, bias, m2, HAS_BIAS, SOFTPLUS)
            Ba = Ba_r.to(tl.float32)
            Ca = Ca_r.to(tl.float32)
            if NSB > 0:
                Bb = Bb_r.to(tl.float32)
                Cb = Cb_r.to(tl.float32)
            if HAS_Z:
                z = z_r.to(tl.float32)
            # prefetch tile it + 1 (fully masked past the end)
            t2 = t1 + BL
            u_r = _load_et(u_base, s_ue, t2, L, e1, E)
            dt_r = _load_et(dt_base, s_de, t2, L, e1, E)
            Ba_r = _load_bc(B_base, s_Bn, t2, L, N, 0, NSA, NG)
            Ca_r = _load_bc(C_base, s_Cn, t2, L, N, 0, NSA, NG)
            if NSB > 0:
                Bb_r = _load_bc(B_base, s_Bn, t2, L, N, NSA * NG, NSB, NG)
                Cb_r = _load_bc(C_base, s_Cn, t2, L, N, NSA * NG, NSB, NG)
            if HAS_Z:
                z_r = _load_et(z_base, s_ze, t2, L, e1, E)

            dtu = dt * u
            dA, dBu, hs = _states(dt, dtu, Ba, A2a, ha, BL)
            y = _sum_s(hs * Ca[:, :, None, :])   # [BL, BE, NG]
            ha = _last(hs, BL)
            if NSB > 0:
                dA, dBu, hs = _states(dt, dtu, Bb, A2b, hb, BL)
                y += _sum_s(hs * Cb[:, :, None, :])
                hb = _last(hs, BL)
            y = tl.sum(y, axis=2)                # [BL, BE]
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                y = y * z * _sigmoid(z)
            tl.store(out_base + e1[None, :] * s_oe + t1[:, None], y.to(out_ptr.dtype.element_ty), mask=m2)
        if SAVE_LAST:
            lbase = last_ptr + pid_b * E * N
            tl.store(lbase + offa, ha, mask=ma)
            if NSB > 0:
                tl.store(lbase + offb, hb, mask=mb)

    @triton.jit
    def _bwd_part(dA, hs, X, Bp, Cp, A2p, Qp, gy, dt, dtu, BL: tl.constexpr):
        """Reverse-time work of one state part over a tile.

        G_t = gy_t C_t + dA_{t+1} G_{t+1} (+ the carry Qp = dA_{t0'} G_{t0'} of the next tile)
        runs as a forward scan over the time-flipped tile: the time axis is in-thread, so
        tl.flip is a register renaming, whereas reverse=True scans compile to shuffles.
        Returns the carry for the previous tile, the in-thread parts of sum_n G B and sum_n W A log2(e),
        sum_t W delta,
        and the per-program partial sums over channels of dB and dC, [BL, NSP, NG].
        """
        gy4 = gy[:, None, :, None]
        dCp = tl.sum(hs * gy4, axis=2)
        # the carry enters at the tile's last step: G_last = gy C + Qp (then P is unused and dropped)
        l4 = tl.arange(0, BL)[:, None, None, None]
        gC = gy4 * Cp[:, :, None, :]
        gC = tl.where(l4 == BL - 1, gC + Qp[None, :, :, :], gC)
        _f, _p, V = tl.associative_scan((tl.flip(dA, 0), tl.full(dA.shape, 1.0, tl.float32), tl.flip(gC, 0)),
                                        axis=0, combine_fn=_reverse_combine)
        G = tl.flip(V, 0)
        Qn = _first(dA * G, BL)
        W = G * X                                   # dL/d(delta A): G_t dA_t h_{t-1}
        r1 = _sum_s(G * Bp[:, :, None, :])
        r2 = _sum_s(W * A2p[None, :, :, :])
        dAp = tl.sum(W * dt[:, None, :, None], axis=0)
        dBp = tl.sum(G * dtu[:, None, :, None], axis=2)
        return Qn, r1, r2, dAp, dBp, dCp

    @triton.jit
    def _selective_scan_bwd_kernel(
        u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ckpt_ptr, scratch_ptr,
        du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
        E, N, L, n_ckpt,
        s_ub, s_ue, s_db, s_de, s_Bb, s_Bn, s_Cb, s_Cn, s_zb, s_ze, s_gb, s_ge,
        HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BL: tl.constexpr, BE: tl.constexpr, NG: tl.constexpr, NSA: tl.constexpr, NSB: tl.constexpr,
        CKPT_TILES: tl.constexpr,
    ):
        pid_e = tl.program_id(0)
        pid_b = tl.program_id(1).to(tl.int64)
        e1 = pid_e * BE + tl.arange(0, BE)
        e_mask = e1 < E
        LOG2E: tl.constexpr = 1.4426950408889634
        offa, ma = _state_index(e1, E, N, 0, NSA, NG)
        A2a = tl.load(A_ptr + offa, mask=ma, other=0.0).to(tl.float32) * LOG2E
        Qa = tl.zeros([NSA, BE, NG], dtype=tl.float32)      # dA_{t0} G_{t0} of the tile after
        dAa = tl.zeros([NSA, BE, NG], dtype=tl.float32)
        if NSB > 0:
            offb, mb = _state_index(e1, E, N, NSA * NG, NSB, NG)
            A2b = tl.load(A_ptr + offb, mask=mb, other=0.0).to(tl.float32) * LOG2E
            Qb = tl.zeros([NSB, BE, NG], dtype=tl.float32)
            dAb = tl.zeros([NSB, BE, NG], dtype=tl.float32)
        bias = tl.zeros([BE], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + e1, mask=e_mask, other=0.0).to(tl.float32)
        Dv = tl.zeros([BE], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + e1, mask=e_mask, other=0.0).to(tl.float32)
        dD_acc = tl.zeros([BE], dtype=tl.float32)
        dbias_acc = tl.zeros([BE], dtype=tl.float32)

        u_base = u_ptr + pid_b * s_ub
        dt_base = dt_ptr + pid_b * s_db
        B_base = B_ptr + pid_b * s_Bb
        C_base = C_ptr + pid_b * s_Cb
        z_base = z_ptr + pid_b * s_zb
        g_base = dout_ptr + pid_b * s_gb
        # gradient buffers are contiguous: du, ddt, dz [batch, E, L]; dB, dC [batch, N, L] fp32
        du_base = du_ptr + pid_b * E * L
        ddt_base = ddt_ptr + pid_b * E * L
        dz_base = dz_ptr + pid_b * E * L
        dB_base = dB_ptr + pid_b * N * L
        dC_base = dC_ptr + pid_b * N * L
        ckpt_base = ckpt_ptr + pid_b * n_ckpt * E * N
        # this program's scratch: the CKPT_TILES tile-start states of a chunk, dense
        SA: tl.constexpr = NSA * BE * NG
        SB: tl.constexpr = NSB * BE * NG
        sidx_a = (tl.arange(0, NSA)[:, None, None] * BE + tl.arange(0, BE)[None, :, None]) * NG \
            + tl.arange(0, NG)[None, None, :]
        if NSB > 0:
            sidx_b = SA + (tl.arange(0, NSB)[:, None, None] * BE + tl.arange(0, BE)[None, :, None]) * NG \
                + tl.arange(0, NG)[None, None, :]
        scratch_base = scratch_ptr + (pid_b * tl.num_programs(0) + pid_e) * (CKPT_TILES * (SA + SB))
        lanes_l = tl.arange(0, BL)

        n_tiles = tl.cdiv(L, BL)
        for cc in range(0, n_ckpt):
            c = n_ckpt - 1 - cc
            first = c * CKPT_TILES
            n_in = tl.minimum(n_tiles - first, CKPT_TILES)
            cbase = ckpt_base + c * E * N
            ha = tl.load(cbase + offa, mask=ma, other=0.0)
            if NSB > 0:
                hb = tl.load(cbase + offb, mask=mb, other=0.0)
            if CKPT_TILES > 1:
                # the tile-start states of this chunk into the scratch buffer
                tl.debug_barrier()
                # (each loop loads the next tile's inputs before this tile's arithmetic)
                t1 = first * BL + lanes_l
                u_n = _load_et(u_base, s_ue, t1, L, e1, E)
                dt_n = _load_et(dt_base, s_de, t1, L, e1, E)
                Ba_n = _load_bc(B_base, s_Bn, t1, L, N, 0, NSA, NG)
                if NSB > 0:
                    Bb_n = _load_bc(B_base, s_Bn, t1, L, N, NSA * NG, NSB, NG)
                for k in range(0, n_in):
                    sbase = scratch_base + k * (SA + SB)
                    tl.store(sbase + sidx_a, ha)
                    if NSB > 0:
                        tl.store(sbase + sidx_b, hb)
                    if k < n_in - 1:
                        m2 = (t1[:, None] < L) & e_mask[None, :]
                        u = u_n
                        dt, dt_pre = _delta(dt_n, bias, m2, HAS_BIAS, SOFTPLUS)
                        Ba = Ba_n
                        if NSB > 0:
                            Bb = Bb_n
                        t1 = t1 + BL
                        u_n = _load_et(u_base, s_ue, t1, L, e1, E)
                        dt_n = _load_et(dt_base, s_de, t1, L, e1, E)
                        Ba_n = _load_bc(B_base, s_Bn, t1, L, N, 0, NSA, NG)
                        if NSB > 0:
                            Bb_n = _load_bc(B_base, s_Bn, t1, L, N, NSA * NG, NSB, NG)
                        dtu = dt * u
                        dA, dBu, hs = _states(dt, dtu, Ba, A2a, ha, BL)
                        ha = _last(hs, BL)
                        if NSB > 0:
                            dA, dBu, hs = _states(dt, dtu, Bb, A2b, hb, BL)
                            hb = _last(hs, BL)
                tl.debug_barrier()
            t1 = (first + n_in - 1) * BL + lanes_l
            u_n = _load_et(u_base, s_ue, t1, L, e1, E)
            dt_n = _load_et(dt_base, s_de, t1, L, e1, E)
            g_n = _load_et(g_base, s_ge, t1, L, e1, E)
            Ba_n = _load_bc(B_base, s_Bn, t1, L, N, 0, NSA, NG)
            Ca_n = _load_bc(C_base, s_Cn, t1, L, N, 0, NSA, NG)
            if NSB > 0:
                Bb_n = _load_bc(B_base, s_Bn, t1, L, N, NSA * NG, NSB, NG)
                Cb_n = _load_bc(C_base, s_Cn, t1, L, N, NSA * NG, NSB, NG)
            if HAS_Z:
                z_n = _load_et(z_base, s_ze, t1, L, e1, E)
            for kk in range(0, n_in):
                k = n_in - 1 - kk
                if CKPT_TILES > 1:
                    sbase = scratch_base + k * (SA + SB)
                    ha = tl.load(sbase + sidx_a)
                    if NSB > 0:
                        hb = tl.load(sbase + sidx_b)
                t1 = (first + k) * BL + lanes_l
                te = t1[:, None]
                ee = e1[None, :]
                m2 = (te < L) & e_mask[None, :]
                u = u_n
                dt, dt_pre = _delta(dt_n, bias, m2, HAS_BIAS, SOFTPLUS)
                gout = g_n
                Ba = Ba_n
                Ca = Ca_n
                if NSB > 0:
                    Bb = Bb_n
                    Cb = Cb_n
                if HAS_Z:
                    z = z_n
                # prefetch the tile before (this chunk's first tile again at k = 0: cached, unused)
                t0 = (first + tl.maximum(k - 1, 0)) * BL + lanes_l
                u_n = _load_et(u_base, s_ue, t0, L, e1, E)
                dt_n = _load_et(dt_base, s_de, t0, L, e1, E)
                g_n = _load_et(g_base, s_ge, t0, L, e1, E)
                Ba_n = _load_bc(B_base, s_Bn, t0, L, N, 0, NSA, NG)
                Ca_n = _load_bc(C_base, s_Cn, t0, L, N, 0, NSA, NG)
                if NSB > 0:
                    Bb_n = _load_bc(B_base, s_Bn, t0, L, N, NSA * NG, NSB, NG)
                    Cb_n = _load_bc(C_base, s_Cn, t0, L, N, NSA * NG, NSB, NG)
                if HAS_Z:
                    z_n = _load_et(z_base, s_ze, t0, L, e1, E)
                dtu = dt * u
                # forward states of the tile, then X = h_t - dBu_t = dA_t h_{t-1}
                dAa_t, dBu, hsa = _states(dt, dtu, Ba, A2a, ha, BL)
                Xa = hsa - dBu
                if NSB > 0:
                    dAb_t, dBu, hsb = _states(dt, dtu, Bb, A2b, hb, BL)
                    Xb = hsb - dBu
                if HAS_Z:
                    y = _sum_s(hsa * Ca[:, :, None, :])
                    if NSB > 0:
                        y += _sum_s(hsb * Cb[:, :, None, :])
                    y = tl.sum(y, axis=2)
                    if HAS_D:
                        y += Dv[None, :] * u
                    sz = _sigmoid(z)
                    gy = gout * z * sz
                    dz = gout * y * sz * (1.0 + z * (1.0 - sz))
                    tl.store(dz_base + ee * L + te, dz.to(dz_ptr.dtype.element_ty), mask=m2)
                else:
                    gy = gout
                Qa, r1, r2, dAp, dBp, dCp = _bwd_part(dAa_t, hsa, Xa, Ba, Ca, A2a, Qa, gy, dt, dtu, BL)
                dAa += dAp
                n3, m3 = _bc_index(t1, L, N, 0, NSA, NG)
                tn = t1[:, None, None]
                tl.atomic_add(dB_base + n3 * L + tn, dBp, mask=m3, sem="relaxed")
                tl.atomic_add(dC_base + n3 * L + tn, dCp, mask=m3, sem="relaxed")
                if NSB > 0:
                    Qb, r1b, r2b, dAp, dBp, dCp = _bwd_part(dAb_t, hsb, Xb, Bb, Cb, A2b, Qb, gy, dt, dtu, BL)
                    r1 += r1b
                    r2 += r2b
                    dAb += dAp
                    n3, m3 = _bc_index(t1, L, N, NSA * NG, NSB, NG)
                    tl.atomic_add(dB_base + n3 * L + tn, dBp, mask=m3, sem="relaxed")
                    tl.atomic_add(dC_base + n3 * L + tn, dCp, mask=m3, sem="relaxed")
                r1 = tl.sum(r1, axis=2)
                r2 = tl.sum(r2, axis=2)
                du = r1 * dt
                if HAS_D:
                    du += gy * Dv[None, :]
                    dD_acc += tl.sum(gy * u, axis=0)
                ddt = r1 * u + r2 * (1.0 / LOG2E)
                if SOFTPLUS:
                    ddt = ddt * _sigmoid(dt_pre)
                ddt = tl.where(m2, ddt, 0.0)
                if HAS_BIAS:
                    dbias_acc += tl.sum(ddt, axis=0)
                tl.store(du_base + ee * L + te, du.to(du_ptr.dtype.element_ty), mask=m2)
                tl.store(ddt_base + ee * L + te, ddt.to(ddt_ptr.dtype.element_ty), mask=m2)
        dAbase = dA_ptr + pid_b * E * N
        tl.store(dAbase + offa, dAa, mask=ma)
        if NSB > 0:
            tl.store(dAbase + offb, dAb, mask=mb)
        if HAS_D:
            tl.store(dD_ptr + pid_b * E + e1, dD_acc, mask=e_mask)
        if HAS_BIAS:
            tl.store(dbias_ptr + pid_b * E + e1, dbias_acc, mask=e_mask)


# --------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------
def _pow2_floor(n: int) -> int:
    return 1 << (max(1, int(n)).bit_length() - 1)


def _kernel_config(N, chunk, split_n, backward, block_l=None, block_e=None, lanes_n=None, num_warps=None):
    NP = _next_pow2(N)
    NG = _next_pow2(lanes_n) if lanes_n else (min(NP, 8) if NP <= 32 else 32)
    NG = min(NG, 32)
    groups = -(-int(N) // NG)
    if split_n:
        NSA = _pow2_floor(groups)
        NSB = _next_pow2(groups - NSA) if groups > NSA else 0
    else:
        NSA, NSB = _next_pow2(groups), 0
    S = NSA + NSB                       # state entries per thread and channel
    num_warps = int(num_warps or (1 if backward else 4))
    # keep BL * S (registers per tile tensor and thread) at most 48 forward, 24 backward
    BL = _next_pow2(block_l) if block_l else min(8 if backward else 16, max(2, _pow2_floor((24 if backward else 48) // S)))
    BL = max(2, min(BL, chunk))
    # one channel per thread (lanes_e = 32 / NG per warp); tiny N (NG < 4) would mean very wide
    # programs whose [BL, BE] tiles crowd the registers, so those stay at 32 channels
    BE = _next_pow2(block_e or min(max(1, 32 // NG) * num_warps, 32 if NG < 4 else 128))
    return dict(BL=BL, BE=BE, NG=NG, NSA=NSA, NSB=NSB, CKPT_TILES=chunk // BL, num_warps=num_warps)


def scan_configs(N: int, chunk=None, split_n=True, fwd=None, bwd=None, **common):
    """(forward, backward) launch configurations for state size N.

    Per kernel: BL steps per tile; BE channels per program; N as NG lanes x (NSA + NSB)
    in-thread entries, split into two power-of-2 parts so that e.g. N = 24 runs as 16 + 8
    with no padding (split_n); CKPT_TILES tiles per saved state (chunk = BL * CKPT_TILES steps,
    a power of 2, shared by both kernels). `common` overrides (block_l, block_e, lanes_n,
    num_warps) apply to both kernels, the dicts `fwd` and `bwd` to one.
    """
    chunk = max(2, _next_pow2(chunk or DEFAULT_CHUNK))
    f = _kernel_config(N, chunk, split_n, False, **{**common, **(fwd or {})})
    b = _kernel_config(N, chunk, split_n, True, **{**common, **(bwd or {})})
    return f, b


def _narrow_for_small_grids(cfg, batch, E, device):
    """Fewer warps (and channels) per forward program when batch x channel blocks would leave
    most of the GPU idle, e.g. inference on one clip: aim at 2 programs per SM."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    cfg = dict(cfg)
    while cfg["num_warps"] > 1 and batch * -(-E // cfg["BE"]) < 2 * sms and cfg["BE"] > 1:
        cfg["num_warps"] //= 2
        cfg["BE"] //= 2
    return cfg


_KERNEL_KEYS = ("BL", "BE", "NG", "NSA", "NSB", "CKPT_TILES", "num_warps")


def _l_contiguous(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be [batch, E, L] of the same shape, got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    batch, E, L = u.shape
    if A.dim() != 2 or A.shape[0] != E or A.is_complex():
        raise ValueError(f"A must be real [E={E}, N], got {tuple(A.shape)} ({A.dtype})")
    N = A.shape[1]
    if B.dim() == 4 and B.shape[1] == 1:
        B = B[:, 0]
    if C.dim() == 4 and C.shape[1] == 1:
        C = C[:, 0]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, N, L):
            raise ValueError(f"{name} must be time-varying [batch={batch}, N={N}, L={L}], got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.numel() != E:
            raise ValueError(f"{name} must be [E={E}], got {tuple(t.shape)}")
    return B, C


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cfg, save_ckpt, save_last):
    batch, E, L = u.shape
    N = A.shape[1]
    dev = u.device
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    chunk_len = cfg["BL"] * cfg["CKPT_TILES"]
    n_ckpt = triton.cdiv(L, chunk_len)
    ckpt = torch.empty((batch, n_ckpt, E, N) if save_ckpt else (1,), device=dev, dtype=torch.float32)
    last = torch.empty((batch, E, N) if save_last else (1,), device=dev, dtype=torch.float32)
    dummy = out  # pointer for absent optional tensors (never read: the constexpr flag is off)
    zz = z if z is not None else u
    grid = (triton.cdiv(E, cfg["BE"]), batch)
    _selective_scan_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, zz, delta_bias if delta_bias is not None else dummy,
        out, ckpt, last,
        E, N, L, n_ckpt,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
        C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), out.stride(0), out.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        SAVE_CKPT=save_ckpt, SAVE_LAST=save_last,
        **{k: cfg[k] for k in _KERNEL_KEYS},
    )
    return out, (ckpt if save_ckpt else None), (last if save_last else None)


def _backward(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ckpt, cfg):
    batch, E, L = u.shape
    N = A.shape[1]
    dev = u.device
    dout = _l_contiguous(dout)
    f32 = torch.float32
    du = torch.empty((batch, E, L), device=dev, dtype=u.dtype)
    ddelta = torch.empty((batch, E, L), device=dev, dtype=delta.dtype)
    dz = torch.empty((batch, E, L), device=dev, dtype=z.dtype) if z is not None else du
    dA_part = torch.empty((batch, E, N), device=dev, dtype=f32)
    dB = torch.zeros((batch, N, L), device=dev, dtype=f32)
    dC = torch.zeros((batch, N, L), device=dev, dtype=f32)
    dD_part = torch.empty((batch, E), device=dev, dtype=f32) if D is not None else dA_part
    dbias_part = torch.empty((batch, E), device=dev, dtype=f32) if delta_bias is not None else dA_part
    n_eblk = triton.cdiv(E, cfg["BE"])
    state_len = (cfg["NSA"] + cfg["NSB"]) * cfg["BE"] * cfg["NG"]
    scratch_len = batch * n_eblk * cfg["CKPT_TILES"] * state_len if cfg["CKPT_TILES"] > 1 else 1
    scratch = torch.empty(scratch_len, device=dev, dtype=f32)
    n_ckpt = ckpt.shape[1]
    assert n_ckpt == triton.cdiv(L, cfg["BL"] * cfg["CKPT_TILES"]), "forward and backward chunks differ"
    zz = z if z is not None else u
    grid = (n_eblk, batch)
    _selective_scan_bwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else du, zz, delta_bias if delta_bias is not None else du,
        dout, ckpt, scratch,
        du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part,
        E, N, L, n_ckpt,
        u.stride(0), u.stride(1), delta.stride(0), delta.stride(1), B.stride(0), B.stride(1),
        C.stride(0), C.stride(1), zz.stride(0), zz.stride(1), dout.stride(0), dout.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
        **{k: cfg[k] for k in _KERNEL_KEYS},
    )
    dA = dA_part.sum(0)
    dD = dD_part.sum(0) if D is not None else None
    dbias = dbias_part.sum(0) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, (dz if z is not None else None), dbias


class _SelectiveScanTriton(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, cfgs):
        out, ckpt, last = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cfgs[0],
                                   save_ckpt=True, save_last=return_last_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        ctx.cfg = cfgs[1]
        if return_last_state:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *_):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias = _backward(dout, u, delta, A, B, C, D, z, delta_bias,
                                                          ctx.delta_softplus, ckpt, ctx.cfg)
        cast = lambda g, t: None if g is None else g.to(t.dtype)  # noqa: E731
        return (du, ddelta, cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), dz, cast(dbias, delta_bias),
                None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, *, chunk=None, config=None, **overrides):
    """mamba_ssm's `selective_scan_fn` in Triton: u, delta, z [batch, E, L]; A [E, N]; B, C [batch, N, L].

    fp32 accumulation whatever the input dtypes; the output has u's dtype, gradients their
    inputs' dtypes. `chunk` (steps between saved states, a power of 2), `config` (dict with
    "fwd" / "bwd" overrides) and `overrides` (block_l, block_e, lanes_n, num_warps, split_n)
    tune the launch; see `scan_configs`. The defaults are meant for GPUs.
    """
    if triton is None:
        raise RuntimeError(f"triton does not import ({_TRITON_ERROR})")
    if _interpreting():
        _fix_interpreter_for_numpy2()
    B, C = _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    u, delta, B, C = (_l_contiguous(t) for t in (u, delta, B, C))
    z = _l_contiguous(z) if z is not None else None
    A = A.contiguous()
    D = D.reshape(-1).contiguous() if D is not None else None
    delta_bias = delta_bias.reshape(-1).contiguous() if delta_bias is not None else None
    cfgs = scan_configs(A.shape[1], chunk=chunk, **(config or {}), **overrides)
    pinned = {"num_warps", "block_e"} & (set(overrides) | set((config or {}).get("fwd") or {}))
    if u.is_cuda and not pinned:
        cfgs = (_narrow_for_small_grids(cfgs[0], u.shape[0], u.shape[1], u.device), cfgs[1])
    if u.numel() == 0:  # nothing to scan (and nothing to launch)
        out = u * 0
        return (out, u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float32)) if return_last_state else out
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                          bool(return_last_state), cfgs)
    out, _, last = _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, cfgs[0],
                            save_ckpt=False, save_last=bool(return_last_state))
    return (out, last) if return_last_state else out
