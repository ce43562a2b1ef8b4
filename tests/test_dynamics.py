"""Training dynamics (ftviz/dynamics.py): recorded by the loop, read by the detect stage, and the
export -> fix round trip (ftviz quality --export, data.fixes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftviz.config import ExperimentConfig
from ftviz.data import load_splits
from ftviz.dynamics import DynamicsLog, chunk_paths, histories, last_features, load_dynamics
from ftviz.errors import FtvizError
from ftviz.rundir import RunDir
from tests import forked
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


# ---- the loop records what it trained on ---------------------------------------------------
def test_loop_records_one_row_per_trained_sample_in_epoch_order(tiny_run):
    from ftviz.train import StepPlan, _epoch_order

    config = ExperimentConfig.from_dict(tiny_run.manifest()["config"])
    splits = load_splits(config.data, seed=config.seed)
    plan = StepPlan.of(config.train, len(splits.train))
    ids, steps, logits = load_dynamics(tiny_run)
    batch = config.train.batch_size
    assert len(ids) == plan.total_steps * batch and logits.shape == (len(ids), splits.num_classes)
    assert logits.dtype == np.float16
    np.testing.assert_array_equal(steps, np.repeat(np.arange(plan.total_steps), batch))
    for epoch in range(plan.total_steps // plan.steps_per_epoch):
        order = _epoch_order(len(splits.train), config.seed, epoch).numpy()[: plan.micro_per_epoch * batch]
        rows = slice(epoch * plan.micro_per_epoch * batch, (epoch + 1) * plan.micro_per_epoch * batch)
        np.testing.assert_array_equal(ids[rows], order)


def test_recorded_logits_are_those_of_the_weights_at_that_step(tiny_run):
    """The probe is the whole training set (data.probe = "train"): a batch trained at step s went
    through the weights of snapshot s, so its rows equal that snapshot's probe logits."""
    ids, steps, logits = load_dynamics(tiny_run)
    compared = 0
    for step in tiny_run.snapshot_steps():
        rows = steps == step
        if not rows.any():
            continue  # the last snapshot: no batch trained after it
        probe = tiny_run.load_logits(step).astype(np.float32)
        np.testing.assert_allclose(logits[rows].astype(np.float32), probe[ids[rows]], atol=2e-2, rtol=1e-2)
        compared += int(rows.sum())
    assert compared >= 5 * 32


def test_recorded_features_are_the_embeddings_the_head_read_at_that_step(tiny_run):
    """Each row's features are the embedding a snapshot of the weights at that step holds for
    the sample; :func:`last_features` keeps each sample's latest pass."""
    ids, steps, _ = load_dynamics(tiny_run)
    rows_features = np.concatenate([np.load(path)["features"] for path in chunk_paths(tiny_run)])
    assert rows_features.dtype == np.float16 and rows_features.shape == (len(ids), tiny_run.load_snapshot(0)[0].shape[1])
    compared = 0
    for step in tiny_run.snapshot_steps():
        rows = steps == step
        if rows.any():
            probe = tiny_run.load_snapshot(step)[0].astype(np.float32)
            np.testing.assert_allclose(rows_features[rows].astype(np.float32), probe[ids[rows]], atol=2e-2, rtol=1e-2)
            compared += int(rows.sum())
    assert compared >= 5 * 32
    latest = last_features(tiny_run, np.arange(200))
    last_row = {int(i): r for r, i in enumerate(ids)}  # the last row of each id wins
    for sample in (0, 57, 199):
        if sample in last_row:
            np.testing.assert_array_equal(latest[sample], rows_features[last_row[sample]].astype(np.float32))
        else:
            assert np.isnan(latest[sample]).all()


def test_train_samples_record_given_and_true_labels(tiny_run):
    config = ExperimentConfig.from_dict(tiny_run.manifest()["config"])
    splits = load_splits(config.data, seed=config.seed)
    table = pd.read_parquet(tiny_run.file("train_samples.parquet"))
    np.testing.assert_array_equal(table["id"], np.arange(200))
    np.testing.assert_array_equal(table["given_label"], splits.train.labels)
    np.testing.assert_array_equal(table["true_label"], splits.train_true_labels)
    assert int(table["is_noisy"].sum()) == 20  # 10% of 200 flipped
    assert table.loc[0, "class_name"] == splits.class_names[splits.train.labels[0]]
    assert tiny_run.manifest()["train_split"]["fingerprint"] == splits.train_fingerprint


def test_run_without_dynamics_writes_none(tmp_path):
    from ftviz.pipeline import run_experiment

    config = tiny_config(tmp_path, train={"epochs": 1, "dynamics": False, "follow": False},
                         project={"method": "pca"})
    run = run_experiment(config, progress=False, log=lambda *_: None)
    assert not (run.path / "dynamics").exists() and not run.file("train_samples.parquet").exists()
    assert not run.file("train_suspicion.parquet").exists()
    assert run.stage_status("render") == "done"


