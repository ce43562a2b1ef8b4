import numpy as np

from ftviz.quality import label_scores, outlier_scores, softmax


def test_outlier_score_finds_the_planted_outlier():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 16)) + np.array([5.0] + [0.0] * 15)
    features[17] = -features[17]  # the one point pointing the other way (cosine distance)
    scores = outlier_scores(features, k=10)
    assert scores.shape == (300,)
    assert scores.argmax() == 17
    assert 0.0 <= scores.min() and scores.max() <= 1.0


def test_outlier_scores_equal_cleanlab_flipped():
    from cleanlab.outlier import OutOfDistribution

    features = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
    expected = OutOfDistribution(params={"k": 10}).fit_score(features=features, verbose=False)
    np.testing.assert_allclose(outlier_scores(features, k=10), 1.0 - expected, rtol=1e-6)


def test_label_scores_flag_flipped_labels():
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(5), 60)
    logits = np.eye(5)[true] * 6.0 + rng.normal(scale=0.5, size=(300, 5))
    given = true.copy()
    flipped = rng.choice(300, size=15, replace=False)
    given[flipped] = (given[flipped] + 1) % 5
    quality, issues = label_scores(logits=logits, labels=given)
    found = set(np.flatnonzero(issues))
    assert found <= set(flipped)  # no false alarms on this clean a case
    assert len(found) >= 10  # and most of the 15 flips
    assert quality[flipped].max() < np.delete(quality, flipped).min()


def test_label_scores_survive_a_degenerate_step():
    logits = np.zeros((50, 3))  # a network that has learnt nothing
    labels = np.arange(50) % 3
    quality, issues = label_scores(logits=logits, labels=labels)
    assert quality.shape == (50,) and not issues.any()


def test_softmax_rows_sum_to_one():
    probs = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs[0, 0] == 1.0


