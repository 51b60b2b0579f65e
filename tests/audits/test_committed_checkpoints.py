"""Audits of the committed checkpoints: what the leaderboards compare was trained alike.

These read files under results/ and hear_ssam/assets/, not the code's behaviour: they fail
when a committed model (or a table that names it) stops matching what the docs say of it.
Run them apart from the behaviour tests: `python -m pytest -m audit`.
"""
import json
from pathlib import Path

import pytest
from safetensors import safe_open

from hear_ssam.api import DEFAULT_CHECKPOINT
from hear_ssam.checkpoint import METADATA_KEY, split_pretraining
from pretrain.config import load_config

pytestmark = pytest.mark.audit

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "results" / "checkpoints"
CROPS_PER_STAGE = 64_000  # each CPU stage: 2,000 steps x 32 crops of 2 s
# What "trained alike" means: the provenance keys that must agree between compared files.
RECIPE_KEYS = ("corpus_sha256", "clips_seen", "steps", "global_batch", "objective", "masking",
               "mask_ratio", "lr", "lr_schedule", "length_weight_cap_s")


def file_config(path) -> dict:
    with safe_open(str(path), framework="pt") as f:  # the header only: no weights are read
        return json.loads(f.metadata()[METADATA_KEY])


def provenance(path) -> dict:
    return file_config(path)["provenance"]


def recipe(path, leave_out=()) -> dict:
    prov = provenance(path)
    return {k: prov[k] for k in RECIPE_KEYS if k not in leave_out}


def first_stage(preset: str) -> Path:
    return CHECKPOINTS / f"{preset.replace('-', '_')}_cpu.safetensors"


def test_the_main_jobs_pair_was_trained_alike():
    """The main job compares the bundled ssam-tiny with ssast-tiny's fourth stage: both saw four
    stages of the same recipe (256,000 crops of the same corpus)."""
    pair = {"ssam-tiny": DEFAULT_CHECKPOINT, "ssast-tiny": CHECKPOINTS / "ssast_tiny_cpu_stage4.safetensors"}
    recipes = {}
    for preset, path in pair.items():
        assert provenance(path)["preset"] == preset
        recipes[preset] = recipe(path)
    assert recipes["ssam-tiny"] == recipes["ssast-tiny"]
    assert recipes["ssam-tiny"]["clips_seen"] == 4 * CROPS_PER_STAGE


@pytest.mark.parametrize("path", [DEFAULT_CHECKPOINT, CHECKPOINTS / "ssast_tiny_cpu_stage4.safetensors"],
                         ids=["default", "ssast_tiny_cpu_stage4"])
def test_a_fourth_stage_continues_its_first_stages_recipe(path):
    prov = provenance(path)
    assert prov["init_from"]["clips_seen"] == 3 * CROPS_PER_STAGE
    assert prov["clips_seen_this_run"] == CROPS_PER_STAGE and prov["clips_seen"] == 4 * CROPS_PER_STAGE
    assert recipe(path, leave_out=("clips_seen",)) == recipe(first_stage(prov["preset"]), leave_out=("clips_seen",))


def test_the_first_stages_record_one_budget_and_recipe():
    """Each family's first stage (the files the families comparison starts from) saw 64,000
    crops of 2 s with one recipe; only the preset differs."""
    recipes = {}
    for preset in ("ssam-tiny", "ssast-tiny", "axlstm-tiny"):
        assert provenance(first_stage(preset))["preset"] == preset
        recipes[preset] = recipe(first_stage(preset))
    first, *rest = recipes.values()
    assert all(r == first for r in rest), recipes
    assert first["clips_seen"] == CROPS_PER_STAGE


def test_the_positioned_mask_token_row_differs_from_ssast_tiny_only_in_its_mask_tokens():
    """The families comparison's SSAST-recipe row: ssast-tiny's first stage, same recipe and
    budget, with the mask tokens given their patch's position."""
    own, framework = CHECKPOINTS / "ssast_tiny_cpu_posmask.safetensors", first_stage("ssast-tiny")
    assert provenance(own)["preset"] == "ssast-tiny" and recipe(own) == recipe(framework)
    position = lambda path: split_pretraining(file_config(path)).get("pretraining", {}).get(  # noqa: E731
        "mask_token_position", False)  # files older than the "pretraining" section: SSAM's default
    assert position(own) is True and position(framework) is False


def test_ssambas_first_stage_saw_the_same_hours_of_crops_from_the_same_corpus():
    """ssamba-tiny's crops are 10.24 s, the others' 2 s: its budget is counted in hours of
    crops, and its file ran its CPU config's recipe to the end."""
    ssamba, ssam = file_config(first_stage("ssamba-tiny")), file_config(first_stage("ssam-tiny"))
    config = load_config(ROOT / "pretrain" / "configs" / "ssamba_tiny_cpu.yaml")
    prov = ssamba["provenance"]
    assert prov["preset"] == config.preset == "ssamba-tiny"
    assert (prov["steps"], prov["global_batch"]) == (config.max_steps, config.global_batch)
    assert (prov["objective"], prov["masking"]) == (config.objective, config.masking)
    assert prov["corpus_sha256"] == ssam["provenance"]["corpus_sha256"]

    def crop_hours(cfg):
        seconds = cfg["encoder"]["crop_frames"] * cfg["frontend"]["hop_length"] / cfg["frontend"]["sample_rate"]
        return cfg["provenance"]["clips_seen"] * seconds / 3600

    assert crop_hours(ssamba) == pytest.approx(crop_hours(ssam), rel=0.03)  # 36.4 h vs 35.6 h


def test_every_committed_model_was_trained_on_the_committed_corpus():
    corpus = json.loads((ROOT / "results" / "pretrain_corpus" / "corpus.json").read_text())
    files = [DEFAULT_CHECKPOINT, *sorted(CHECKPOINTS.glob("*.safetensors"))]
    assert len(files) >= 6
    for path in files:
        assert provenance(path)["corpus_sha256"] == corpus["corpus_sha256"], path.name
