"""Embeddings pinned to the values the code computed at release 1.0.0's start, so that a
refactor cannot change what a model computes without a test saying so: the bundled default
(its HEAR runtime, both runtimes) and each family's seeded random initialisation (which pins
the order in which initialisation draws random numbers as well as the forward pass).

If a change is meant to alter these numbers (a bug fix in the maths), recompute them, say so
in CHANGELOG.md and in the commit message."""
import pytest
import torch

import hear_ssam
from hear_ssam import HearSSAM
from hear_ssam.presets import family_of_preset, preset_encoder

DEFAULT = {
    "timestamp_sums": [456.84040291917154, 456.0005563813429],
    "first_frames": [-0.3987319767475128, 0.8857539296150208, 0.4933016896247864, -2.201876640319824, -1.4014092683792114, -0.07779636979103088, -1.2446839809417725, -2.2900450229644775, -1.532367467880249, 0.7447847723960876, -0.7079244256019592, -3.1739304065704346],
    "scene_sums": [5.504099058092834, 5.493983314721845],
    "official_order": [-1.465246319770813, -0.2858901023864746, 0.06892509758472443, -1.8257635831832886, -1.5826441049575806, 1.2654329538345337, -0.8593445420265198, -1.123735785484314],
}

RANDOM_INIT = {  # seed 0, as `python -m hear_ssam init PRESET FILE --seed 0` makes them
    "ssam-tiny": {
        "param_sum": 377807.82959663786,
        "param_abs_sum": 582758.2101012436,
        "timestamp_abs_sums": [48813.88800149638, 48826.29850053255],
        "some_values": [-1.0349390506744385, 0.2835265100002289, -0.44965460896492004, -0.2195773869752884, -1.2919096946716309, -1.1199705600738525],
        "scene_abs_sums": [598.0304295805217, 597.4619228678057],
    },
    "ssast-tiny": {
        "param_sum": 26532.894298958257,
        "param_abs_sum": 194850.0839152288,
        "timestamp_abs_sums": [48652.961403521826, 48615.77755315312],
        "some_values": [-0.5152157545089722, 1.1194026470184326, -0.023953353986144066, 0.9067884087562561, -1.1079325675964355, 0.006605083122849464],
        "scene_abs_sums": [668.2508980970888, 665.3966300873435],
    },
    "axlstm-tiny": {
        "param_sum": 26959.84362393309,
        "param_abs_sum": 208846.6093104643,
        "timestamp_abs_sums": [48396.606691096844, 48514.826360752944],
        "some_values": [-1.1353240013122559, 0.2556092441082001, -1.4571479558944702, -0.770319402217865, -1.5999798774719238, -1.0108023881912231],
        "scene_abs_sums": [447.74244114151224, 448.68257077477756],
    },
    "ssamba-tiny": {
        "param_sum": 545972.2570794569,
        "param_abs_sum": 854355.5881822833,
        "timestamp_abs_sums": [74854.16346078411, 74808.55448148999],
        "some_values": [-1.4178245067596436, -1.3126355409622192, -0.9396933913230896, -0.946465015411377, 2.394760847091675, -1.0950614213943481],
        "scene_abs_sums": [1183.0371918662859, 1180.2788746808947],
    },
}


def _audio(n, samples, seed):
    return torch.rand(n, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_the_bundled_default_computes_what_it_did():
    audio = _audio(2, 52800, 123)  # 3.3 s
    model = hear_ssam.load_model()
    emb, _ = hear_ssam.get_timestamp_embeddings(audio, model)
    torch.testing.assert_close(emb.double().sum(dim=(1, 2)), torch.tensor(DEFAULT["timestamp_sums"],
                               dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(emb[0, :3, :4].flatten(), torch.tensor(DEFAULT["first_frames"]), rtol=1e-5, atol=1e-6)
    scene = hear_ssam.get_scene_embeddings(audio, model).double().sum(1)
    torch.testing.assert_close(scene, torch.tensor(DEFAULT["scene_sums"], dtype=torch.float64), rtol=1e-4, atol=1e-6)
    official = hear_ssam.load_model(runtime="official")
    emb, _ = hear_ssam.get_timestamp_embeddings(audio, official)
    assert emb.shape == (2, 83, 960)
    torch.testing.assert_close(emb[1, :2, :4].flatten(), torch.tensor(DEFAULT["official_order"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", sorted(RANDOM_INIT))
def test_each_familys_seeded_initialisation_and_forward_are_what_they_were(preset):
    want = RANDOM_INIT[preset]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = preset_encoder(preset).eval()
    state = encoder.state_dict()
    assert sum(v.double().sum().item() for v in state.values()) == pytest.approx(want["param_sum"], rel=1e-9)
    assert sum(v.double().abs().sum().item() for v in state.values()) == pytest.approx(want["param_abs_sum"], rel=1e-9)
    family = family_of_preset(preset)
    model = HearSSAM(encoder, frontend=family.frontend)  # runtime "hear": the family's scene pooling
    audio = _audio(2, 40000, 7)  # 2.5 s
    emb, _ = hear_ssam.get_timestamp_embeddings(audio, model)
    torch.testing.assert_close(emb.double().abs().sum(dim=(1, 2)),
                               torch.tensor(want["timestamp_abs_sums"], dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(emb[1, 3, :6], torch.tensor(want["some_values"]), rtol=1e-4, atol=1e-5)
    scene = hear_ssam.get_scene_embeddings(audio, model).double().abs().sum(1)
    torch.testing.assert_close(scene, torch.tensor(want["scene_abs_sums"], dtype=torch.float64), rtol=1e-4, atol=0)