def test_run_without_dynamics_features_keeps_logits_and_no_outlier_score(tmp_path):
    from ftviz.pipeline import run_experiment

    config = tiny_config(tmp_path, train={"epochs": 1, "dynamics_features": False, "follow": False},
                         project={"method": "pca"})
    run = run_experiment(config, progress=False, log=lambda *_: None)
    assert all("features" not in np.load(path).files for path in chunk_paths(run))
    assert last_features(run, np.arange(200)) is None
    table = pd.read_parquet(run.file("train_suspicion.parquet"))
    assert table["outlier_score"].isna().all() and table.loc[table["times_seen"] > 0, "suspicion"].notna().all()


# ---- the buffer, files and histories -----------------------------------------------------------
def test_flush_writes_rows_in_step_then_batch_order_and_resume_drops_later_files(tmp_path):
    run = RunDir(tmp_path)
    log = DynamicsLog(run)
    log.record(0, np.array([5, 3]), np.array([[1.0, 0.0], [0.0, 1.0]]), order=np.array([1, 0]))
    log.record(1, np.array([2]), np.array([[0.5, 0.25]]))
    log.flush(2)
    log.record(2, np.array([3]), np.array([[2.0, 1.0]]))
    log.flush(3)
    ids, steps, logits = load_dynamics(run)
    np.testing.assert_array_equal(ids, [3, 5, 2, 3])
    np.testing.assert_array_equal(steps, [0, 0, 1, 2])
    np.testing.assert_array_equal(logits[0], np.float16([0.0, 1.0]))
    log.restore(2)  # resumed from step 2: the rows of step 2 are trained again
    assert [p.name for p in chunk_paths(run)] == ["step-0000002.npz"]


def test_features_travel_with_their_rows_and_the_latest_pass_wins(tmp_path):
    run = RunDir(tmp_path)
    log = DynamicsLog(run)
    log.record(0, np.array([5, 3]), np.zeros((2, 2)), features=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
               order=np.array([1, 0]))
    log.flush(1)
    log.record(1, np.array([3]), np.zeros((1, 2)), features=np.array([[7.0, 8.0, 9.0]]))
    with pytest.raises(ValueError, match="every batch"):
        log.record(1, np.array([4]), np.zeros((1, 2)))  # features for some batches only
    log.flush(2)
    with np.load(chunk_paths(run)[0]) as first:  # rows in batch order, features with them
        np.testing.assert_array_equal(first["ids"], [3, 5])
        np.testing.assert_array_equal(first["features"], np.float16([[4, 5, 6], [1, 2, 3]]))
    latest = last_features(run, np.array([2, 3, 5]))
    assert np.isnan(latest[0]).all()  # never trained on
    np.testing.assert_array_equal(latest[1:], [[7, 8, 9], [1, 2, 3]])  # sample 3: its pass at step 1
    assert last_features(RunDir(tmp_path / "none"), np.arange(3)) is None


def test_histories_slot_per_pass_with_forward_fill():
    ids = np.array([0, 1, 0, 2, 0])
    steps = np.array([0, 0, 1, 1, 2])
    logits = np.arange(10, dtype=np.float32).reshape(5, 2)
    history, slot_steps, seen = histories(ids, steps, logits, 4)
    assert history.shape == (3, 4, 2)
    np.testing.assert_array_equal(seen, [3, 1, 1, 0])
    np.testing.assert_array_equal(history[:, 0, 0], [0, 4, 8])
    np.testing.assert_array_equal(history[:, 1, 0], [2, 2, 2])  # seen once, kept after
    np.testing.assert_array_equal(slot_steps[:, 2], [1, 1, 1])
    np.testing.assert_array_equal(slot_steps[:, 3], [-1, -1, -1])


# ---- detectors on the training set ------------------------------------------------------------
def test_training_set_detectors_find_flips_in_synthetic_dynamics():
    """Clean samples are fitted early with a growing margin; flipped ones are fitted late."""
    from ftviz.detectors import detect_training_set

    rng = np.random.default_rng(0)
    n, classes, epochs = 300, 5, 8
    true = rng.integers(0, classes, n)
    given = true.copy()
    flipped = rng.choice(n, 30, replace=False)
    given[flipped] = (true[flipped] + 1 + rng.integers(0, classes - 1, 30)) % classes
    history = rng.normal(0, 0.5, (epochs, n, classes)).astype(np.float32)
    for k in range(epochs):
        history[k, np.arange(n), true] += 0.8 * k  # the true class is learnt by generalisation
        history[k, flipped, given[flipped]] += max(0, k - 4) * 1.0  # fitted late, never above the true class
    columns, flags, _, _, _ = detect_training_set(history=history, labels=given,
                                               slot_steps=np.tile(np.arange(epochs)[:, None] * 10, (1, n)))
    noisy = np.zeros(n, bool)
    noisy[flipped] = True
    from ftviz.numerics import auroc_against_noise

    assert auroc_against_noise(columns["suspicion"], noisy) > 0.99
    # The count is Cleanlab's own estimate: here it finds most flips and nothing else.
    assert columns["is_label_issue"][noisy].mean() >= 0.7 and not columns["is_label_issue"][~noisy].any()
    np.testing.assert_array_equal(columns["suggested_label"][flipped], true[flipped])
    assert set(columns) >= {"aum", "confidence", "variability", "correctness", "forgetting_events",
                            "label_quality_last", "label_quality_ensemble", "suspicion", "issue_step"}
    assert np.isnan(columns["outlier_score"]).all()  # no features, no outlier score
    issue = columns["issue_step"]
    flagged = columns["is_label_issue"]
    assert (issue[flagged] >= 0).all() and (issue[flagged] <= 70).all() and (issue[~flagged] == -1).all()
    assert set(issue[flagged].tolist()) <= set(range(0, 80, 10))  # steps of the samples' own passes


