"""The linear probe of a scene task: standardised logistic regression on the embeddings
heareval's embeddings runner wrote, scored as heareval scores its own probes.

    probe_scene_task(RUNS/NAME/embeddings/hear_ssam/TASK)  -> a result dict (see below)

What it reads (heareval's layout, `heareval.embeddings.task_embeddings.memmap_embeddings`), for
each split named in TASK/task_metadata.json:
    SPLIT.embedding-dimensions.json   [rows, dim]
    SPLIT.embeddings.npy              a raw float32 memmap of shape (rows, dim), no .npy header
    SPLIT.target-labels.pkl           per row, its list of labels (scene: one row per clip)
    labelvocabulary.csv, task_metadata.json

The protocol, per data split of heareval's `get_splits_from_metadata` (train/valid/test for a
trainvaltest bundle; for k folds, k splits: test = fold i, valid = fold i+1, train = the rest):
- features standardised with a StandardScaler fitted on the split's train rows;
- sklearn LogisticRegression (lbfgs, at most MAX_ITER iterations; multinomial for a multiclass
  task, one binary regression per label for a multilabel one) fitted on train for every C of
  C_GRID, a log grid; the C with the best primary score on the split's validation fold is kept
  (ties: the smaller C, the stronger regularisation), and that fit (on train only, as heareval
  trains its probes on train only) is scored on the test fold. Unlike heareval's grid search,
  which picks hyper-parameters on the first split only and reuses them for every fold, C is
  chosen per split on its own validation fold (equally cheap here, and no split's C has seen
  the rows it is tested on);
- scores: heareval's own score functions (`heareval.score.available_scores`) on the predicted
  class probabilities and the one-/multi-hot targets, the primary metric being the suite's
  (default: the bundle's first "evaluation" entry); the task score is the mean over splits,
  as heareval's `test_<metric>_mean`.

It is deterministic given the embeddings (lbfgs has no randomness), so its uncertainty is a
95 % percentile bootstrap interval over test clips: BOOTSTRAP_RESAMPLES resamples with a
seeded generator, each drawing every split's test rows with replacement (the same number of
rows), scoring it with the fitted model's predictions and averaging over splits as above.
Event tasks (frame embeddings, heareval's event post-processing) are not probed here: they
use heareval's own predictions runner with the linear grid `suites.MINI_LINEAR_GRID`.

The result dict (written as JSON by the families driver) holds: task, label, metric, score,
ci95_low, ci95_high, bootstrap_sd, resamples, bootstrap_seed, n_test (test rows over all
splits), C_grid, max_iter and, per split, its folds, the chosen C, the validation score of
every C, the test score, its test rows and any C that hit MAX_ITER without converging.
"""
from __future__ import annotations

import json
import logging
import math
import pickle
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("eval_suites.linear_probe")

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # inverse L2 strength on standardised features, by decades
MAX_ITER = 2000  # lbfgs iterations; a C that still does not converge is logged and recorded
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
RESULT = "linear-probe.json"  # the families driver's file name for one task's result


