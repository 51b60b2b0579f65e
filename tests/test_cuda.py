"""The four families on a CUDA device against the same weights on the CPU.

Skipped without a GPU (CI has none); `tests/benchmarks/gpu_check.sh` runs this file, with
the Triton scan tests and the pretraining tests (which train on CUDA when it is there), on
a lent GPU machine. On CUDA the scan dispatches to `triton` (or mamba_ssm's kernel where it
imports), the causal convolution to PyTorch's conv1d (cuDNN), attention to PyTorch's fused
kernels: every path a user's GPU takes. TF32 is switched off for the parity checks so
that fp32 is compared with fp32; the autocast precisions are measured separately.
"""
import warnings

import pytest
import torch

import hear_ssam
from hear_ssam.ops.selective_scan import resolve_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FAMILIES = ["ssam-tiny", "ssast-tiny", "axlstm-tiny", "ssamba-tiny"]


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def encoder(preset, seed=0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hear_ssam.preset_encoder(preset)


def test_cuda_dispatch_picks_a_gpu_scan():
    assert resolve_backend("cuda") in ("cuda", "triton")


@pytest.mark.parametrize("preset", FAMILIES)
def test_encoder_forward_and_gradients_match_the_cpu(preset):
    """Masked pretraining forward + backward: tokens and every parameter's gradient."""
    cpu = encoder(preset).train()
    gpu = encoder(preset).train().cuda()
    if cpu.pretraining.drop_path_rate:  # the same stochastic-depth draws on both devices
        cpu.set_drop_path_generator(torch.Generator().manual_seed(1))
        gpu.set_drop_path_generator(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    spec = torch.randn(2, 1, cpu.cfg.crop_frames, cpu.cfg.n_mels, generator=g)
    mask = torch.rand(2, cpu.cfg.num_patches, generator=g) < 0.5
    outs = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        out = model.reconstruct(spec.to(device), mask.to(device))
        out.square().mean().backward()
        outs.append(out.detach().cpu())
    assert outs[1].shape == outs[0].shape
    assert rel(outs[1], outs[0]) < 1e-4, rel(outs[1], outs[0])
    grads = {n: p.grad for n, p in cpu.named_parameters() if p.grad is not None}
    assert grads, "no gradients on the CPU"
    for name, p in gpu.named_parameters():
        if name in grads:
            assert p.grad is not None, name
            assert rel(p.grad.cpu(), grads[name]) < 1e-3, (name, rel(p.grad.cpu(), grads[name]))


@pytest.mark.parametrize("preset", FAMILIES)
def test_hear_embeddings_on_cuda_match_the_cpu(preset):
    """The HEAR API with the model and audio on the GPU: same timestamps, same embeddings,
    and fp16 / bf16 autocast within a stated distance of fp32."""
    enc = encoder(preset).eval()
    g = torch.Generator().manual_seed(3)
    audio = torch.rand(2, 16000 * 5, generator=g) * 2 - 1  # 5 s: several windows of every family
    cpu_model = hear_ssam.HearSSAM(enc)
    emb_cpu, ts_cpu = hear_ssam.get_timestamp_embeddings(audio, cpu_model)
    gpu_model = hear_ssam.HearSSAM(encoder(preset).eval()).cuda()
    emb, ts = hear_ssam.get_timestamp_embeddings(audio.cuda(), gpu_model)
    assert emb.device.type == "cuda" and emb.dtype == torch.float32
    torch.testing.assert_close(ts.cpu(), ts_cpu)
    assert rel(emb.cpu(), emb_cpu) < 1e-4, rel(emb.cpu(), emb_cpu)
    scene = hear_ssam.get_scene_embeddings(audio.cuda(), gpu_model)
    assert scene.shape == (2, gpu_model.scene_embedding_size) and scene.device.type == "cuda"
    for precision in ("fp16", "bf16"):
        gpu_model.precision = precision
        low, _ = hear_ssam.get_timestamp_embeddings(audio.cuda(), gpu_model)
        assert low.dtype == torch.float32 and torch.isfinite(low).all(), precision
        print(f"{preset} {precision}: relative L2 to fp32 {rel(low.cpu(), emb_cpu):.5f}")
        assert rel(low.cpu(), emb_cpu) < 2e-2, (precision, rel(low.cpu(), emb_cpu))