def test_training_set_features_give_the_knn_vote_and_the_outlier_score():
    """Features clustered by true class: the neighbours' labels outvote a flipped label, and a
    sample far from every cluster is the top outlier."""
    from ftviz.detectors import detect_training_set
    from ftviz.numerics import auroc_against_noise

    rng = np.random.default_rng(1)
    n, classes, epochs = 300, 5, 6
    true = rng.integers(0, classes, n)
    given = true.copy()
    flipped = rng.choice(n, 30, replace=False)
    given[flipped] = (true[flipped] + 1) % classes
    # Logits that barely know the classes, still learning them (the true class gains a little at
    # every pass, so the accuracy rises: a weak network): alone they rank the flips poorly.
    history = (rng.normal(0, 1.0, (n, classes)) + rng.normal(0, 0.1, (epochs, n, classes))).astype(np.float32)
    history[:, np.arange(n), true] += (0.1 + 0.12 * np.arange(epochs))[:, None]
    features = np.eye(classes)[true] * 5 + rng.normal(0, 0.3, (n, classes))
    odd = int(np.setdiff1d(np.arange(n), flipped)[0])
    features[odd] = -5.0  # far from every cluster
    slot_steps = np.tile(np.arange(epochs)[:, None], (1, n))
    noisy = np.zeros(n, bool)
    noisy[flipped] = True
    alone, *_ = detect_training_set(history=history, labels=given, slot_steps=slot_steps)
    voted, flags, *_, regime = detect_training_set(history=history, labels=given, slot_steps=slot_steps,
                                                   features=features)
    assert regime.fix == "mixed"  # a weak network: its confident suggestions are taken, the rest dropped
    assert regime.accuracy_rise >= 0.02  # read from its accuracy, still rising
    flagged = voted["is_label_issue"]
    # A weak network flags no more than Cleanlab's find_label_issues on the mixed probabilities.
    assert 0 < flagged.sum() <= flags["label_quality_knn"].sum()
    confident = voted["suggested_probability"] >= 0.5
    assert (voted["fix"][flagged & confident] == "relabel").all() and (voted["fix"][flagged & ~confident] == "drop").all()
    assert (voted["fix"][~flagged] == "").all() and (flagged & confident).any()
    assert auroc_against_noise(voted["suspicion"], noisy) > auroc_against_noise(alone["suspicion"], noisy) + 0.05
    assert voted["outlier_rank"][odd] == 1 and np.isfinite(voted["outlier_score"]).all()
    # The vote suggests the flips' true labels where the network alone cannot tell.
    right = lambda columns: np.mean(columns["suggested_label"][flipped] == true[flipped])  # noqa: E731
    assert right(voted) >= 0.9 and right(voted) > right(alone) + 0.2
    assert flags["outlier_score"] is None  # a score without a flag rule, as for the probe


def test_detect_stage_writes_training_set_suspicion(tiny_run):
    table = pd.read_parquet(tiny_run.file("train_suspicion.parquet"))
    samples = pd.read_parquet(tiny_run.file("train_samples.parquet"))
    assert len(table) == 200 and (table["times_seen"] == 2).sum() >= 150  # two epochs, ragged batch dropped
    detectors = pd.read_parquet(tiny_run.file("train_detectors.parquet")).set_index("detector")
    assert detectors.loc["suspicion", "auroc"] > 0.8  # a 2-epoch one-layer run: weak, but far above chance
    noisy = samples["is_noisy"].to_numpy(bool)
    flagged = table["is_label_issue"].to_numpy(bool)
    assert flagged[noisy].mean() > 2 * max(flagged[~noisy].mean(), 0.05)
    seen = table["times_seen"] > 0  # the recorded features give every trained sample an outlier score
    assert table.loc[seen, "outlier_score"].between(0, 1).all() and table.loc[~seen, "outlier_score"].isna().all()
    assert "outlier_score" in detectors.index
    entry = tiny_run.manifest()["stages"]["detect"]
    assert entry["train_samples"] == int((table["times_seen"] > 0).sum()) and entry["train_auroc"] == round(detectors.loc["suspicion", "auroc"], 4)


