import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def mamba_ref():
    import mamba_reference
    ref = mamba_reference.load()
    if ref is None:
        pytest.skip("mamba-ssm is not installed (scripts/setup.sh installs it)")
    return ref


@pytest.fixture(scope="session")
def mamba_cls():
    """mamba_ssm's own Mamba module where installed, else the tests' restatement of its maths."""
    import mamba_reference
    from official_reference import ReferenceMamba
    ref = mamba_reference.load()
    return ref.Mamba if ref is not None else ReferenceMamba


@pytest.fixture(scope="session")
def random_model():
    """The seeded random-init ssam-tiny that load_model() falls back to."""
    import hear_ssam
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        enc = hear_ssam.preset_encoder("ssam-tiny").eval()
    return hear_ssam.HearSSAM(enc)


def noise(n, seconds, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, int(round(seconds * 16000)), generator=g) * 2 - 1
