"""RunDir's typed readers: the one reader of per-frame scores, suspicion, detectors and class
names, on copies of the session's tiny run."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ftviz.errors import FtvizError, MissingStageError
from ftviz.rundir import RunDir


@pytest.fixture()
def run(tiny_run, tmp_path):
    copy = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run.path, copy.path)
    return copy


def edit_manifest(run: RunDir, change) -> None:
    manifest = run.manifest()
    change(manifest)
    run.manifest_path.write_text(json.dumps(manifest))


def test_frame_scores_are_scores_parquet_as_frames_by_samples(tiny_run):
    scores = tiny_run.scores()
    steps = tiny_run.snapshot_steps()
    per_frame = tiny_run.frame_scores(complete=True)
    assert set(per_frame) == {*tiny_run.FRAME_SCORE_COLUMNS, "present"} and per_frame["present"].all()
    for column in ("label_quality", "is_label_issue", "predicted_label"):
        table = scores.pivot(index="step", columns="id", values=column).loc[steps]
        np.testing.assert_array_equal(per_frame[column], table.to_numpy())
    assert per_frame["is_label_issue"].dtype == bool and per_frame["predicted_label"].dtype == np.int64
    # One step, in a chosen order of columns; a row missing is a gap, or an error naming the command.
    gap = scores[~((scores["step"] == steps[-1]) & (scores["id"] == 3))]
    only = tiny_run.frame_scores(["outlier_score"], steps=[steps[-1]], scores=gap)
    assert only["outlier_score"].shape == (1, 200) and np.isnan(only["outlier_score"][0]).tolist().index(True) == 3
    assert only["present"][0].sum() == 199
    with pytest.raises(FtvizError, match=f"no row for step {steps[-1]}, id 3 .*rerun `ftviz score {tiny_run.path}`"):
        tiny_run.frame_scores(steps=steps, scores=gap, complete=True)


def test_suspicion_in_id_order_and_its_stage_rule(run):
    written = pd.read_parquet(run.file("suspicion.parquet"))
    table = run.suspicion()
    assert table["id"].tolist() == list(range(200))
    np.testing.assert_array_equal(table["suspicion"], written.set_index("id").loc[range(200), "suspicion"])
    run.file("suspicion.parquet").unlink()
    assert run.suspicion(optional=True) is None
    edit_manifest(run, lambda m: m["stages"].__setitem__("detect", {"status": "pending"}))
    with pytest.raises(MissingStageError, match=f"ftviz detect {run.path}"):
        run.suspicion()


def test_an_older_suspicion_file_without_detector_columns_is_read_and_a_broken_one_refused(run):
    written = pd.read_parquet(run.file("suspicion.parquet"))
    written[list(RunDir.SUSPICION_CORE)].to_parquet(run.file("suspicion.parquet"), index=False)
    assert list(run.suspicion(optional=True).columns) == list(RunDir.SUSPICION_CORE)
    written.drop(columns=["issue_step"]).to_parquet(run.file("suspicion.parquet"), index=False)
    with pytest.raises(FtvizError, match=f"lacks the columns issue_step; rerun `ftviz detect {run.path}`"):
        run.suspicion(optional=True)
    written[written["id"] < 150].to_parquet(run.file("suspicion.parquet"), index=False)
    with pytest.raises(FtvizError, match="150 rows, not one per probe sample"):
        run.suspicion()


def test_detectors_table_or_none(run):
    table = run.detectors()
    assert table is not None and "suspicion" in set(table["detector"])
    run.file("detectors.parquet").unlink()
    assert run.detectors() is None


def test_class_names_from_the_manifest_else_from_the_samples(run):
    names = run.manifest()["dataset"]["class_names"]
    assert run.class_names() == names
    assert run.class_names(len(names) + 2) == names + [str(len(names)), str(len(names) + 1)]
    edit_manifest(run, lambda m: m["dataset"].pop("class_names"))
    samples = run.samples()
    from_samples = run.class_names()
    for label, name in zip(samples["true_label"], samples["true_class_name"]):
        assert from_samples[label] == name
    assert len(from_samples) == int(samples[["given_label", "true_label"]].to_numpy().max()) + 1
