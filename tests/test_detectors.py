"""The history detectors on hand-made histories with known answers, and the detect stage's files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ftviz import detectors
from ftviz.config import DetectConfig
from ftviz.rundir import RunDir


def history(margins_by_sample: list[list[float]], labels: list[int], num_classes: int = 3) -> np.ndarray:
    """Logits (T, N, C) in which sample n's given label has margin m at snapshot t: the given
    class gets m, class (label + 1) % C gets 0 and the others -5."""
    margins = np.asarray(margins_by_sample, dtype=np.float64).T  # (T, N)
    logits = np.full((*margins.shape, num_classes), -5.0)
    for n, label in enumerate(labels):
        logits[:, n, label] = margins[:, n]
        logits[:, n, (label + 1) % num_classes] = 0.0
    return logits


# ---- single detectors against direct computations ------------------------------------------------
def test_margins_and_aum_are_the_given_logit_minus_the_largest_other():
    labels = [0, 1, 2]
    logits = history([[2.0, 3.0, 4.0], [-1.0, -2.0, -3.0], [1.0, -1.0, 0.5]], labels)
    margins = detectors.given_logit_margins(logits=logits, labels=np.array(labels))
    np.testing.assert_allclose(margins.T, [[2, 3, 4], [-1, -2, -3], [1, -1, 0.5]])
    aum = detectors.area_under_margin(logits=logits, labels=np.array(labels))
    np.testing.assert_allclose(aum, [3.0, -2.0, 0.5 / 3])
    assert aum.argmin() == 1  # negative throughout: the lowest area under the margin


def test_margin_uses_the_largest_other_logit_whichever_class_it_is():
    logits = np.array([[[1.0, 4.0, 2.0]], [[5.0, 1.0, 6.0]]])  # (T=2, N=1, C=3), label 0
    np.testing.assert_allclose(detectors.given_logit_margins(logits=logits, labels=np.array([0])), [[-3.0], [-1.0]])


def test_data_map_is_mean_std_and_hit_rate_of_the_given_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 20, 4))
    labels = rng.integers(0, 4, 20)
    probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    p_given = probs[:, np.arange(20), labels]
    result = detectors.data_map(logits=logits, labels=labels)
    np.testing.assert_allclose(result["confidence"], p_given.mean(0))
    np.testing.assert_allclose(result["variability"], p_given.std(0))
    np.testing.assert_allclose(result["correctness"], (logits.argmax(2) == labels).mean(0))


def test_forgetting_events_count_learnt_then_forgotten_transitions():
    # Correct (+) / wrong (-) per snapshot:
    #   sample 0: - + - + + -   -> 2 forgettings
    #   sample 1: + + + + + +   -> 0 (unforgettable)
    #   sample 2: - - - - - -   -> never learnt: T = 6
    #   sample 3: + - - - - +   -> 1
    pattern = ["-+-++-", "++++++", "------", "+----+"]
    margins = [[1.0 if c == "+" else -1.0 for c in row] for row in pattern]
    logits = history(margins, [0, 1, 2, 0])
    events = detectors.forgetting_events(logits=logits, labels=np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(events, [2, 0, 6, 1])


def test_ensembled_quality_is_cleanlabs_own_on_the_mean_softmax():
    from cleanlab.rank import get_label_quality_ensemble_scores, get_label_quality_scores

    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 25)
    logits = rng.normal(size=(5, 100, 4)) + 3.0 * np.eye(4)[labels]
    quality, _ = detectors.ensembled_label_quality(logits=logits, labels=labels)
    probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)
    np.testing.assert_allclose(quality, get_label_quality_scores(labels, probs.mean(0)), rtol=1e-12)
    # Self-confidence is linear in the probabilities: Cleanlab's uniform ensemble agrees.
    ensemble = get_label_quality_ensemble_scores(labels, list(probs), weight_ensemble_members_by="uniform",
                                                 verbose=False)
    np.testing.assert_allclose(quality, ensemble, rtol=1e-10)
    np.testing.assert_allclose(quality, detectors.data_map(logits=logits, labels=labels)["confidence"], rtol=1e-12)


def test_stays_flagged_from_is_the_start_of_the_final_run_of_flags():
    flags = np.array([
        [0, 1, 1, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [1, 1, 1, 0],
    ], dtype=bool)  # (T=4, N=4)
    steps = [0, 10, 20, 30]
    # sample 0: flagged at 10, unflagged at 20, flagged at 30 -> 30; sample 1: always -> 0;
    # sample 2: from 20 on -> 20; sample 3: never -> -1.
    np.testing.assert_array_equal(detectors.stays_flagged_from(flags=flags, steps=steps), [30, 0, 20, -1])


def test_rank_descending_puts_the_largest_first():
    np.testing.assert_array_equal(detectors.rank_descending(np.array([0.2, 0.9, 0.5, 0.9])), [4, 1, 3, 1])


# ---- the recommended flag rule ------------------------------------------------------------------
def memorised_history():
    """Four samples over 10 snapshots after the network has learnt the data:
    0 and 3: wrong labels, confidently another class for 6 snapshots, then memorised (margin > 0);
    1: a hard correct label, slightly negative margin for 6 snapshots, never flagged by Cleanlab;
    2: a wrong label the network never fits: flagged at every snapshot."""
    margins = np.array([
        [-4, -4, -4, -4, -4, -4, 2, 3, 3, 3],
        [-0.5, -0.5, -0.5, -0.5, -0.5, -0.5, 1, 1, 1, 1],
        [-3] * 10,
        [-4, -4, -4, -4, -4, -4, 2, 3, 3, 3],
    ], dtype=float).T
    frame_flags = np.array([
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0] * 10,
        [1] * 10,
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
    ], dtype=bool).T
    return margins, frame_flags


def test_contradicted_labels_find_a_memorised_label_and_spare_a_hard_correct_one():
    margins, frame_flags = memorised_history()
    contradicted = detectors.contradicted_labels(margins=margins, frame_flags=frame_flags, start=0, min_flagged=0.2)
    np.testing.assert_array_equal(contradicted, [True, False, True, True])
    # The learnt start matters: counted from snapshot 6, sample 0's mean margin is positive.
    assert not detectors.contradicted_labels(margins=margins, frame_flags=frame_flags, start=6)[0]
    # min_flagged: sample 0 was flagged at 6 of 10 snapshots.
    assert not detectors.contradicted_labels(margins=margins, frame_flags=frame_flags, start=0, min_flagged=0.7)[0]


def test_knn_label_shares_are_the_neighbours_labels():
    embedding = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1, 1])
    shares = detectors.knn_label_shares(embedding=embedding, labels=labels, num_classes=2, k=2, block=2)
    # Cosine neighbours: 0 -> {1, 2}, 1 -> {0, 2}, 2 -> {1, 0}, 3 -> {4, 2}, 4 -> {3, 2}.
    np.testing.assert_allclose(shares, [[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    logits = np.log(np.array([[0.8, 0.2]] * 5))
    mixed = detectors.knn_mixed_probabilities(logits=logits, embedding=embedding, labels=labels, k=2)
    np.testing.assert_allclose(mixed, 0.5 * np.array([[0.8, 0.2]] * 5) + 0.5 * shares)
    np.testing.assert_allclose(detectors.knn_mixed_probabilities(logits=logits, embedding=None, labels=labels),
                               [[0.8, 0.2]] * 5)


def test_estimated_issue_count_is_cleanlabs_calibrated_count():
    from cleanlab.count import num_label_issues

    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(3), 40)
    probs = rng.dirichlet(np.ones(3), 120) * 0.3 + 0.7 * np.eye(3)[labels]
    probs[:9] = 0.9 * np.eye(3)[(labels[:9] + 1) % 3] + 0.05  # nine confidently another class
    expected = num_label_issues(labels, probs, estimation_method="off_diagonal_calibrated")
    assert detectors.estimated_issue_count(probs=probs, labels=labels) == expected
    assert 7 <= expected <= 11
    np.testing.assert_array_equal(detectors.top_count(np.array([0.1, 0.9, 0.5, 0.9]), 2), [False, True, False, True])
    assert not detectors.top_count(np.array([0.3, 0.2]), 0).any()


def test_recommend_trusts_the_last_frame_unless_it_has_memorised():
    """90 clean samples (margin 3 throughout) and ten wrong labels: Cleanlab's count decides
    how many are flagged, in the order of the rank-averaged last frame and history."""
    T, N, C = 10, 100, 2
    labels = np.arange(N) % C
    margins = np.full((T, N), 3.0)
    frame_flags = np.zeros((T, N), dtype=bool)
    wrong = np.arange(10)
    margins[:, wrong] = -4.0  # the network never fits them
    frame_flags[:, wrong] = True
    probs = np.full((N, C), 0.05)
    probs[np.arange(N), labels] = 0.95
    probs[wrong] = 0.95 - probs[wrong]  # confidently the other class
    suspicion, flags, memorised = detectors.recommend(margins=margins, frame_flags=frame_flags, probs=probs,
                                                      labels=labels, start=0)
    count = detectors.estimated_issue_count(probs=probs, labels=labels)
    assert not memorised and count == 10
    np.testing.assert_array_equal(np.flatnonzero(flags), wrong)
    assert suspicion[wrong].min() > suspicion[10:].max()
    # Now the last frame fits all ten (memorised: Cleanlab on it sees nothing), but the history
    # contradicted them for 6 of 10 snapshots: the history sets the count.
    margins[6:, wrong] = 2.0
    frame_flags[6:, wrong] = False
    probs[wrong] = 0.95 - probs[wrong]
    suspicion, flags, memorised = detectors.recommend(margins=margins, frame_flags=frame_flags, probs=probs,
                                                      labels=labels, start=0)
    assert detectors.estimated_issue_count(probs=probs, labels=labels) == 0 and memorised
    np.testing.assert_array_equal(np.flatnonzero(flags), wrong)
    np.testing.assert_allclose(suspicion[wrong], 1 / (1 + np.exp((-4.0 * 6 + 2.0 * 4) / 10)))  # sigmoid(-AUM)


def test_issue_step_of_the_recommendation_is_where_the_prefix_rule_starts_to_flag():
    margins, frame_flags = memorised_history()
    steps = np.arange(10) * 5
    final = np.array([True, False, True, True])
    quality = np.where(margins > 0, 0.9, 0.1)
    issue = detectors.issue_steps_of_recommendation(
        margins=margins, frame_flags=frame_flags, frame_quality=quality, accuracy=np.full(10, 0.9), steps=steps,
        final=final, fraction=0.8, min_flagged=0.2)
    # Sample 2 is flagged at every prefix; 0 and 3 at the first six by Cleanlab's count of that
    # snapshot, and from snapshot 6 on because the last frame fits two labels the history
    # contradicts, more than the one Cleanlab still flags: the history sets the count. 1 never.
    np.testing.assert_array_equal(issue, [0, -1, 0, 0])
    # With only one memorised label (sample 3 dropped) it does not outnumber Cleanlab's one flag:
    # the last frame is trusted at snapshots 6 to 8, and sample 0 is flagged again only by the
    # whole history's final flag.
    issue = detectors.issue_steps_of_recommendation(
        margins=margins[:, :3], frame_flags=frame_flags[:, :3], frame_quality=quality[:, :3],
        accuracy=np.full(10, 0.9), steps=steps, final=final[:3], fraction=0.8, min_flagged=0.2)
    np.testing.assert_array_equal(issue, [45, -1, 0])
    # Nothing is visible before the network has learnt the data: here from snapshot 2 (step 10).
    rising = np.array([0.1, 0.5, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    issue = detectors.issue_steps_of_recommendation(
        margins=margins, frame_flags=frame_flags, frame_quality=quality, accuracy=rising, steps=steps,
        final=final, fraction=0.8, min_flagged=0.2)
    np.testing.assert_array_equal(issue, [10, -1, 10, 10])


def test_learnt_from_is_the_first_snapshot_near_the_best_accuracy():
    labels = np.zeros(10, dtype=np.int64)
    correct_counts = [0, 2, 5, 8, 10, 9]  # accuracy 0 .. 1
    logits = np.zeros((6, 10, 2))
    for t, k in enumerate(correct_counts):
        logits[t, :k, 0] = 1.0
        logits[t, k:, 1] = 1.0
    assert detectors.learnt_from(logits=logits, labels=labels, fraction=0.8) == 3  # 0.8 >= 0.8 * 1.0
    assert detectors.learnt_from(logits=logits, labels=labels, fraction=0.5) == 2


def test_detect_recommends_history_on_a_trained_probe_and_the_last_frame_on_a_held_out_one():
    rng = np.random.default_rng(3)
    T, N, C = 8, 60, 3
    labels = np.arange(N) % C
    logits = rng.normal(scale=0.1, size=(T, N, C)) + 4.0 * np.eye(C)[labels]
    logits[:, 0] = 4.0 * np.eye(C)[(labels[0] + 1) % C]  # sample 0 always another class
    quality = np.full((T, N), 0.9)
    frame_flags = np.zeros((T, N), dtype=bool)
    frame_flags[:, 0] = True
    common = dict(logits=logits, labels=labels, steps=np.arange(T), frame_quality=quality,
                  frame_flags=frame_flags, outlier_score=rng.uniform(size=N))
    columns, flags = detectors.detect(**common, probe_trained_on=True)
    assert columns["suspicion"].argmax() == 0 and columns["suspicion_rank"][0] == 1
    assert columns["is_label_issue"].tolist() == [True] + [False] * (N - 1)
    assert columns["issue_step"][0] == 0 and (columns["issue_step"][1:] == -1).all()
    assert set(flags) <= set(detectors.DIRECTION)
    held_out, _ = detectors.detect(**common, probe_trained_on=False)
    np.testing.assert_allclose(held_out["suspicion"], 1 - quality[-1])
    assert held_out["is_label_issue"].tolist() == frame_flags[-1].tolist()


def test_detector_scores_against_known_flags():
    noisy = np.array([1, 1, 0, 0, 0], dtype=bool)
    out = detectors.detector_scores(score=np.array([0.9, 0.2, 0.8, 0.1, 0.0]),
                                    flags=np.array([1, 0, 1, 0, 0], dtype=bool), is_noisy=noisy)
    assert out["auroc"] == pytest.approx(5 / 6)  # (noisy, clean) pairs ranked right: 3 + 2 of 6
    assert out["precision"] == 0.5 and out["recall"] == 0.5 and out["f1"] == 0.5 and out["n_flagged"] == 2
    none = detectors.detector_scores(score=np.zeros(5), flags=None, is_noisy=noisy)
    assert np.isnan(none["f1"]) and none["n_flagged"] is None


# ---- the stage on a real tiny run -----------------------------------------------------------------
@pytest.fixture()
def run(tiny_run, tmp_path):
    copy = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.path, copy.path)
    return copy


def test_detect_writes_the_documented_files(run, capsys):
    import pandas as pd

    from ftviz.cli import main

    detectors.detect_run(run, DetectConfig(), progress=False)
    table = pd.read_parquet(run.file("suspicion.parquet"))
    samples = run.samples()
    assert len(table) == len(samples) and table["id"].tolist() == samples["id"].tolist()
    assert list(table.columns) == [
        "id", "label_quality_last", "label_quality_ensemble", "label_quality_knn", "aum", "confidence", "variability", "correctness",
        "forgetting_events", "outlier_score", "outlier_rank", "suspicion", "suspicion_rank", "is_label_issue",
        "issue_step",
    ]
    assert table["is_label_issue"].dtype == bool and str(table["issue_step"].dtype) == "Int64"
    assert table.loc[~table["is_label_issue"], "issue_step"].isna().all()
    assert table.loc[table["is_label_issue"], "issue_step"].isin(run.snapshot_steps()).all()
    assert table["suspicion_rank"].min() == 1
    assert table.sort_values("suspicion", ascending=False)["suspicion_rank"].is_monotonic_increasing
    assert table["suspicion"].between(0, 1).all()
    # The last-frame column is the score stage's own value.
    scores = run.scores()
    last = scores[scores["step"] == run.snapshot_steps()[-1]].sort_values("id")
    np.testing.assert_array_equal(table["label_quality_last"], last["label_quality"])
    np.testing.assert_array_equal(table["outlier_score"], last["outlier_score"])

    measured = pd.read_parquet(run.file("detectors.parquet"))
    assert list(measured.columns) == ["detector", "step", "auroc", "average_precision", "precision", "recall",
                                      "f1", "n_flagged"]
    summary = measured[measured["detector"] != "cleanlab_frame"]
    assert summary["detector"].tolist() == [
        "label_quality_last", "label_quality_ensemble", "label_quality_knn", "aum", "confidence", "variability",
        "correctness", "forgetting_events", "outlier_score", "suspicion",
    ]
    frames = measured[measured["detector"] == "cleanlab_frame"]
    assert frames["step"].tolist() == run.snapshot_steps()
    row = summary.set_index("detector").loc["suspicion"]
    assert row["n_flagged"] == table["is_label_issue"].sum()
    assert row["auroc"] > 0.5
    assert summary.set_index("detector").loc["label_quality_last", "step"] == run.snapshot_steps()[-1]
    assert run.manifest()["stages"]["detect"]["status"] == "done"

    assert main(["quality", str(run.path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "| suspicion |" in out and "| label_quality_last |" in out and "Top 3 suspicious samples" in out


def test_a_run_without_noise_gets_no_detector_table(run, capsys):
    from ftviz.cli import main

    samples = run.samples()
    samples["given_label"] = samples["true_label"]
    samples["is_noisy"] = False
    samples.to_parquet(run.file("samples.parquet"), index=False)
    detectors.detect_run(run, DetectConfig(), progress=False)
    assert run.file("suspicion.parquet").is_file() and not run.file("detectors.parquet").exists()
    assert main(["quality", str(run.path)]) == 0
    assert "no injected noise" in capsys.readouterr().out


def test_quality_before_detect_names_the_command(run, capsys):
    from ftviz.cli import main

    assert run.stage_status("detect") == "done"  # the pipeline ran it
    assert main(["score", str(run.path), "-q"]) == 0  # new scores: the detectors read them
    assert run.stage_status("detect") == "stale"
    capsys.readouterr()
    assert main(["quality", str(run.path)]) == 2
    assert f"ftviz detect {run.path}" in capsys.readouterr().err
    assert main(["detect", str(run.path), "-q"]) == 0
    assert main(["quality", str(run.path)]) == 0


# Measured on the tiny run (200 samples, 20 flipped labels): the recommendation flags 60 with
# F1 0.50 against the injected noise (flagging 60 at random: about 0.15).
TINY_RUN_MIN_F1 = 0.45


def test_the_recommended_flags_find_the_injected_noise(tiny_run):
    """The pipeline's own detect stage, measured against the truth it never saw."""
    import pandas as pd

    suspicion = pd.read_parquet(tiny_run.file("suspicion.parquet"))
    noisy = tiny_run.samples().set_index("id")["is_noisy"]
    both = suspicion.set_index("id").join(noisy, how="inner", validate="one_to_one")
    assert len(both) == len(noisy) and both["is_noisy"].sum() > 0
    flagged, truth = both["is_label_issue"].to_numpy(bool), both["is_noisy"].to_numpy(bool)
    hits = int((flagged & truth).sum())
    precision, recall = hits / flagged.sum(), hits / truth.sum()
    f1 = 2 * precision * recall / (precision + recall)
    assert f1 > TINY_RUN_MIN_F1
    # The stage's own table and run.json agree with the flags they summarise.
    row = pd.read_parquet(tiny_run.file("detectors.parquet")).set_index("detector").loc["suspicion"]
    assert row["f1"] == pytest.approx(f1) and row["n_flagged"] == flagged.sum()
    assert tiny_run.manifest()["stages"]["detect"]["f1"] == pytest.approx(f1, abs=1e-4)


