"""Families comparison, efficiency half: size, compute, CPU throughput and memory per model.

    .venv/bin/python tests/benchmarks/bench_families.py --out DIR --model NAME=CKPT [--model NAME=CKPT ...]
        [--rounds 3] [--skip-length] [--skip-pretrain] [--quick] [--seconds 2 5 10 30 60]

e.g. --model ssam-tiny=results/checkpoints/ssam_tiny_cpu.safetensors
     --model ssam-tiny-random=data/ckpt/ssam_tiny_random_init.safetensors
     --model ssast-tiny=results/checkpoints/ssast_tiny_cpu.safetensors ...

Each model is `hear_ssam.load_model(CKPT)`; its encoder is `model.encoder` (a model without one,
such as "logmel", is skipped with a log line). Rows that share an architecture (same
EncoderConfig, PretrainingOptions, frontend and runtime: a model and its random init) share
every measurement below, which is made once per architecture; every row is still listed.

DIR/efficiency.csv, one row per model:
- params: trainable encoder parameters used at inference: the pretraining heads (`pred`,
  `cpred`) and the mask token excluded, and so is a fixed (non-trainable) sin-cos position
  table; SSAMBA's learned positions are counted. params_total: every trainable parameter of
  the encoder module, heads and mask token included (what pretraining optimises).
- macs_per_token: multiply-accumulates of one forward (eval, batch 1) of one 2 s window,
  divided by the tokens the blocks see (1 + patches: 251 for 4x16 patches of 80 bins, 97 for
  SSAMBA's 16x16 of 128 bins), counted from the shapes: torch.utils.flop_counter.FlopCounterMode
  over the forward (matmuls, linears, einsums, convs; attention through SDPA's math backend
  during the count, since the flop counter does not see CPU flash attention; MACs = FLOPs / 2),
  plus what it cannot see, because those ops are replaced during the count by stubs that
  return zeros of the right shape and record their MACs (so no backend's own ops are counted
  twice, whichever runs):
    selective scan (SSAM; SSAMBA's two directions): 4 MACs per state element per inner
      channel per token, 4 * d_state * d_inner per token (h = exp(dt*A) * h + (dt*B) * x:
      the exp with its dt*A counted as 1, dA*h as 1, dB*x as 1; y = C.h as 1); the O(d_inner)
      per-token terms (softplus, the D skip, the SiLU(z) gate) are not counted;
    causal depthwise conv (Mamba, mLSTM; custom op on CPU): d_conv MACs per channel per token.
  The mLSTM cell is plain PyTorch (hear_ssam/ops/mlstm.py), so the flop counter sees its
  matmuls: at 2 s the parallel form's q k^T and C v, the full L x L products, 2 * L * E MACs
  per token; its elementwise gating (the L x L decay matrix) is not counted, nor are any
  family's norms, activations and residual adds. macs_per_token_per_block: the same count
  over the blocks only (`forward_blocks` from the embedded tokens), divided by depth and
  tokens. Earlier analysis: ssam-tiny ~430 k, ssast-tiny ~539 k per token per block.
- hear_audio_s_per_s: bench_scan.py's HEAR throughput: 4 clips of 10 s of uniform noise
  (seed 0) through `hear_ssam.get_scene_embeddings`, here under torch.inference_mode, one
  warm-up on one clip, then --rounds rounds, each timing --hear-repeats calls per model, the
  models taken in turn (round-robin) so that a change of machine load hits all alike; the best
  call counts: 40 audio s / its wall time (hear_best_call_s). hear_others_cpu_s and
  hear_others_cores: CPU seconds other processes used during that model's timed calls
  (bench_scan's `_busy_s`: /proc/stat minus our own), and that divided by the timed wall
  seconds (cores busy elsewhere; above ~0.05 the timings are inflated).
- pretrain_crops_per_s: one pretraining micro-step (forward + loss + backward, no optimiser
  step) of the family's recipe as pretrain/configs/FAMILY_tiny_cpu.yaml sets it (objective,
  masking, mask ratio, micro-batch 16, bf16 autocast where it says bf16), on random crops of
  the model's own length (2 s; SSAMBA 10.24 s and two passes, ssast_joint), in train mode, in
  one child process (its memory, 13.4 GB at the peak with SSAMBA, is returned when it ends), rounds
  interleaved as above after one warm-up step each; the best step (pretrain_best_step_s)
  counts: micro-batch / its seconds. pretrain_audio_s_per_s = crops/s * crop seconds;
  pretrain_crop_s, _micro_batch, _objective, _precision: what ran. pretrain_others_*: as
  hear_others_*.
- peak_mb_2s, ms_2s, peak_mb_60s, ms_60s: bench_length.py's own child (`--child PRESET S`, a
  fresh subprocess per point): one window of 2 s / 60 s, batch 1, no_grad, random init of the
  row's preset built for that window; peak extra RSS (ru_maxrss minus the RSS after building
  the model and input) of the first forward, and the best wall time of the following ones
  (started through a small trampoline process: see TRAMPOLINE for why). An architecture that
  is no preset gets none. length_others_cores: cores other processes used during those two
  points (bench_length records no load; its timings are the noisiest here).
- threads, scan_backend, conv_backend (the automatic CPU choices, "" where the block has no
  such op), cpu (/proc/cpuinfo model name), torch, date.
DIR/length.csv and DIR/length.png: bench_length.py's time and peak memory per window length
(--seconds) for one architecture per family (the first row of each), plotted by its `plot`,
with the cores other processes used during each point (others_cores).
DIR/efficiency.png: bars per architecture of HEAR throughput, pretraining throughput (audio
s/s), MACs per token, peak memory at 60 s. Printed at the end: each column against
ssast-tiny measured in the same run (the row named ssast-tiny, else the first row of that
preset), e.g. `hear throughput ssam-tiny / ssast-tiny = X.XXx`.

--quick (smoke test): 1 round, 4 clips of 2 s, 1 call per round, micro-batch 2, length points
2 and 5 s only (the 60 s columns left empty): about 1 min.
Run time with the defaults for the four tiny families (ssam, ssast, axlstm, ssamba) on 2 cores:
measured 19.5 min with other processes holding ~1.4 of the 2 cores all along (length sweep
7.5 min, HEAR 3.2 min, pretraining 8.4 min: SSAMBA's steps of 16 x 10.24 s crops took 69 s, its
warm-up 130 s, and the child peaked at 13.4 GB RSS); this process got ~0.55 of a core, so an
idle machine should take about a third of that, 6-7 min (--rounds 2 saves ~1.5 min of it).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # pretrain/ is not installed
sys.path.insert(0, str(HERE))  # bench_length, bench_scan
import bench_length  # noqa: E402  (its child and plot; no torch at import)
from bench_scan import _busy_s, _own_s  # noqa: E402

log = logging.getLogger("bench_families")
BASELINE = "ssast-tiny"
ANCHORS_K = {"ssam-tiny": 430, "ssast-tiny": 539}  # MACs per token per block at 2 s, earlier analysis
CSV_FIELDS = ["model", "checkpoint", "family", "preset", "depth", "params", "params_total", "tokens_2s",
              "macs_per_token", "macs_per_token_per_block", "hear_audio_s_per_s", "hear_best_call_s",
              "hear_others_cpu_s", "hear_others_cores", "pretrain_crops_per_s", "pretrain_audio_s_per_s",
              "pretrain_crop_s", "pretrain_micro_batch", "pretrain_objective", "pretrain_precision",
              "pretrain_best_step_s", "pretrain_others_cpu_s", "pretrain_others_cores", "peak_mb_2s", "ms_2s",
              "peak_mb_60s", "ms_60s", "length_others_cores", "rounds", "threads", "scan_backend", "conv_backend",
              "cpu", "torch", "date"]

try:
    from tqdm import tqdm
except ImportError:  # plain iteration
    def tqdm(it, **_):
        return it


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


class LoadMeter:
    """CPU seconds other processes used during the timed sections (bench_scan's measure)."""

    def __init__(self):
        self.others_s, self.wall_s = 0.0, 0.0

    def time(self, fn):
        b0, o0, t0 = _busy_s(), _own_s(), time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        b1, o1 = _busy_s(), _own_s()
        if b0 is not None and b1 is not None:
            self.others_s += max(0.0, (b1 - b0) - (o1 - o0))
        self.wall_s += dt
        return dt

    @property
    def cores(self):
        return self.others_s / self.wall_s if self.wall_s else float("nan")


# ------------------------------------------------------------------ models and architectures

@dataclasses.dataclass
class Arch:
    """One architecture (shared by the rows whose models have it) and its measurements."""
    key: str
    names: list
    ckpt: str
    model: object  # HearSSAM of the first row
    preset: str | None
    family: str
    res: dict = dataclasses.field(default_factory=dict)

    @property
    def label(self):
        return self.names[0]


def load_archs(specs):
    import hear_ssam
    from hear_ssam.frontend import FrontendConfig
    from hear_ssam.presets import PRESETS, family_of_config, preset_name
    archs, rows = {}, []
    for spec in specs:
        name, sep, ckpt = spec.partition("=")
        if not sep or not name or not ckpt:
            raise SystemExit(f"--model takes NAME=CKPT, got {spec!r}")
        model = hear_ssam.load_model(ckpt)
        enc = getattr(model, "encoder", None)
        if not isinstance(enc, hear_ssam.SpectrogramEncoder):
            log.info("%s (%s): no encoder (%s), skipped", name, ckpt, type(model).__name__)
            continue
        frontend = FrontendConfig.from_dict(model.config["frontend"])
        key = json.dumps([enc.cfg.to_dict(), enc.pretraining.to_dict(), frontend.to_dict(), model.runtime],
                         sort_keys=True, default=str)
        if key not in archs:
            fam = family_of_config(enc.cfg)
            # The preset whose architecture this is: what bench_length builds for the window points.
            # An encoder's inference does not read its pretraining options, so a row trained with
            # other options (ssast-tiny-posmask's positioned mask tokens) measures as its preset.
            arch = preset_name(enc.cfg, enc.pretraining) or next(
                (n for n, cfg in PRESETS.items() if cfg == enc.cfg), None)
            archs[key] = Arch(key, [], ckpt, model, arch, fam.name if fam else enc.cfg.block)
        archs[key].names.append(name)
        rows.append((name, ckpt, archs[key]))
        log.info("%s: %s, %s", name, archs[key].preset or "no preset", ckpt)
    return list(archs.values()), rows


def frame_ms(model) -> float:
    from hear_ssam.frontend import FrontendConfig
    return FrontendConfig.from_dict(model.config["frontend"]).frame_ms


def count_params(enc):
    total = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    heads = {"mask_token"} | {n for n, _ in enc.named_parameters() if n.startswith(("pred.", "cpred."))}
    used = sum(p.numel() for n, p in enc.named_parameters() if p.requires_grad and n not in heads)
    return used, total


def count_macs(arch, seconds=2.0):
    """(MACs per token, MACs per token per block, tokens) of one forward of one `seconds` window."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    import hear_ssam.modules.mamba as mamba_mod
    import hear_ssam.modules.mlstm as mlstm_mod
    from hear_ssam import SpectrogramEncoder
    enc0 = arch.model.encoder
    pt = enc0.cfg.patch_time
    frames = int(round(seconds * 1000 / frame_ms(arch.model) / pt)) * pt  # as bench_length builds a window
    enc = SpectrogramEncoder(dataclasses.replace(enc0.cfg, crop_frames=frames), enc0.pretraining).eval()
    spec = torch.zeros(1, 1, frames, enc.cfg.n_mels)
    extra = [0]

    def scan_stub(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend=None):
        batch, E, L = u.shape
        extra[0] += 4 * A.shape[1] * E * L * batch  # exp(dA), dA*h + dB*x (2), C.h
        return torch.zeros_like(u)

    def conv_stub(x, weight, bias=None, activation=None, backend=None):
        batch, E, L = x.shape
        extra[0] += weight.shape[-1] * E * L * batch
        return torch.zeros_like(x)

    def count(fn):
        extra[0] = 0
        with mock.patch.object(mamba_mod, "selective_scan", scan_stub), \
                mock.patch.object(mamba_mod, "causal_conv1d", conv_stub), \
                mock.patch.object(mlstm_mod, "causal_conv1d", conv_stub), \
                torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops() / 2 + extra[0]

    tokens = 1 + enc.cfg.num_patches
    total = count(lambda: enc(spec))
    with torch.no_grad():
        x = enc.embed(spec)
    blocks = count(lambda: enc.forward_blocks(x))
    return total / tokens, blocks / tokens / enc.cfg.depth, tokens


# ------------------------------------------------------------------ length (bench_length's child)

# Children are started through a small Python process: on Linux a process's ru_maxrss starts at
# the RSS of the process it was forked from (kept across exec), so a child forked straight from
# this one (torch and the models loaded, ~0.7 GB) would report that as its peak, and
# bench_length's "peak RSS minus RSS after building" would read ~200 MB for every small window.
# A child of the trampoline starts from the trampoline's ~10 MB instead.
TRAMPOLINE = [sys.executable, "-c", "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"]

def length_points(archs, seconds, quick):
    """{(preset, s)}: every --seconds point for the first architecture of each family, and the
    2 s and 60 s points (2 s only under --quick) of every architecture with a preset."""
    want, seen_family = [], set()
    for a in archs:
        if a.preset is None:
            log.info("%s: no preset, so no bench_length point (peak_mb_* and ms_* left empty)", a.label)
            continue
        pts = list(seconds) if a.family not in seen_family else []
        seen_family.add(a.family)
        pts += [2.0] + ([] if quick else [60.0])
        for s in pts:
            if (a.preset, float(s)) not in want:
                want.append((a.preset, float(s)))
    return want


def run_length(points, min_time):
    rows = []
    for preset, s in tqdm(points, desc="length", unit="window"):
        cmd = [sys.executable, bench_length.__file__, "--child", preset, str(s), "--device", "cpu",
               "--min-time", str(min_time)]
        meter, out = LoadMeter(), {}
        meter.time(lambda: out.update(r=subprocess.run(TRAMPOLINE + cmd, capture_output=True, text=True)))
        r = out["r"]
        if r.returncode:
            log.warning("length %s %g s failed: %s", preset, s, r.stderr.strip().splitlines()[-1:])
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row.update(others_cpu_s=meter.others_s, others_cores=meter.cores)
        rows.append(row)
        log.info("length %-12s %6g s %6d tokens %10.1f ms %8.1f MB (others used %.2f cores)", preset, s,
                 row["tokens"], row["ms"], row["peak_mb"], meter.cores)
    return rows


# ------------------------------------------------------------------ HEAR throughput (bench_scan's)

def hear_throughput(archs, rounds, repeats, seconds, n):
    import torch
    import hear_ssam
    torch.manual_seed(0)
    audio = torch.rand(n, int(seconds * 16000)) * 2 - 1  # bench_scan.throughput()'s clips
    for a in archs:
        if a.model.sample_rate != 16000:
            raise SystemExit(f"{a.label}: sample rate {a.model.sample_rate}, bench_scan's clips are 16 kHz")
        with torch.inference_mode():
            hear_ssam.get_scene_embeddings(audio[:1], a.model)  # warm-up (and the compiled ops' build)
    meters = {a.key: LoadMeter() for a in archs}
    times = {a.key: [] for a in archs}
    for _ in tqdm(range(rounds), desc="HEAR rounds", unit="round"):
        for a in archs:
            for _ in range(repeats):
                def call(model=a.model):
                    with torch.inference_mode():
                        hear_ssam.get_scene_embeddings(audio, model)
                times[a.key].append(meters[a.key].time(call))
    for a in archs:
        best = min(times[a.key])
        a.res.update(hear_audio_s_per_s=n * seconds / best, hear_best_call_s=best,
                     hear_others_cpu_s=meters[a.key].others_s, hear_others_cores=meters[a.key].cores)
        log.info("HEAR %-14s %8.1f audio s/s (best of %d calls of %d x %g s; others used %.2f cores)",
                 a.label, n * seconds / best, len(times[a.key]), n, seconds, meters[a.key].cores)


# ------------------------------------------------------------------ pretraining step (child process)

def pretrain_child(job):
    """Runs in its own process: job = {"archs": [[id, ckpt], ...], "rounds", "micro_batch" (None:
    the config's)}. Prints one JSON line {id: results}."""
    import torch
    import hear_ssam
    from hear_ssam.presets import family_of_config
    from pretrain.config import load_config
    from pretrain.objectives import MaskedSpectrogramModel
    from pretrain.train import choose_precision, seeded_masks
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pretrain child: %(message)s", stream=sys.stderr)
    runs = []
    for key, ckpt in job["archs"]:
        enc, config = hear_ssam.load_checkpoint(ckpt)
        fam = family_of_config(enc.cfg)
        path = ROOT / "pretrain" / "configs" / f"{fam.name if fam else 'ssam'}_tiny_cpu.yaml"
        cfg = load_config(path)
        mb = job["micro_batch"] or cfg.micro_batch
        prec = choose_precision(cfg, cuda=False)
        model = MaskedSpectrogramModel(enc.train(), cfg.objective)
        torch.manual_seed(0)
        spec = torch.randn(mb, 1, enc.cfg.crop_frames, enc.cfg.n_mels)
        mask = seeded_masks(cfg, enc, mb, 0, 0, 0, "cpu")
        if enc.pretraining.drop_path_rate:
            enc.set_drop_path_generator(torch.Generator().manual_seed(0))

        def step(model=model, spec=spec, mask=mask, prec=prec):
            with torch.autocast("cpu", dtype=prec.dtype, enabled=prec.autocast):
                loss, _ = model(spec, mask)
            loss.backward()
            model.zero_grad(set_to_none=True)

        crop_s = enc.cfg.crop_frames * hear_ssam.FrontendConfig.from_dict(config["frontend"]).frame_ms / 1000
        log.info("%s: %s, %s masking %.3g, micro-batch %d of %g s crops, %s", path.name, cfg.objective,
                 cfg.masking, cfg.mask_ratio, mb, crop_s, prec.ran)
        t0 = time.perf_counter()
        step()  # warm-up
        log.info("%s: warm-up step %.1f s", path.name, time.perf_counter() - t0)
        runs.append(dict(key=key, step=step, meter=LoadMeter(), times=[], mb=mb, crop_s=crop_s,
                         objective=cfg.objective, precision=prec.ran))
    for _ in tqdm(range(job["rounds"]), desc="pretrain rounds", unit="round", file=sys.stderr):
        for r in runs:
            r["times"].append(r["meter"].time(r["step"]))
    out = {}
    for r in runs:
        best = min(r["times"])
        out[r["key"]] = dict(pretrain_crops_per_s=r["mb"] / best, pretrain_audio_s_per_s=r["mb"] / best * r["crop_s"],
                             pretrain_crop_s=r["crop_s"], pretrain_micro_batch=r["mb"],
                             pretrain_objective=r["objective"], pretrain_precision=r["precision"],
                             pretrain_best_step_s=best, pretrain_others_cpu_s=r["meter"].others_s,
                             pretrain_others_cores=r["meter"].cores)
    out["_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def pretrain_throughput(archs, rounds, micro_batch):
    job = {"archs": [[str(i), a.ckpt] for i, a in enumerate(archs)], "rounds": rounds, "micro_batch": micro_batch}
    r = subprocess.run(TRAMPOLINE + [sys.executable, __file__, "--child-pretrain", json.dumps(job)],
                       stdout=subprocess.PIPE, text=True)  # its log and progress go to our stderr
    if r.returncode:
        log.warning("pretraining child failed (exit %d; killed for memory?): pretrain_* left empty", r.returncode)
        return
    res = json.loads(r.stdout.strip().splitlines()[-1])
    log.info("pretraining child: peak RSS %.0f MB", res.pop("_peak_rss_mb"))
    for i, a in enumerate(archs):
        a.res.update(res.get(str(i), {}))
        if str(i) in res:
            log.info("pretrain %-14s %8.2f crops/s = %7.1f audio s/s (best step %.2f s; others used %.2f cores)",
                     a.label, a.res["pretrain_crops_per_s"], a.res["pretrain_audio_s_per_s"],
                     a.res["pretrain_best_step_s"], a.res["pretrain_others_cores"])


# ------------------------------------------------------------------ outputs

def _fmt(v):
    if isinstance(v, float):
        return "" if v != v else f"{v:.6g}"
    return "" if v is None else v


def plot_efficiency(archs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("hear_audio_s_per_s", "HEAR throughput (audio s / s)"),
              ("pretrain_audio_s_per_s", "pretraining throughput (audio s / s)"),
              ("macs_per_token", "k MACs per token, 2 s window"),
              ("peak_mb_60s", "peak extra memory, 60 s window (MB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    labels = [a.label for a in archs]
    for ax, (col, title) in zip(axes, panels):
        vals = [a.res.get(col) for a in archs]
        vals = [float("nan") if v is None else v / (1e3 if col == "macs_per_token" else 1) for v in vals]
        ax.bar(range(len(archs)), vals, color=[f"C{i}" for i in range(len(archs))])
        if all(v != v for v in vals):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks(range(len(archs)), labels, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("hear_ssam families: efficiency on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_tables(rows):
    print(f"\n{'model':<20}{'params':>9}{'MACs/tok':>10}{'/block':>9}{'HEAR s/s':>10}{'crops/s':>9}"
          f"{'PT s/s':>8}{'MB 2s':>8}{'MB 60s':>8}{'ms 2s':>8}{'ms 60s':>9}")
    num = lambda r, k, f: f"{r[k]:{f}}" if isinstance(r.get(k), (int, float)) else f"{'-':>{f.split('.')[0]}}"  # noqa
    for r in rows:
        print(f"{r['model']:<20}{r['params'] / 1e6:8.2f}M{r['macs_per_token'] / 1e3:9.0f}k"
              f"{r['macs_per_token_per_block'] / 1e3:8.0f}k{num(r, 'hear_audio_s_per_s', '10.1f')}"
              f"{num(r, 'pretrain_crops_per_s', '9.2f')}{num(r, 'pretrain_audio_s_per_s', '8.1f')}"
              f"{num(r, 'peak_mb_2s', '8.1f')}{num(r, 'peak_mb_60s', '8.1f')}{num(r, 'ms_2s', '8.1f')}"
              f"{num(r, 'ms_60s', '9.1f')}")
    print("\nMACs per token per block at 2 s vs the earlier analysis:")
    for r in rows:
        anchor = ANCHORS_K.get(r["preset"])
        note = f"   (anchor {anchor} k: {r['macs_per_token_per_block'] / 1e3 / anchor:.3f}x)" if anchor else ""
        print(f"  {r['model']:<20}{r['macs_per_token_per_block'] / 1e3:8.1f} k x {r['depth']} blocks, "
              f"{r['macs_per_token'] / 1e3:8.1f} k per token in all, {r['tokens_2s']} tokens{note}")
    base = next((r for r in rows if r["model"] == BASELINE), None) or \
        next((r for r in rows if r["preset"] == BASELINE), None)
    if base is None:
        print(f"\n(no {BASELINE} row: no ratios)")
        return
    print(f"\nagainst {base['model']} measured in the same run (value / its value: above 1 is faster for "
          "throughputs, costlier for MACs, memory and time):")
    for col, what in (("hear_audio_s_per_s", "hear throughput"), ("pretrain_audio_s_per_s", "pretrain throughput"),
                      ("pretrain_crops_per_s", "pretrain crops/s"), ("macs_per_token", "MACs per token"),
                      ("peak_mb_60s", "peak memory 60 s"), ("ms_60s", "time 60 s"),
                      ("peak_mb_2s", "peak memory 2 s"), ("ms_2s", "time 2 s")):
        b = base.get(col)
        if not isinstance(b, (int, float)) or not b:
            continue
        for r in rows:
            if r is not base and isinstance(r.get(col), (int, float)):
                print(f"  {what} {r['model']} / {base['model']} = {r[col] / b:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--model", action="append", default=[], metavar="NAME=CKPT")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the HEAR and pretraining timings")
    p.add_argument("--hear-repeats", type=int, default=2, help="timed HEAR calls per model per round")
    p.add_argument("--seconds", nargs="+", type=float, default=[2, 5, 10, 30, 60], help="length sweep windows")
    p.add_argument("--length-min-time", type=float, default=0.5, help="bench_length's --min-time per point")
    p.add_argument("--skip-length", action="store_true", help="no length sweep (the 2 s / 60 s points still run)")
    p.add_argument("--skip-pretrain", action="store_true")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 round, short clips, micro-batch 2")
    p.add_argument("--child-pretrain", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child_pretrain:
        return pretrain_child(json.loads(a.child_pretrain))
    if not a.out or not a.model:
        p.error("--out and at least one --model are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    wall0 = time.perf_counter()
    import torch
    from hear_ssam.ops import resolve_backend
    from hear_ssam.ops.causal_conv1d import resolve_backend as resolve_conv
    rounds = 1 if a.quick else a.rounds
    hear_seconds, hear_n = (2.0, 4) if a.quick else (10.0, 4)
    seconds = [2.0, 5.0] if a.quick else a.seconds
    min_time = 0.05 if a.quick else a.length_min_time
    a.out.mkdir(parents=True, exist_ok=True)
    log.info("torch %s, %d threads, %s%s", torch.__version__, torch.get_num_threads(), _cpu_name(),
             ", --quick" if a.quick else "")

    archs, rows_in = load_archs(a.model)
    if not archs:
        raise SystemExit("no model with an encoder")
    for arch in archs:
        enc = arch.model.encoder
        arch.res["params"], arch.res["params_total"] = count_params(enc)
        mt, mb, tokens = count_macs(arch)
        arch.res.update(macs_per_token=round(mt), macs_per_token_per_block=round(mb), tokens_2s=tokens)
        log.info("%-14s %.3fM params (%.3fM with heads), %.1f k MACs/token, %.1f k per block (%d tokens at 2 s)",
                 arch.label, arch.res["params"] / 1e6, arch.res["params_total"] / 1e6, mt / 1e3, mb / 1e3, tokens)

    points = length_points(archs, [] if a.skip_length else seconds, a.quick)
    log.info("length: %d bench_length points in fresh subprocesses", len(points))
    length_rows = run_length(points, min_time)
    by_point = {(r["preset"], float(r["seconds"])): r for r in length_rows}
    for arch in archs:
        others = []
        for s, tag in ((2.0, "2s"), (60.0, "60s")):
            r = by_point.get((arch.preset, s))
            if r:
                arch.res[f"peak_mb_{tag}"], arch.res[f"ms_{tag}"] = r["peak_mb"], r["ms"]
                others.append(r["others_cores"])
        if others:
            arch.res["length_others_cores"] = sum(others) / len(others)
    if not a.skip_length:
        firsts = {}
        for arch in archs:  # one architecture per family: its first row's
            if arch.preset:
                firsts.setdefault(arch.family, arch.preset)
        sweep = [r for r in length_rows if r["preset"] in firsts.values() and float(r["seconds"]) in seconds]
        scans = {x.preset: x.model.encoder.cfg.block in ("mamba", "bimamba") for x in archs}
        for r in sweep:  # bench_length names the scan of "mamba" blocks only; SSAMBA's "bimamba" scans too
            r["scan"] = r["scan"] or (resolve_backend("cpu") if scans.get(r["preset"]) else "")
        with open(a.out / "length.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["preset", "seconds", "tokens", "ms", "peak_mb", "device", "scan", "threads",
                                   "others_cores"], extrasaction="ignore")
            w.writeheader()
            w.writerows({**r, "ms": f"{r['ms']:.2f}", "peak_mb": f"{r['peak_mb']:.1f}",
                         "others_cores": f"{r['others_cores']:.2f}"} for r in sweep)
        bench_length.plot(sweep, a.out / "length.png", "cpu")
        log.info("wrote %s and length.png", a.out / "length.csv")

    log.info("HEAR throughput: %d rounds x %d calls of %d x %g s clips per model, interleaved",
             rounds, a.hear_repeats, hear_n, hear_seconds)
    hear_throughput(archs, rounds, 1 if a.quick else a.hear_repeats, hear_seconds, hear_n)
    if not a.skip_pretrain:
        log.info("pretraining steps: %d interleaved rounds in a child process", rounds)
        pretrain_throughput(archs, rounds, 2 if a.quick else None)

    common = dict(rounds=rounds, threads=torch.get_num_threads(), cpu=_cpu_name(), torch=torch.__version__,
                  date=datetime.datetime.now().isoformat(timespec="seconds"))
    rows = []
    for name, ckpt, arch in rows_in:
        block = arch.model.encoder.cfg.block
        rows.append({**common, **arch.res, "model": name, "checkpoint": ckpt, "family": arch.family,
                     "preset": arch.preset or "", "depth": arch.model.encoder.cfg.depth,
                     "scan_backend": resolve_backend("cpu") if block in ("mamba", "bimamba") else "",
                     "conv_backend": resolve_conv("cpu") if block in ("mamba", "bimamba", "mlstm") else ""})
    with open(a.out / "efficiency.csv", "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows({k: _fmt(r.get(k)) for k in CSV_FIELDS} for r in rows)
    plot_efficiency(archs, a.out / "efficiency.png")
    print_tables(rows)
    print(f"\nwrote {a.out / 'efficiency.csv'}, efficiency.png{'' if a.skip_length else ', length.csv, length.png'} "
          f"in {time.perf_counter() - wall0:.0f} s")


if __name__ == "__main__":
    main()
