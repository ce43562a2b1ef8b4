"""The recorder: what one snapshot writes, resume up to a step, finish, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftviz import distributed
from ftviz.embed import probe_forward
from ftviz.errors import FtvizError
from ftviz.models import create_model
from ftviz.recorder import Recorder, probe_metrics
from ftviz.rundir import RunDir
from tests.conftest import TINY_VIT


@pytest.fixture(scope="module")
def probe():
    from ftviz.data import load_digits_images

    digits = load_digits_images(16)
    chosen = np.random.default_rng(0).choice(len(digits), 80, replace=False)
    true = digits.labels[chosen]
    given = true.copy()
    given[:8] = (given[:8] + 1) % 10  # eight flipped labels
    return digits.images[chosen], given, true, digits.class_names


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("vit_tiny", num_classes=10, image_size=16, **TINY_VIT)


def make_recorder(tmp_path, probe, **kwargs) -> Recorder:
    images, given, true, names = probe
    recorder = Recorder(tmp_path / "run", probe_images=images, probe_labels=given, probe_true_labels=true,
                        class_names=names, precision="fp32", **kwargs)
    recorder.config.score.k = 5
    recorder.config.train.follow = False  # the follower with the Recorder: tests/test_follow.py
    return recorder


def test_snapshot_writes_the_file_the_metrics_row_and_the_step(tmp_path, probe, model):
    images, given, true, _ = probe
    recorder = make_recorder(tmp_path, probe)
    recorder.create(model)
    run = recorder.run
    np.testing.assert_array_equal(run.probe_images(), images)
    np.testing.assert_array_equal(run.samples()["true_label"], true)
    assert run.manifest()["noisy_probe_samples"] == 8 and run.manifest()["snapshot_steps"] == []

    recorder.snapshot(model, 0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    embedding, logits = recorder.snapshot(model, 7, epoch=0.5, learning_rate=1e-3)
    direct, direct_logits = probe_forward(model, torch.from_numpy(images), dtype=None)
    np.testing.assert_array_equal(run.load_snapshot(7)[0], direct)
    np.testing.assert_array_equal(embedding, direct)
    assert run.manifest()["snapshot_steps"] == [0, 7]

    metrics = run.metrics()
    assert metrics["split"].tolist() == ["probe", "probe"] and metrics["step"].tolist() == [0, 7]
    row = metrics.iloc[1]
    expected = probe_metrics(direct_logits, given, true)
    assert row["loss"] == pytest.approx(expected["loss"]) and row["accuracy"] == expected["accuracy"]
    assert row["true_accuracy"] == expected["true_accuracy"]
    assert (row["epoch"], row["learning_rate"]) == (0.5, 1e-3)
    assert np.isnan(metrics.iloc[0]["epoch"])


def test_log_rows_and_the_eval_split(tmp_path, probe, model):
    recorder = make_recorder(tmp_path, probe, probe_split="eval")
    recorder.create(model)
    recorder.snapshot(model, 0)
    recorder.log(1, loss=2.5, learning_rate=1e-4, epoch=0.1)
    recorder.log(2, loss=2.0, grad_norm=3.0)
    recorder.snapshot(model, 2)
    metrics = recorder.run.metrics()
    assert list(zip(metrics["step"], metrics["split"])) == [(0, "eval"), (1, "train"), (2, "train"), (2, "eval")]
    assert metrics.columns.tolist()[:7] == ["step", "epoch", "split", "loss", "accuracy", "true_accuracy", "learning_rate"]
    assert metrics["grad_norm"].iloc[2] == 3.0 and np.isnan(metrics["grad_norm"].iloc[1])


def test_restore_keeps_what_was_written_up_to_a_step(tmp_path, probe, model):
    recorder = make_recorder(tmp_path, probe)
    recorder.create(model)
    for step in (0, 5, 10):
        recorder.snapshot(model, step, epoch=step / 10)
        recorder.log(step + 1, loss=1.0 / (step + 1))
    recorder.write_metrics()
    written = recorder.rows

    again = make_recorder(tmp_path, probe)
    assert again.restore(5) == [0, 5]
    assert [(r["step"], r["split"]) for r in again.rows] == [(1, "train"), (0, "probe"), (5, "probe")]
    assert again.restore() == [0, 5, 10] and len(again.rows) == len(written)
    # Trainer-style: the caller's own log rows replace the file's
    again.restore(5, logged=[{"step": 3, "split": "train", "loss": 0.0}])
    assert [(r["step"], r["split"]) for r in again.rows] == [(3, "train"), (0, "probe"), (5, "probe")]

    # a metrics file lost (or older than run.json): probe rows come back from the stored logits
    recorder.run.file("metrics.parquet").unlink()
    again.restore()
    for step in (0, 5, 10):
        row = next(r for r in again.rows if r["step"] == step)
        _, logits = recorder.run.load_snapshot(step)
        assert row["loss"] == pytest.approx(probe_metrics(logits, probe[1], probe[2])["loss"])


def test_a_step_written_again_replaces_its_row(tmp_path, probe, model):
    """A process killed after the snapshot file but before run.json redoes that step on resume."""
    recorder = make_recorder(tmp_path, probe)
    recorder.create(model)
    recorder.snapshot(model, 0)
    recorder.snapshot(model, 4)
    recorder.snapshot(model, 4)
    metrics = recorder.run.metrics()
    assert metrics["step"].tolist() == [0, 4] and recorder.run.manifest()["snapshot_steps"] == [0, 4]


def test_finish_runs_the_later_stages(tmp_path, probe, model):
    recorder = make_recorder(tmp_path, probe)
    recorder.create(model)
    for step in (0, 1, 2):
        recorder.snapshot(model, step)
    run = recorder.finish(progress=False, log=lambda *_: None)
    stages = run.manifest()["stages"]
    assert all(entry["status"] == "done" for entry in stages.values()), stages
    assert stages["train"]["snapshots"] == 3
    assert run.frames().shape == (3, 80, 2)
    assert sorted(run.scores()["step"].unique()) == [0, 1, 2]


def test_non_finite_embeddings_are_refused_and_not_written(tmp_path, probe, model):
    recorder = make_recorder(tmp_path, probe)
    recorder.create(model)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(FtvizError, match="at step 3 are not finite"):
        recorder.snapshot(model, 3)
    assert not (recorder.run.snapshots_dir / "step-0000003.npz").exists()
    assert recorder.run.manifest()["snapshot_steps"] == []


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "probe_images": a["probe_images"].astype(np.float32)}, "must be uint8 (N, H, W, 3)"),
    (lambda a: {**a, "probe_images": a["probe_images"][..., 0]}, "must be uint8 (N, H, W, 3)"),
    (lambda a: {**a, "probe_labels": a["probe_labels"][:-1]}, "probe_labels must be 80 integer labels"),
    (lambda a: {**a, "probe_labels": a["probe_labels"].astype(float)}, "probe_labels must be 80 integer labels"),
    (lambda a: {**a, "class_names": a["class_names"][:5]}, "but there are 5 class_names"),
    (lambda a: {**a, "probe_true_labels": -a["probe_labels"] - 1}, "probe_true_labels run from"),
    (lambda a: {**a, "probe_images": a["probe_images"][:1], "probe_labels": a["probe_labels"][:1]}, "at least 2 images"),
])
def test_bad_probe_arrays_are_one_line_errors(tmp_path, probe, change, message):
    images, given, _, names = probe
    arguments = change({"probe_images": images, "probe_labels": given, "class_names": names})
    with pytest.raises(FtvizError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        Recorder(tmp_path / "run", **arguments)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_probe_metrics_by_hand():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    given, true = np.array([0, 0, 0]), np.array([0, 1, 0])
    metrics = probe_metrics(logits.astype(np.float16), given, true)
    expected_loss = -np.mean([np.log(np.exp(2) / (np.exp(2) + 1)), np.log(1 / (1 + np.e)), np.log(np.exp(3) / (np.exp(3) + 1))])
    assert metrics["loss"] == pytest.approx(expected_loss)
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["true_accuracy"] == 1.0


def test_distributed_helpers_are_no_ops_in_one_process():
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main()
    assert distributed.shard_bounds(10) == (0, 10, 10)
    rows = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather_rows(rows, 3) is rows
    assert distributed.on_main(lambda x: x + 1, 1) == 2
    assert distributed.mean_across(2.5, "cpu") == 2.5
    with pytest.raises(FtvizError, match="refused"):
        distributed.on_main(lambda: (_ for _ in ()).throw(FtvizError("refused")))


def test_recorder_accepts_a_run_dir_object(tmp_path, probe):
    images, given, _, names = probe
    recorder = Recorder(RunDir(tmp_path / "x"), probe_images=images, probe_labels=given, class_names=names)
    assert recorder.run.path == tmp_path / "x" and recorder.config.name == "x"
    assert recorder.config.data.noise_rate == 0.0 and recorder.probe_true_labels is recorder.probe_labels
