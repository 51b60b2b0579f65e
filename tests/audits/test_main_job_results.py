"""Audits of the committed leaderboards (results/mini/, results/families/,
results/finetune_mini/): they name the weights they ran, those are the committed files, and the
README and docs quote their tables as they stand."""
import csv
import hashlib
import re
from pathlib import Path

import pandas as pd

import pytest

pytestmark = pytest.mark.audit

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "results" / "mini"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def markdown_rows(text: str) -> dict:
    """{model: [cells]} of the first Markdown table in `text` whose header starts with Model."""
    rows, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            if header:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if cells[0] == "Model":
                header = cells
            continue
        if not set(cells[0]) <= set(":-"):
            rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_the_leaderboard_names_the_committed_weights_it_ran():
    with open(MINI / "models.csv", newline="") as f:
        models = {row["model"]: row for row in csv.DictReader(f)}
    assert set(models) == {"logmel", "ssam-tiny", "ssam-tiny-random", "ssast-tiny"}
    assert models["logmel"]["baseline"] == "True" and models["logmel"]["weights_sha256"] == ""
    bundled = ROOT / "hear_ssam" / "assets" / "ssam_tiny.safetensors"
    assert models["ssam-tiny"]["weights_sha256"] == sha256(bundled)
    ssast = ROOT / models["ssast-tiny"]["checkpoint"]
    assert ssast.is_file() and models["ssast-tiny"]["weights_sha256"] == sha256(ssast)
    # the random-init row is made afresh by the job (`python -m hear_ssam init ssam-tiny FILE --seed 0`)
    assert models["ssam-tiny-random"]["weights_sha256"]


def test_the_readme_quotes_the_leaderboard():
    board = markdown_rows((MINI / "leaderboard.md").read_text())
    readme = (ROOT / "README.md").read_text()
    quoted = markdown_rows(readme[readme.index("**The main job**"):])
    assert set(quoted) == set(board)
    for model, cells in quoted.items():
        for column, value in cells.items():
            if column != "Model":
                assert value == board[model][column], (model, column)


def test_the_model_card_quotes_the_leaderboard_means():
    means = {model: cells["mean"] for model, cells in markdown_rows((MINI / "leaderboard.md").read_text()).items()}
    card = (ROOT / "docs" / "model-card.md").read_text()
    section = card[card.index("**Mini suite**"):card.index("**Held-out real audio**")]
    quoted = dict(re.findall(r"^\| (.+?) \| ([0-9.]+) \|", section, re.M))
    names = {"ssam-tiny (this model)": "ssam-tiny", "ssast-tiny, same data and budget": "ssast-tiny",
             "log-mel baseline (mean + std)": "logmel (baseline)",
             "ssam-tiny at its seeded random initialisation": "ssam-tiny-random"}
    assert {names[k]: v for k, v in quoted.items()} == means


def test_the_readme_quotes_the_families_comparison():
    """The headline table's MLP cells are results/families/scores.csv's, rounded."""
    scores = pd.read_csv(ROOT / "results" / "families" / "scores.csv")
    readme = (ROOT / "README.md").read_text()
    quoted = markdown_rows(readme[readme.index("**The families compared**"):])
    assert {m.replace(" (baseline)", "") for m in quoted} == set(scores["model"])
    for r in scores.itertuples():
        name = f"{r.model} (baseline)" if r.model == "logmel" else r.model
        assert quoted[name][r.label].strip("*") == f"{r.mean:.3f} ± {r.ci95:.3f}", (r.model, r.label)


def test_the_finetuning_doc_quotes_its_leaderboards_and_their_weights_are_committed():
    """docs/finetuning.md's Measured table is results/finetune_mini's (ssamba-tiny's rows from its
    ssamba/ subfolder), and each fine-tuned row started from the file its frozen row probed."""
    doc = (ROOT / "docs" / "finetuning.md").read_text()
    quoted = markdown_rows(doc[doc.index("## Measured"):])
    board = {}
    for folder in (ROOT / "results" / "finetune_mini", ROOT / "results" / "finetune_mini" / "ssamba"):
        board.update(markdown_rows((folder / "leaderboard.md").read_text()))
        models = pd.read_csv(folder / "models.csv").set_index("model")
        for name, row in models.iterrows():
            assert sha256(ROOT / row.checkpoint) == row.weights_sha256, name
            assert row.finetuned == name.endswith("-finetuned"), name
            if row.finetuned:
                assert models.loc[name.removesuffix("-finetuned"), "weights_sha256"] == row.weights_sha256, name
    assert set(quoted) == set(board)
    for model, cells in quoted.items():
        for column, value in cells.items():
            if column != "Model":
                assert value.strip("*") == board[model][column].strip("*"), (model, column)