def test_quality_prints_the_training_set_and_its_recommended_fix(tiny_run, capsys):
    from ftviz.cli import main as ftviz_main

    assert ftviz_main(["quality", str(tiny_run.path)]) == 0
    out = capsys.readouterr().out
    table = pd.read_parquet(tiny_run.file("train_suspicion.parquet"))
    fix = tiny_run.manifest()["stages"]["detect"]["train_fix"]
    flagged = f"{int(table['is_label_issue'].sum())} of 200 samples flagged; recommended fix: "
    if fix == "mixed":
        relabel, drop = int((table["fix"] == "relabel").sum()), int((table["fix"] == "drop").sum())
        assert f"{flagged}relabel {relabel} (the network gives the suggested label at least 0.5), drop {drop} (" in out
        assert relabel + drop == int(table["is_label_issue"].sum())
    else:
        assert f"{flagged}{fix} (" in out
    extra = int((table["fix"] != "").sum() - table["is_label_issue"].sum())
    assert (f"with the {extra} next in line" in out) == (fix == "drop" and extra > 0)
    # Why: how much the last pass raised the training accuracy, the regime read from it.
    rise = tiny_run.manifest()["stages"]["detect"]["train_accuracy_rise"]
    assert (rise >= 0.02) == (fix == "mixed")
    read = "still learning (weak)" if fix == "mixed" else "done learning"
    assert f"(its accuracy on the given training labels rose by {100 * rise:.1f} points per pass over the last two: {read}; " in out


# ---- export and fix ------------------------------------------------------------------------------
def test_export_then_fix_relabels_or_drops_the_flagged_training_samples(tiny_run, tmp_path):
    from ftviz.cli.quality import export_fixes

    path = tmp_path / "fixes.csv"
    rows = export_fixes(tiny_run, path)
    table = pd.read_csv(path)
    assert rows == len(table) == 400 and set(table["split"]) == {"probe", "train"}
    assert list(table.columns[:6]) == ["split", "id", "given_label", "suggested_label", "suspicion", "is_label_issue"]
    # The network's probability of each suggestion, as train_suspicion.parquet has it for training rows.
    # (blank for a training sample never trained on: the run drops each epoch's ragged batch)
    assert table["suggested_probability"].dropna().between(0, 1).all()
    assert table.loc[table["split"] == "probe", "suggested_probability"].notna().all()
    stored = pd.read_parquet(tiny_run.file("train_suspicion.parquet")).set_index("id")["suggested_probability"]
    train_part = table[table["split"] == "train"]
    np.testing.assert_allclose(train_part["suggested_probability"], stored[train_part["id"]].to_numpy(), rtol=1e-6)
    flagged = table[(table["split"] == "train") & table["is_label_issue"]]
    assert len(flagged) > 0

    # The detect stage's recommendation on every flagged training row: while the network is weak
    # ("mixed") relabel where it is confident of the suggestion, else drop; once it has learnt
    # ("drop"), drop, also the unflagged rows next in line by suspicion; blank elsewhere.
    recommended = tiny_run.manifest()["stages"]["detect"]["train_fix"]
    assert recommended in ("mixed", "drop")
    train = table[table["split"] == "train"]
    marked = train[train["fix"].notna()]  # blank cells read back as NaN
    assert set(flagged.index) <= set(marked.index)
    assert table.loc[table["split"] == "probe", "fix"].isna().all()
    if recommended == "mixed":
        assert len(marked) == len(flagged) and set(marked["fix"]) <= {"relabel", "drop"}
        probability = pd.read_parquet(tiny_run.file("train_suspicion.parquet")).set_index("id")["suggested_probability"]
        np.testing.assert_array_equal(marked["fix"] == "relabel", probability[marked["id"]].to_numpy() >= 0.5)
    else:  # the marked rows are the most suspicious ones
        assert (marked["fix"] == "drop").all()
        assert marked["suspicion"].min() >= train.loc[train["fix"].isna(), "suspicion"].max()
    assert tiny_run.manifest()["stages"]["detect"]["train_fix_rows"] == len(marked)

    config = ExperimentConfig.from_dict(tiny_run.manifest()["config"])
    base = load_splits(config.data, seed=config.seed)
    config.data.fixes = str(path)
    config.data.fix = "relabel"
    relabelled = load_splits(config.data, seed=config.seed)
    expected = base.train.labels.copy()
    expected[flagged["id"].to_numpy()] = flagged["suggested_label"].to_numpy()
    np.testing.assert_array_equal(relabelled.train.labels, expected)
    assert relabelled.fixes_applied["relabelled"] == int((base.train.labels[flagged["id"]] != flagged["suggested_label"]).sum())

    # A suggestion cleared by hand (the user is not sure of any label): that sample is dropped,
    # the others relabelled.
    cleared = flagged["id"].to_numpy()[:2]
    edited = table.copy()
    edited["suggested_label"] = edited["suggested_label"].astype("Int64")
    edited.loc[(edited["split"] == "train") & edited["id"].isin(cleared), "suggested_label"] = pd.NA
    edited.to_csv(tmp_path / "edited.csv", index=False)
    config.data.fixes = str(tmp_path / "edited.csv")
    mixed = load_splits(config.data, seed=config.seed)
    assert mixed.fixes_applied["dropped"] == 2 and len(mixed.train) == 200 - 2
    assert not set(cleared) & set(mixed.train_sample_ids.tolist())
    np.testing.assert_array_equal(mixed.train.labels, expected[mixed.train_sample_ids])

    config.data.fixes = str(path)
    config.data.fix = "drop"
    dropped = load_splits(config.data, seed=config.seed)
    assert len(dropped.train) == 200 - len(marked)
    assert not set(marked["id"]) & set(dropped.train_sample_ids.tolist())
    np.testing.assert_array_equal(dropped.train.labels, base.train.labels[dropped.train_sample_ids])

    # data.fix = "auto" (the default): each flagged row as its fix cell says.
    by_row = table.copy()
    train_flagged = (by_row["split"] == "train") & by_row["is_label_issue"]
    by_row.loc[by_row["split"] == "train", "fix"] = ""
    by_row.loc[train_flagged, "fix"] = "relabel"
    by_row.loc[train_flagged & by_row["id"].isin(cleared), "fix"] = "drop"
    by_row.to_csv(tmp_path / "by_row.csv", index=False)
    config.data.fixes, config.data.fix = str(tmp_path / "by_row.csv"), "auto"
    auto = load_splits(config.data, seed=config.seed)
    assert auto.fixes_applied["dropped"] == 2 and not set(cleared) & set(auto.train_sample_ids.tolist())
    np.testing.assert_array_equal(auto.train.labels, expected[auto.train_sample_ids])
    # As exported, "auto" follows the run's recommendation, row by row.
    config.data.fixes = str(path)
    as_exported = load_splits(config.data, seed=config.seed)
    assert len(as_exported.train) == 200 - int((marked["fix"] == "drop").sum())

    # An unflagged row marked "drop" (by the detect stage, or by hand) is dropped by "auto" and
    # "drop", and left alone by "relabel", which fixes the flagged rows only.
    unflagged = table[(table["split"] == "train") & ~table["is_label_issue"]]["id"].to_numpy()[:3]
    by_hand = by_row.copy()
    by_hand.loc[(by_hand["split"] == "train") & by_hand["id"].isin(unflagged), "fix"] = "Drop "
    by_hand.to_csv(tmp_path / "by_hand.csv", index=False)
    config.data.fixes = str(tmp_path / "by_hand.csv")
    for how, gone in (("auto", 2 + 3), ("drop", len(flagged) + 3), ("relabel", 0)):
        config.data.fix = how
        fixed = load_splits(config.data, seed=config.seed)
        assert fixed.fixes_applied["dropped"] == gone and len(fixed.train) == 200 - gone, how
        assert bool(set(unflagged) & set(fixed.train_sample_ids.tolist())) == (how == "relabel"), how