def test_knn_method_gives_cleanlabs_values():
    """The blocked-matmul path must reproduce Cleanlab's scores, duplicates included."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 32))
    features = (centres[rng.integers(0, 5, 600)] + rng.normal(scale=0.8, size=(600, 32))).astype(np.float32)
    features[10] = features[11]  # an exact duplicate pair
    cleanlab = outlier_scores(features, k=10, method="cleanlab")
    fast = outlier_scores(features, k=10, method="knn")
    np.testing.assert_allclose(fast, cleanlab, atol=1e-5)
    assert set(np.argsort(-fast)[:8]) == set(np.argsort(-cleanlab)[:8])


def test_knn_blocks_do_not_change_the_answer():
    from ftviz.quality import cosine_knn_distances

    features = np.random.default_rng(3).normal(size=(300, 16)).astype(np.float32)
    np.testing.assert_allclose(
        cosine_knn_distances(features, k=7, block=64), cosine_knn_distances(features, k=7, block=4096), atol=1e-6
    )


def test_bf16_candidate_search_returns_exact_distances():
    from ftviz.quality import cosine_knn_distances

    rng = np.random.default_rng(5)
    centres = rng.normal(size=(8, 64))
    features = (centres[rng.integers(0, 8, 3000)] + rng.normal(scale=1.0, size=(3000, 64))).astype(np.float32)
    exact = cosine_knn_distances(features, k=10, search="fp32")
    coarse_then_exact = cosine_knn_distances(features, k=10, search="bf16", block=512)
    np.testing.assert_allclose(coarse_then_exact, exact, atol=1e-6)


# ---- the score stage's file against Cleanlab on the stored snapshot -------------------------------
def test_scores_parquet_is_cleanlab_on_the_snapshot_it_came_from(tiny_run):
    """One frame of scores.parquet, recomputed from its snapshot with Cleanlab itself, by id."""
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores
    from scipy.special import softmax as scipy_softmax

    step = tiny_run.snapshot_steps()[-2]  # a trained frame, not the last (detect reads that one)
    embedding, logits = tiny_run.load_snapshot(step)
    samples = tiny_run.samples().sort_values("id")
    labels = samples["given_label"].to_numpy()
    k = tiny_run.manifest()["config"]["score"]["k"]
    probs = scipy_softmax(logits.astype(np.float64), axis=1)
    expected = pd.DataFrame({
        "id": samples["id"].to_numpy(),
        "outlier": 1.0 - OutOfDistribution(params={"k": k}).fit_score(features=embedding.astype(np.float64),
                                                                      verbose=False),
        "quality": get_label_quality_scores(labels, probs),
        "issue": find_label_issues(labels, probs, n_jobs=1),
        "predicted": probs.argmax(axis=1),
    })
    scores = tiny_run.scores()
    stored = scores[scores["step"] == step]
    assert len(stored) == len(samples) and stored["id"].is_unique
    both = expected.merge(stored, on="id", validate="one_to_one")
    assert len(both) == len(samples)
    # The stage's cosines are float32: on this tight little cloud (scores' scale is the median
    # neighbour distance) that moves a score by up to ~1.2e-4 from Cleanlab's float64 value
    # (Cleanlab's own float32 run differs from its float64 one by 0.9e-4).
    np.testing.assert_allclose(both["outlier_score"], both["outlier"], atol=5e-4)
    assert set(both.nlargest(8, "outlier_score")["id"]) == set(both.nlargest(8, "outlier")["id"])
    np.testing.assert_allclose(both["label_quality"], both["quality"], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(both["is_label_issue"], both["issue"])
    np.testing.assert_array_equal(both["predicted_label"], both["predicted"])
    assert both["issue"].any() and not both["issue"].all()  # a frame where the flags say something


def test_score_refuses_a_snapshot_with_nan_in_one_line(tiny_run, tmp_path, capsys):
    import shutil

    from ftviz.cli import main
    from ftviz.rundir import RunDir

    run = RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))
    step = run.snapshot_steps()[2]
    embedding, logits = run.load_snapshot(step)
    logits = logits.copy()
    logits[5, 1] = np.nan
    run.write_snapshot(step, embedding, logits)
    shutil.rmtree(run.path / "analysis", ignore_errors=True)  # frames scored before the NaN was written
    before = run.file("scores.parquet").read_bytes()
    assert main(["score", str(run.path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"snapshot step {step}" in err and "NaN" in err and "rerun training" in err
    assert run.file("scores.parquet").read_bytes() == before  # nothing half-written


# ---- ftviz quality on a terminal ------------------------------------------------------------------
TERMINAL_HOSTILE = [
    "red\x1b[31m|alert\x1b[0m",  # colour escape and a table separator
    "two\nlines\r",
    "bell\x07\x00nul",
    "title\x1b]0;owned\x07set",  # OSC: sets the terminal's title
    "\u202egnp.exe",  # right-to-left override
    "tab\there", "del\x7f", "c1\x9b31m", "pipe | pipe", "plain",
]


def test_quality_prints_names_as_plain_table_cells(tiny_run, tmp_path, capsys):
    import re
    import shutil
    import unicodedata

    from ftviz.cli import main
    from ftviz.cli.quality import terminal_text
    from ftviz.rundir import RunDir

    run = RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))
    manifest = run.manifest()
    run.update_manifest(dataset={**manifest["dataset"], "class_names": TERMINAL_HOSTILE})
    capsys.readouterr()
    assert main(["quality", str(run.path), "--top", "20"]) == 0
    out = capsys.readouterr().out
    assert not [ch for ch in out if ch != "\n" and unicodedata.category(ch) == "Cc"]
    assert "\u202e" not in out
    separators = re.compile(r"(?<!\\)\|")  # every | but the escaped ones
    tables = [block.splitlines() for block in out.split("\n\n") if block.startswith("| ")]
    assert len(tables) == 2  # the detectors, the most suspicious samples
    for lines in tables:  # every row has its header's number of cells
        assert {len(separators.findall(line)) for line in lines} == {len(separators.findall(lines[0]))}
    top = tables[1]
    assert len(top) == 2 + 20 and any("\\|" in line for line in top) and any("plain" in line for line in top)
    # What each name became: its text, nothing else.
    assert terminal_text(TERMINAL_HOSTILE[0]) == "red\\|alert"
    assert terminal_text(TERMINAL_HOSTILE[1]) == "twolines"
    assert terminal_text(TERMINAL_HOSTILE[3]) == "titleset"
    assert terminal_text(TERMINAL_HOSTILE[4]) == "gnp.exe"
    assert terminal_text(TERMINAL_HOSTILE[7]) == "c1"


def test_detect_reads_the_last_frames_neighbours_from_the_score_stage(tiny_run, tmp_path):
    """One search a frame: the score stage keeps each frame's cosine neighbours, and the detect
    stage's kNN label vote on the last frame reads them; a damaged record is searched again."""
    import json
    import shutil

    from ftviz.framecache import FrameCache
    from ftviz.numerics import exact_neighbours, knn_label_shares
    from ftviz.quality import recorded_neighbours
    from ftviz.rundir import RunDir

    step = tiny_run.snapshot_steps()[-1]
    embedding, _ = tiny_run.load_snapshot(step)
    k = tiny_run.manifest()["config"]["score"]["k"]
    recorded = recorded_neighbours(tiny_run, step, k=k)
    searched, _ = exact_neighbours(embedding, k, metric="cosine")
    np.testing.assert_array_equal(recorded, searched)
    labels = tiny_run.samples().sort_values("id")["given_label"].to_numpy()
    np.testing.assert_array_equal(
        knn_label_shares(embedding=None, labels=labels, num_classes=10, k=5, neighbours=recorded),
        knn_label_shares(embedding=embedding, labels=labels, num_classes=10, k=5))
    assert recorded_neighbours(tiny_run, step, k=k + 1) is None  # fewer than asked: search

    copy = RunDir(shutil.copytree(tiny_run.path, tmp_path / "run"))
    settings = json.loads((copy.path / "analysis" / "score" / "settings.json").read_text())
    cache = FrameCache(copy, "score", settings)
    frame = cache.get(step)
    frame["neighbours"] = np.full_like(frame["neighbours"], len(labels))  # an index past the samples
    cache.put(step, frame)
    assert recorded_neighbours(copy, step, k=k) is None
