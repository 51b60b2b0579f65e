"""eval_suites.linear_probe on synthetic embeddings in heareval's layout: separable classes
score near 1, random labels near chance, C is chosen on validation (never on test), the
bootstrap interval holds the score and is seeded, broken bundles are named."""
import json
import pickle

import numpy as np
import pytest

from eval_suites.linear_probe import C_GRID, LinearProbeError, probe_scene_task

FOLDS = ["fold00", "fold01", "fold02", "fold03"]


def write_embeddings(task, splits: dict, vocab, split_mode="new_split_kfold", metric="top1_acc",
                     prediction_type="multiclass"):
    """heareval's embeddings layout for a scene task: per split SPLIT.embedding-dimensions.json,
    SPLIT.embeddings.npy (a raw float32 memmap), SPLIT.target-labels.pkl; splits: {name: (X, labels)},
    a label being one label or (multilabel) a list of them."""
    task.mkdir(parents=True)
    for split, (X, labels) in splits.items():
        X = np.asarray(X, dtype=np.float32)
        (task / f"{split}.embedding-dimensions.json").write_text(json.dumps(list(X.shape)))
        memmap = np.memmap(task / f"{split}.embeddings.npy", dtype=np.float32, mode="w+", shape=X.shape)
        memmap[:] = X
        memmap.flush()
        with open(task / f"{split}.target-labels.pkl", "wb") as f:
            pickle.dump([label if isinstance(label, list) else [label] for label in labels], f)
    (task / "labelvocabulary.csv").write_text("idx,label\n" + "".join(f"{i},{v}\n" for i, v in enumerate(vocab)))
    (task / "task_metadata.json").write_text(json.dumps({
        "task_name": task.name.split("-")[0], "embedding_type": "scene", "prediction_type": prediction_type,
        "split_mode": split_mode, "splits": list(splits), "evaluation": [metric]}))
    (task / ".done.embeddings").touch()
    return task


def blobs(rng, n, classes, dim=12, spread=6.0, separable=True):
    """n rows of `dim` features; class means `spread` sds apart (or labels unrelated to the rows)."""
    labels = rng.integers(0, len(classes), n)
    X = rng.standard_normal((n, dim))
    if separable:
        X[np.arange(n), labels] += spread
    else:
        labels = rng.permutation(labels)
    return X, [classes[i] for i in labels]


def kfold_task(tmp_path, separable=True, n=40, classes=("a", "b", "c", "d"), seed=0):
    rng = np.random.default_rng(seed)
    return write_embeddings(tmp_path / "blobs-v1.0-full",
                            {f: blobs(rng, n, classes, separable=separable) for f in FOLDS}, classes)


def test_separable_classes_score_near_one_over_hearevals_folds(tmp_path):
    r = probe_scene_task(kfold_task(tmp_path), resamples=200)
    assert r["score"] > 0.97
    # heareval's rotation: each fold tested once, validated on the next, trained on the rest
    assert [s["test"] for s in r["splits"]] == [[f] for f in FOLDS]
    assert [s["valid"] for s in r["splits"]] == [["fold01"], ["fold02"], ["fold03"], ["fold00"]]
    assert r["splits"][0]["train"] == ["fold02", "fold03"]
    assert r["score"] == pytest.approx(np.mean([s["test_score"] for s in r["splits"]]))
    assert r["n_test"] == 4 * 40 and r["C_grid"] == list(C_GRID) and r["metric"] == "top1_acc"


def test_multilabel_tasks_get_one_regression_per_label_and_their_metric(tmp_path):
    rng = np.random.default_rng(4)
    vocab = ("x", "y", "z")

    def rows(n):
        X = rng.standard_normal((n, 8))
        on = rng.random((n, 3)) < 0.4
        X[:, :3] += 5.0 * on
        return X, [[vocab[j] for j in np.flatnonzero(r)] for r in on]
    task = write_embeddings(tmp_path / "tags-v1.0-full", {f: rows(40) for f in FOLDS}, vocab, metric="mAP",
                            prediction_type="multilabel")
    r = probe_scene_task(task, resamples=100)
    assert r["metric"] == "mAP" and r["score"] > 0.95


def test_random_labels_score_near_chance(tmp_path):
    r = probe_scene_task(kfold_task(tmp_path, separable=False, n=80), resamples=200)
    assert abs(r["score"] - 0.25) < 0.1