@pytest.mark.parametrize("change, message", [
    (lambda t: t.assign(id=t["id"] + 1000), "names training id 10"),
    (lambda t: t.assign(suggested_label=99), "suggests label 99, outside 0..9"),
    (lambda t: t.assign(dataset="0123456789abcdef"), "exported for another training split"),
    (lambda t: t.drop(columns=["suggested_label"]), "lacks the columns suggested_label"),
])
def test_bad_fix_files_are_one_line_before_training(tiny_run, tmp_path, change, message):
    from ftviz.cli.quality import export_table

    table = export_table(tiny_run)
    table = change(table[table["split"] == "train"].assign(is_label_issue=True))
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    config = ExperimentConfig.from_dict(tiny_run.manifest()["config"])
    config.data.fixes = str(path)
    with pytest.raises(FtvizError, match=message) as error:
        load_splits(config.data, seed=config.seed)
    assert "\n" not in str(error.value)


def test_bad_fix_file_on_the_command_line_exits_2_before_any_run(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"split": ["train"], "id": [5000], "given_label": [0], "suggested_label": [1],
                  "suspicion": [0.9], "is_label_issue": [True]}).to_csv(path, index=False)
    result = forked.run(
        ["-m", "ftviz.cli", "run", "-q", "--set", f"out_dir={tmp_path}", "--set", "name=fixed",
         "--set", "data.dataset=synthetic", "--set", "data.train_size=100", "--set", f"data.fixes={path}"],
        cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "names training id 5000" in result.stderr
    assert not (tmp_path / "fixed").exists()


# ---- FtvizCallback ------------------------------------------------------------------------------
def _callback_training(tmp_path, *, with_ids: bool, steps: int = 4):
    import copy

    import torch
    from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

    from ftviz.data import load_digits_images
    from ftviz.integrations import FtvizCallback

    data = load_digits_images(32)
    names = data.class_names
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=64, num_labels=10))
    initial = copy.deepcopy(model).eval()
    train = np.arange(60, 140)
    pixels = torch.from_numpy(data.images[train]).permute(0, 3, 1, 2).float().div(255.0).sub(0.5).div(0.5)
    rows = [{"pixel_values": pixels[i], "labels": int(data.labels[j]), **({"sample_id": i} if with_ids else {})}
            for i, j in enumerate(train)]
    config = ExperimentConfig(name="cb", out_dir=str(tmp_path))
    config.score.k = 5
    config.train.follow = False  # the follower on this route: tests/test_integrations.py
    callback = FtvizCallback(tmp_path / "cb", probe_images=data.images[:60], probe_labels=data.labels[:60],
                             class_names=names, config=config, precision="fp32", every=2, finish=False,
                             dynamics=True, train_labels=data.labels[train])
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=steps, per_device_train_batch_size=10,
                             learning_rate=2e-3, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                             save_strategy="no", remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()
    return RunDir(tmp_path / "cb"), initial, pixels