class _PlainDataUnpickler(pickle.Unpickler):
    """Reads pickles of plain data only (lists, tuples, dicts, str, numbers, numpy scalars):
    any other class or function a file names is refused, so a tampered labels file cannot run
    code (numpy's scalar and dtype constructors build a number from its bytes, nothing else)."""
    ALLOWED = {("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"a labels file may hold plain data only, not {module}.{name}")


class LinearProbeError(ValueError):
    """A bundle's embeddings cannot be probed (names the task, the problem and the fix)."""


def _load_split(emb_task: Path, split: str, label_to_idx: dict, nlabels: int):
    """One split's rows -> (X (rows, dim) float32, Y (rows, nlabels) multi-hot float32)."""
    files = [emb_task / f"{split}.{suffix}" for suffix in ("embedding-dimensions.json", "embeddings.npy",
                                                           "target-labels.pkl")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise LinearProbeError(
            f"{emb_task.name}: {', '.join(missing)} missing in {emb_task} (split {split!r} of its "
            f"task_metadata.json): compute the embeddings again (python -m eval_suites run), which rewrites them")
    rows, dim = json.loads(files[0].read_text())
    X = np.array(np.memmap(files[1], dtype=np.float32, mode="r", shape=(rows, dim)))
    with open(files[2], "rb") as f:  # written by heareval's embeddings runner: lists of labels
        labels = _PlainDataUnpickler(f).load()
    if len(labels) != rows:
        raise LinearProbeError(f"{emb_task.name}: {files[2].name} has {len(labels)} rows, {files[0].name} says "
                               f"{rows}: the embeddings are incomplete; compute them again")
    if not np.isfinite(X).all():
        raise LinearProbeError(f"{emb_task.name}: {files[1].name} holds NaN or inf values: the model's embeddings "
                               f"are not finite")
    Y = np.zeros((rows, nlabels), dtype=np.float32)
    for i, row in enumerate(labels):
        try:
            Y[i, [label_to_idx[str(label)] for label in row]] = 1.0
        except KeyError as e:
            raise LinearProbeError(f"{emb_task.name}: {split} row {i} has label {e.args[0]!r}, which is not in "
                                   f"labelvocabulary.csv") from None
    return X, Y


def _data_splits(emb_task: Path, metadata: dict) -> list:
    """heareval's data splits for this bundle, checked: every split has train, valid and test."""
    from heareval.predictions.task_predictions import get_splits_from_metadata
    splits = metadata.get("splits") or []
    if metadata.get("split_mode") == "trainvaltest" and "valid" not in splits:
        raise LinearProbeError(f"{emb_task.name}: no validation split (task_metadata.json splits {splits}); the "
                               f"linear probe chooses C on it: use a bundle with a valid split, or k >= 3 folds")
    if metadata.get("split_mode") in ("new_split_kfold", "presplit_kfold") and len(splits) < 3:
        raise LinearProbeError(f"{emb_task.name}: k-fold with {len(splits)} folds {splits} leaves no validation "
                               f"fold (heareval's rotation needs k >= 3: test, valid, train)")
    try:
        return get_splits_from_metadata(metadata)
    except AssertionError as e:
        raise LinearProbeError(f"{emb_task.name}: task_metadata.json: {e}") from None


def _fit(X: np.ndarray, Y: np.ndarray, C: float, multilabel: bool):
    """Standardise + logistic regression on train rows -> (model, converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    regression = LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER)
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(regression) if multilabel else regression)
    with warnings.catch_warnings(record=True) as caught:
        # Recorded, not printed: a label with no positive train row (one-vs-rest) is predicted
        # constant with a warning; a ConvergenceWarning is returned to the caller, who logs it.
        warnings.simplefilter("always")
        model.fit(X, Y if multilabel else Y.argmax(axis=1))
    return model, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def _probabilities(model, X: np.ndarray, nlabels: int, multilabel: bool) -> np.ndarray:
    """(rows, nlabels) class probabilities; a class absent from the train rows gets 0."""
    if multilabel:
        return model.predict_proba(X).astype(np.float64)
    out = np.zeros((len(X), nlabels))
    out[:, model[-1].classes_] = model.predict_proba(X)
    return out


def _score(score_fn, predictions: np.ndarray, targets: np.ndarray) -> float:
    value = score_fn(predictions, targets)
    return float(value[0][1] if isinstance(value, tuple) else value)


def probe_scene_task(emb_task: Path, metric: str | None = None, label: str | None = None,
                     c_grid=C_GRID, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The linear probe of one embedded scene task (the module docstring's protocol) -> result dict.

    emb_task: heareval's embeddings folder of the task (with .done.embeddings); metric: the
    primary score (a heareval score name; default the bundle's first "evaluation" entry);
    label: the leaderboard column it is recorded under (default the task_name).
    """
    import pandas as pd
    from heareval.score import available_scores, label_vocab_as_dict

    from .suites import LOWER_IS_BETTER
    emb_task = Path(emb_task)
    if not (emb_task / ".done.embeddings").exists():
        raise LinearProbeError(f"{emb_task.name}: no embeddings in {emb_task} (no .done.embeddings): run "
                               f"python -m eval_suites run for this model and task first")
    metadata = json.loads((emb_task / "task_metadata.json").read_text())
    if metadata.get("embedding_type") != "scene":
        raise LinearProbeError(f"{emb_task.name}: an {metadata.get('embedding_type')} task; the linear probe of an "
                               f"event task is heareval's runner with suites.MINI_LINEAR_GRID")
    metric = metric or metadata["evaluation"][0]
    if metric not in available_scores:
        raise LinearProbeError(f"{emb_task.name}: unknown score {metric!r} (heareval knows "
                               f"{', '.join(available_scores)})")
    vocabulary = pd.read_csv(emb_task / "labelvocabulary.csv")
    label_to_idx = label_vocab_as_dict(vocabulary, key="label", value="idx")
    nlabels = len(label_to_idx)
    score_fn = available_scores[metric](label_to_idx=label_to_idx)
    multilabel = metadata["prediction_type"] == "multilabel"
    better = min if metric in LOWER_IS_BETTER else max

    cache = {}

    def rows_of(folds):
        parts = [cache.setdefault(f, _load_split(emb_task, f, label_to_idx, nlabels)) for f in folds]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    splits, tests = [], []
    for split in _data_splits(emb_task, metadata):
        (X_train, Y_train), (X_valid, Y_valid), (X_test, Y_test) = (rows_of(split[k])
                                                                    for k in ("train", "valid", "test"))
        fits, valid_scores, not_converged = {}, {}, []
        for C in c_grid:
            fits[C], converged = _fit(X_train, Y_train, C, multilabel)
            valid_scores[C] = _score(score_fn, _probabilities(fits[C], X_valid, nlabels, multilabel), Y_valid)
            if not converged:
                not_converged.append(C)
                log.warning("%s (test %s): lbfgs did not converge in %d iterations at C=%g",
                            emb_task.name, "|".join(split["test"]), MAX_ITER, C)
        finite = {C: v for C, v in valid_scores.items() if not math.isnan(v)}
        best_value = better(finite.values()) if finite else float("nan")
        chosen = min(C for C in c_grid if valid_scores[C] == best_value) if finite else min(c_grid)
        predictions = _probabilities(fits[chosen], X_test, nlabels, multilabel)
        test_score = _score(score_fn, predictions, Y_test)
        tests.append((predictions, Y_test))
        splits.append({"train": split["train"], "valid": split["valid"], "test": split["test"], "C": chosen,
                       "valid_scores": {repr(C): v for C, v in valid_scores.items()}, "test_score": test_score,
                       "n_test": int(len(Y_test)), "not_converged": [repr(C) for C in not_converged]})
        log.info("%s (test %s): C=%g (validation %s %.4f), test %.4f", emb_task.name, "|".join(split["test"]),
                 chosen, metric, valid_scores[chosen], test_score)
    score = float(np.mean([s["test_score"] for s in splits]))
    draws = bootstrap(score_fn, tests, resamples, seed)
    low, high = (float(v) for v in np.nanpercentile(draws, [2.5, 97.5]))
    return {"task": emb_task.name, "label": label or str(metadata["task_name"]), "metric": metric,
            "score": score, "ci95_low": low, "ci95_high": high, "bootstrap_sd": float(np.nanstd(draws, ddof=1)),
            "resamples": resamples, "bootstrap_seed": seed, "n_test": int(sum(s["n_test"] for s in splits)),
            "C_grid": list(c_grid), "max_iter": MAX_ITER, "splits": splits}


def bootstrap(score_fn, tests, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples,) task scores over test rows drawn with replacement, split by split.

    tests: per split, (predictions (rows, labels), targets (rows, labels)); each resample
    draws every split's rows with replacement (as many as it has) and averages the splits'
    scores, as the task score averages them."""
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    with warnings.catch_warnings():
        # mAP / ROC of a resample where a rare class has no positive: sklearn warns, heareval gives nan
        warnings.simplefilter("ignore")
        for r in range(resamples):
            values = []
            for predictions, targets in tests:
                idx = rng.integers(0, len(targets), len(targets))
                values.append(_score(score_fn, predictions[idx], targets[idx]))
            draws[r] = np.mean(values)
    return draws