def _flags_under(run, rule: str):
    import pandas as pd

    detectors.detect_run(run, DetectConfig(rule=rule), progress=False)
    record = run.manifest()["stages"]["detect"]
    return record, pd.read_parquet(run.file("suspicion.parquet")).sort_values("id").reset_index(drop=True)


def test_rule_last_is_cleanlab_at_the_last_snapshot(run):
    record, table = _flags_under(run, "last")
    assert record["rule"] == "last" and record["history"] is False
    scores = run.scores()
    last = scores[scores["step"] == run.snapshot_steps()[-1]].sort_values("id")
    np.testing.assert_array_equal(table["is_label_issue"], last["is_label_issue"])
    np.testing.assert_allclose(table["suspicion"], 1.0 - last["label_quality"].to_numpy())


def test_rule_history_counts_like_cleanlab_and_ranks_by_the_history(run):
    record, history = _flags_under(run, "history")
    assert record["rule"] == "history" and record["history"] is True
    flagged = history["is_label_issue"].to_numpy()
    # The flags are the top `count` of the suspicion ...
    count = int(flagged.sum())
    np.testing.assert_array_equal(flagged, detectors.top_count(history["suspicion"].to_numpy(), count))
    # ... never fewer than Cleanlab flags at the last snapshot ...
    scores = run.scores()
    last = scores[scores["step"] == run.snapshot_steps()[-1]].sort_values("id")
    assert count >= int(last["is_label_issue"].sum())
    # ... and the suspicion is not the last frame's alone: the two rules flag different samples.
    _, only_last = _flags_under(run, "last")
    assert (flagged != only_last["is_label_issue"].to_numpy()).any()
    assert not np.allclose(history["suspicion"], only_last["suspicion"])


def test_detect_refuses_a_snapshot_with_nan_in_one_line(run, capsys):
    from ftviz.cli import main

    step = run.snapshot_steps()[1]
    embedding, logits = run.load_snapshot(step)
    logits = logits.copy()
    logits[3, 0] = np.inf
    run.write_snapshot(step, embedding, logits)
    before = run.file("suspicion.parquet").read_bytes()
    assert main(["detect", str(run.path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"snapshot step {step}" in err and "rerun training" in err
    assert run.file("suspicion.parquet").read_bytes() == before