def test_callback_records_the_logits_of_each_trained_batch(tmp_path):
    import torch

    run, initial, pixels = _callback_training(tmp_path, with_ids=True)
    ids, steps, logits = load_dynamics(run)
    np.testing.assert_array_equal(steps, np.repeat(np.arange(4), 10))
    assert len(np.unique(ids)) == 40 and ids.max() < 80
    with torch.no_grad():  # step 0: the weights before any update
        direct = initial(pixel_values=pixels[ids[:10]]).logits.numpy()
    np.testing.assert_allclose(logits[:10].astype(np.float32), direct, atol=2e-2, rtol=1e-2)
    samples = pd.read_parquet(run.file("train_samples.parquet"))
    assert len(samples) == 80 and not samples["is_noisy"].any()


def test_callback_without_the_id_column_is_one_line(tmp_path):
    with pytest.raises(FtvizError, match="no 'sample_id' column") as error:
        _callback_training(tmp_path, with_ids=False, steps=1)
    assert "remove_unused_columns=False" in str(error.value) and "\n" not in str(error.value)


def test_the_trainer_callback_records_what_ftviz_loop_records_for_the_same_batches(tmp_path):
    """ftviz's loop and a real transformers.Trainer with FtvizCallback, fed the same batches in
    the same order from the same initial weights with the same optimizer, schedule and clipping:
    the same (step, id) rows with the same logits."""
    import torch
    from transformers import Trainer, TrainingArguments, ViTForImageClassification

    from ftviz.config import config_from_manifest
    from ftviz.integrations import FtvizCallback
    from ftviz.models import create_model
    from ftviz.pipeline import run_experiment
    from ftviz.train import StepPlan, lr_at

    config = tiny_config(tmp_path, name="loop", train={"precision": "fp32", "save_weights": "all"},
                         project={"method": "pca"})
    loop = run_experiment(config, progress=False, log=lambda *_: None)
    ids, steps, logits = load_dynamics(loop)
    config = config_from_manifest(loop.manifest())
    splits = load_splits(config.data, seed=config.seed)
    plan = StepPlan.of(config.train, len(splits.train))
    np.testing.assert_array_equal(splits.train_sample_ids, np.arange(len(splits.train)))

    # The loop's step-0 weights, its preprocessing, and its batches in its order (ids as recorded).
    model = ViTForImageClassification.from_pretrained(loop.weights_dir / "step-0000000")
    probe_model = create_model(config.model.name, num_classes=splits.num_classes, image_size=config.data.image_size,
                               **config.model.options)
    pixels = probe_model.preprocess(torch.from_numpy(splits.train.images))
    rows = [{"pixel_values": pixels[i], "labels": int(splits.train.labels[i]), "sample_id": int(i)} for i in ids]

    class InLoopOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(
        step, total_steps=plan.total_steps, warmup_steps=plan.warmup_steps, peak=config.train.lr) / config.train.lr)
    callback_config = config_from_manifest(loop.manifest())
    callback_config.train.follow = False
    callback = FtvizCallback(tmp_path / "cb", probe_images=splits.probe.images, probe_labels=splits.probe.labels,
                             class_names=splits.class_names, config=callback_config, precision="fp32",
                             every=plan.total_steps, finish=False, dynamics=True, train_labels=splits.train.labels)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=plan.total_steps,
                             per_device_train_batch_size=config.train.batch_size, max_grad_norm=1.0,
                             report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                             remove_unused_columns=False, logging_steps=plan.total_steps)
    InLoopOrder(model=model, args=args, train_dataset=rows, callbacks=[callback],
                optimizers=(optimizer, schedule)).train()

    cb_ids, cb_steps, cb_logits = load_dynamics(RunDir(tmp_path / "cb"))
    np.testing.assert_array_equal(cb_steps, steps)
    np.testing.assert_array_equal(cb_ids, ids)
    # float16 files; the two routes' float32 arithmetic differs in the last bits only
    np.testing.assert_allclose(cb_logits.astype(np.float32), logits.astype(np.float32), atol=1e-2, rtol=1e-2)
    # The head's input, hooked in the Trainer, is the embedding ftviz's loop records.
    np.testing.assert_allclose(last_features(RunDir(tmp_path / "cb"), np.arange(len(splits.train))),
                               last_features(loop, np.arange(len(splits.train))), atol=2e-2, rtol=1e-2)
    assert np.abs(logits[steps == steps.max()].astype(np.float32)
                  - logits[steps == 0].astype(np.float32)[: (steps == steps.max()).sum()]).max() > 0.1  # it trained
    cb_samples = RunDir(tmp_path / "cb").read_parquet("train_samples.parquet")
    np.testing.assert_array_equal(cb_samples["given_label"], loop.read_parquet("train_samples.parquet")["given_label"])