def test_c_is_chosen_on_the_validation_split_not_on_test(tmp_path):
    rng = np.random.default_rng(1)
    classes = ("a", "b", "c")
    splits = {s: blobs(rng, 60, classes, dim=40, spread=1.0) for s in ("train", "valid", "test")}
    task = write_embeddings(tmp_path / "near-v1.0-full", splits, classes, split_mode="trainvaltest")
    (split,) = probe_scene_task(task, resamples=50)["splits"]
    valid = {float(c): v for c, v in split["valid_scores"].items()}
    best = max(valid.values())
    assert split["C"] == min(c for c, v in valid.items() if v == best)  # the best on validation, ties: smaller C
    assert split["train"] == ["train"] and split["valid"] == ["valid"] and split["test"] == ["test"]
    # New test labels change the test score, never the choice; new validation labels change the choice's scores.
    X_test, labels = splits["test"]
    shuffled = tmp_path / "shuffled_test"
    write_embeddings(shuffled / task.name, dict(splits, test=(X_test, list(rng.permutation(labels)))), classes,
                     split_mode="trainvaltest")
    (other,) = probe_scene_task(shuffled / task.name, resamples=50)["splits"]
    assert other["C"] == split["C"] and other["valid_scores"] == split["valid_scores"]
    assert other["test_score"] != split["test_score"]
    X_valid, labels = splits["valid"]
    relabelled = tmp_path / "shuffled_valid"
    write_embeddings(relabelled / task.name, dict(splits, valid=(X_valid, list(rng.permutation(labels)))), classes,
                     split_mode="trainvaltest")
    (third,) = probe_scene_task(relabelled / task.name, resamples=50)["splits"]
    assert third["valid_scores"] != split["valid_scores"]


def test_bootstrap_interval_holds_the_score_and_is_seeded(tmp_path):
    task = kfold_task(tmp_path, separable=True, n=30)
    # a harder task (spread 1) so that the interval has a width
    rng = np.random.default_rng(2)
    hard = write_embeddings(tmp_path / "hard-v1.0-full",
                            {f: blobs(rng, 30, ("a", "b"), spread=1.0) for f in FOLDS}, ("a", "b"))
    r = probe_scene_task(hard, resamples=300, seed=0)
    assert r["ci95_low"] <= r["score"] <= r["ci95_high"] and r["ci95_high"] - r["ci95_low"] > 0.02
    assert r["resamples"] == 300 and r["bootstrap_seed"] == 0 and r["bootstrap_sd"] > 0
    again = probe_scene_task(hard, resamples=300, seed=0)
    assert (again["ci95_low"], again["ci95_high"], again["score"]) == (r["ci95_low"], r["ci95_high"], r["score"])
    other = probe_scene_task(hard, resamples=300, seed=1)
    assert other["score"] == r["score"] and (other["ci95_low"], other["ci95_high"]) != (r["ci95_low"], r["ci95_high"])
    assert probe_scene_task(task, resamples=100)["ci95_low"] > 0.9


def test_a_bundle_without_a_valid_split_is_named(tmp_path):
    rng = np.random.default_rng(3)
    task = write_embeddings(tmp_path / "novalid-v1.0-full", {s: blobs(rng, 20, ("a", "b")) for s in ("train", "test")},
                            ("a", "b"), split_mode="trainvaltest")
    with pytest.raises(LinearProbeError, match=r"novalid-v1.0-full: no validation split"):
        probe_scene_task(task)
    two = write_embeddings(tmp_path / "twofolds-v1.0-full", {f: blobs(rng, 20, ("a", "b")) for f in FOLDS[:2]},
                           ("a", "b"))
    with pytest.raises(LinearProbeError, match=r"twofolds-v1.0-full: k-fold with 2 folds"):
        probe_scene_task(two)


def test_missing_embeddings_are_named(tmp_path):
    task = kfold_task(tmp_path)
    (task / "fold02.embeddings.npy").unlink()
    with pytest.raises(LinearProbeError, match=r"blobs-v1.0-full: fold02.embeddings.npy missing"):
        probe_scene_task(task)
    (task / ".done.embeddings").unlink()
    with pytest.raises(LinearProbeError, match=r"blobs-v1.0-full: no embeddings .*no .done.embeddings"):
        probe_scene_task(task)


def test_a_labels_file_naming_a_function_is_refused_not_run(tmp_path):
    """heareval's labels pickles hold plain data; one that names a callable (what an attack
    would need) is refused by name instead of being called."""
    import pickle

    from eval_suites.linear_probe import _PlainDataUnpickler

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "train.target-labels.pkl"
    path.write_bytes(pickle.dumps([["a"], Payload()]))
    with open(path, "rb") as f, pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        _PlainDataUnpickler(f).load()
    path.write_bytes(pickle.dumps([["a"], ["b", 3]]))
    with open(path, "rb") as f:
        assert _PlainDataUnpickler(f).load() == [["a"], ["b", 3]]