def _passes_with_margins(margins: np.ndarray, labels: np.ndarray, classes: int = 3) -> np.ndarray:
    """(K, N, C) logits whose given-label margin is ``margins`` (K, N): the given class at the
    margin, the next class at 0, the rest far below."""
    K, N = margins.shape
    logits = np.full((K, N, classes), -10.0)
    logits[:, np.arange(N), labels] = margins
    logits[:, np.arange(N), (labels + 1) % classes] = 0.0
    return logits


def test_training_issue_count_trusts_the_margin_mode_once_the_network_has_learnt():
    """A network that learnt the data (clean margins high, wrong labels' margins low and
    separate): the lower mode's 40 labels are flagged even where the first count says 10."""
    from ftviz.detectors import margin_modes, training_issue_count

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    margins = rng.normal(4.0, 1.0, (6, 400))
    margins[:, :40] = rng.normal(-3.0, 1.0, (6, 40))
    modes = margin_modes(logits=_passes_with_margins(margins, labels), labels=labels, start=0)
    assert modes.weak is False  # learnt: it disagrees with no more labels than the lower mode holds
    assert 36 <= training_issue_count(recommended=10, modes=modes) <= 44
    assert training_issue_count(recommended=60, modes=modes) == 60
    assert training_issue_count(recommended=60, modes=None) == 60
    # Cleanlab's flags on the mixed probabilities bound a weak network's count only.
    assert training_issue_count(recommended=60, modes=modes, mixed_flagged=20) == 60


def _learnt_with_late_labels():
    """margin_modes of a network that learnt its data early in a run: 40 wrong labels far
    below zero, 80 hard but correct ones learnt late (a margin a little above zero), 280 easy."""
    from ftviz.detectors import margin_modes

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 400)
    margins = rng.normal(6.0, 0.8, 400) + rng.normal(0.0, 0.2, (6, 400))
    margins[:, 40:120] = rng.normal(0.8, 0.5, 80) + rng.normal(0.0, 0.2, (6, 80))
    margins[:, :40] = rng.normal(-5.0, 0.5, (6, 40))
    return margin_modes(logits=_passes_with_margins(margins, labels), labels=labels, start=0)


def test_training_issue_count_leaves_out_labels_learnt_late_once_the_network_has_learnt():
    """The lower of two modes takes in the labels learnt late too (~120); the lowest of three
    holds the 40 wrong labels, which is the count once the network reads as learnt."""
    from ftviz.detectors import training_issue_count

    modes = _learnt_with_late_labels()
    assert modes.weak is False and modes.lower >= 100
    assert 36 <= modes.lowest <= 44
    assert 36 <= training_issue_count(recommended=10, modes=modes) <= 44
    assert training_issue_count(recommended=60, modes=modes) == 60


def test_a_retrain_drops_the_lower_of_two_modes_once_the_network_has_learnt():
    """The same learnt network: the flags are the lowest of three modes (~40), the rows a retrain
    drops the lower of two (the wrong labels and the ones learnt late, ~120); a weak network's
    retrain changes the flagged rows only."""
    from ftviz.detectors import MarginModes, retrain_drop_count

    modes = _learnt_with_late_labels()
    assert retrain_drop_count(recommended=10, modes=modes, flagged=modes.lowest) == modes.lower >= 100
    assert retrain_drop_count(recommended=150, modes=modes, flagged=40) == 150
    weak = MarginModes(lower=120, lowest=40, rise=0.05)
    assert retrain_drop_count(recommended=150, modes=weak, flagged=40) == 40
    assert retrain_drop_count(recommended=150, modes=None, flagged=40) == 40


def test_training_issue_count_takes_the_smaller_count_for_a_weak_network():
    """A weak network: 40 wrong labels far below zero, the correct ones a wide spread around a
    low margin that still grows at every pass (a sixth of them below zero). Its disagreement
    (~96) outnumbers the lower margin mode (~40), so the smaller of the two counts is taken,
    never the disagreement."""
    from ftviz.detectors import margin_modes, training_issue_count

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 400)
    margins = rng.normal(1.5, 1.5, 400) + np.linspace(-1.0, 0.0, 6)[:, None] + rng.normal(0.0, 0.1, (6, 400))
    margins[:, :40] = rng.normal(-4.0, 0.5, (6, 40))
    modes = margin_modes(logits=_passes_with_margins(margins, labels), labels=labels, start=0)
    assert modes.weak is True
    assert 36 <= training_issue_count(recommended=10_000, modes=modes) <= 44
    assert training_issue_count(recommended=30, modes=modes) == 30
    # Cleanlab's flags on the same mixed probabilities, where they are fewer, are the count.
    assert training_issue_count(recommended=10_000, modes=modes, mixed_flagged=25) == 25
    assert training_issue_count(recommended=30, modes=modes, mixed_flagged=35) == 30


def test_a_network_still_learning_reads_as_weak_though_its_lower_mode_outnumbers_its_disagreement():
    """Systematic (asymmetric) flips widen the lower margin mode: 40 wrong labels far below zero
    and 120 confusable correct labels around zero, 60 of them still wrong on average. The mode
    holds ~160 labels, more than the ~100 the network disagrees with, which the earlier test
    read as learnt; the accuracy still rises at the last pass, so the network is weak, and the
    count is not the mode. The same margins without the rise read as learnt."""
    from ftviz.detectors import STILL_LEARNING_RISE, accuracy_rise, margin_modes, training_issue_count

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 400)
    base = rng.normal(5.0, 0.5, 400)
    base[40:160] = rng.normal(0.0, 0.6, 120)
    base[:40] = rng.normal(-4.0, 0.5, 40)
    rising = base + np.linspace(-0.6, 0.0, 6)[:, None]
    flat = base + np.zeros((6, 1))
    disagreeing = int((rising.mean(axis=0) < 0).sum())
    modes = margin_modes(logits=_passes_with_margins(rising, labels), labels=labels, start=0)
    assert modes.lower > disagreeing and modes.weak is True
    assert accuracy_rise(logits=_passes_with_margins(rising, labels), labels=labels) >= STILL_LEARNING_RISE
    assert training_issue_count(recommended=45, modes=modes) == 45
    assert margin_modes(logits=_passes_with_margins(flat, labels), labels=labels, start=0).weak is False


def test_the_accuracy_rise_reads_the_samples_the_last_pass_reached():
    """The rise per pass over the last two passes. A run cut within an epoch forward-fills the
    samples its last pass did not reach: the rise is measured on the reached ones; a last pass
    reaching under a tenth of them is passed over for the one before; two passes give the one
    rise, one pass none."""
    from ftviz.detectors import accuracy_rise

    labels = np.zeros(100, dtype=np.int64)
    right = np.zeros((4, 100, 2))
    right[:, :, 1] = 1.0  # every sample wrong ...
    right[1, :40] = [1.0, 0.0]  # ... 40 right at the second pass, 60 at the third
    right[2:, :60] = [1.0, 0.0]
    right[3, 60:90] = [1.0, 0.0]  # the fourth pass reached samples 60-89 only, and fitted them
    steps = np.tile(np.arange(4)[:, None] * 10, (1, 100))
    steps[3, :60] = steps[3, 90:] = 20  # forward filled: not reached
    assert accuracy_rise(logits=right, labels=labels, slot_steps=steps) == 0.5  # 0 -> 30 of 30 over two passes
    assert accuracy_rise(logits=right, labels=labels) == pytest.approx(0.25)  # 0.4 -> 0.9, diluted
    steps[3, 60:95] = 20  # only samples 95-99 reached: the pass before is read instead
    right[3, 95:] = [1.0, 0.0]
    assert accuracy_rise(logits=right, labels=labels, slot_steps=steps) == pytest.approx(0.3)  # 0 -> 0.6
    assert accuracy_rise(logits=right[:2], labels=labels) == pytest.approx(0.4)
    assert np.isnan(accuracy_rise(logits=right[:1], labels=labels))


def test_retrain_fixes_take_a_weak_networks_confident_suggestions_and_drop_the_rest():
    """Weak: of the flagged rows, relabel those whose suggestion has probability >= 0.5 and drop
    the others; learnt: drop the flagged rows and the rows next in line; nothing else is touched."""
    from ftviz.detectors import retrain_fixes

    flagged = np.array([True, True, True, False, False])
    dropped = np.array([True, True, True, True, False])  # the flagged ones and one next in line
    probability = np.array([0.9, 0.5, 0.3, 0.99, 0.2])
    assert retrain_fixes(flagged=flagged, dropped=dropped, probability=probability, weak=True).tolist() == \
        ["relabel", "relabel", "drop", "", ""]
    assert retrain_fixes(flagged=flagged, dropped=dropped, probability=probability, weak=False).tolist() == \
        ["drop", "drop", "drop", "drop", ""]


def test_quality_says_why_the_network_read_as_weak_or_learnt_and_nothing_for_older_runs():
    from ftviz.cli.quality import regime_reason

    def entry(rise):
        return {"stages": {"detect": {} if rise == "absent" else {"train_accuracy_rise": rise}}}

    assert regime_reason(entry(0.031), "mixed").endswith("by 3.1 points per pass over the last two: still learning "
                                                         "(weak); 2 or more reads as still learning)")
    assert "by 0.2 points per pass over the last two: done learning" in regime_reason(entry(0.002), "drop")
    assert regime_reason(entry("absent"), "drop") == ""  # detected before the rise was recorded
    assert regime_reason(entry(None), "mixed") == ""  # one pass: no rise
    assert regime_reason(entry(0.012), "mixed") == ""  # weak for another reason (too few margins)
    assert regime_reason(entry(0.031), "relabel") == ""  # an older run's fix
