"""The whole pipeline on real (small) data, the run directory contract, resume and bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ftviz.cli import main
from ftviz.rundir import RunDir
from tests.conftest import tiny_config


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def precision_run(request, tmp_path_factory):
    """The tiny run with the probe embedded in each precision explicitly: "auto" picks bf16 only
    on CPUs with native bf16, so a test on "auto" would cover one path or the other by machine."""
    from ftviz.pipeline import run_experiment

    config = tiny_config(tmp_path_factory.mktemp(f"runs-{request.param}"), train={"embed_precision": request.param})
    return run_experiment(config, progress=False, log=lambda *_: None)


def test_run_directory_contract(precision_run):
    from ftviz.rundir import STAGE_NAMES

    run = precision_run
    manifest = run.manifest()
    assert {stage: info["status"] for stage, info in manifest["stages"].items()} == dict.fromkeys(STAGE_NAMES, "done")
    steps = manifest["snapshot_steps"]
    assert steps == [0, 2, 4, 6, 8, 10, 12]  # 200 // 32 = 6 steps per epoch, 2 epochs
    samples = run.samples()
    n = len(samples)
    assert n == manifest["probe_size"] == 200
    assert samples["is_noisy"].sum() == manifest["noisy_probe_samples"] == 20
    assert (samples["given_label"] != samples["true_label"]).sum() == 20
    embedding, logits = run.load_snapshot(4)
    assert embedding.dtype == np.float16 and embedding.shape == (n, 32)
    assert logits.dtype == np.float16 and logits.shape == (n, 10)
    frames = run.frames()
    assert frames.shape == (7, n, 2) and frames.dtype == np.float32
    scores = run.scores()
    assert len(scores) == 7 * n
    assert sorted(scores["step"].unique()) == steps
    assert scores["outlier_score"].between(0, 1).all()
    metrics = run.metrics()
    assert metrics[metrics.split == "eval"]["step"].tolist() == steps
    assert metrics[metrics.split == "train"]["step"].tolist() == list(range(1, 13))
    projection = run.projection()
    assert projection["step"].tolist() == steps
    assert np.isnan(projection["disparity_to_previous"].iloc[0])
    assert projection["knn_overlap"].between(0, 1).all()
    assert (run.path / "animation.html").stat().st_size > 1_000_000  # plotly.js inside
    assert not (run.path / "weights" / "latest.pt").exists()  # resume state dropped when done
    assert np.load(run.path / "probe_images.npy").shape == (n, 16, 16, 3)


def test_final_weights_reproduce_the_last_snapshot(precision_run):
    """weights/final.pt loaded into a model built by name from run.json gives the last
    snapshot's embeddings and logits again, in the precision the run used."""
    import torch

    from ftviz.embed import probe_forward, resolve_precision
    from ftviz.models import create_model

    run = precision_run
    manifest = run.manifest()
    config, last = manifest["config"], manifest["snapshot_steps"][-1]
    state = torch.load(run.weights_dir / "final.pt", map_location="cpu", weights_only=True)
    assert state["step"] == last and state["config"] == config

    def model_from_run_json():
        return create_model(config["model"]["name"], num_classes=manifest["model"]["num_classes"],
                            image_size=config["data"]["image_size"], pretrained=config["model"]["pretrained"],
                            **config["model"]["options"])

    def probe(model):
        dtype = resolve_precision(config["train"]["embed_precision"], torch.device("cpu"), inference=True)
        assert dtype is (torch.bfloat16 if config["train"]["embed_precision"] == "bf16" else None)
        images = torch.from_numpy(run.probe_images())
        return probe_forward(model, images, batch_size=config["train"]["eval_batch_size"], dtype=dtype)

    model = model_from_run_json()
    model.load_state_dict(state["model"])
    embedding, logits = probe(model)
    stored_embedding, stored_logits = run.load_snapshot(last)
    np.testing.assert_array_equal(embedding, stored_embedding)
    np.testing.assert_array_equal(logits, stored_logits)
    # and the check can fail: the weights at initialisation give other embeddings
    untrained, _ = probe(model_from_run_json())
    assert np.abs(untrained.astype(np.float32) - stored_embedding.astype(np.float32)).max() > 0.1


def test_snapshots_are_captured_from_the_live_model(tiny_run):
    """Eval accuracy in metrics.parquet is recomputed from the stored logits."""
    metrics = tiny_run.metrics()
    samples = tiny_run.samples()
    for step in (0, 12):
        _, logits = tiny_run.load_snapshot(step)
        row = metrics[(metrics.split == "eval") & (metrics.step == step)].iloc[0]
        predicted = logits.astype(np.float32).argmax(1)
        assert row["true_accuracy"] == pytest.approx((predicted == samples["true_label"]).mean())
    # The synthetic classes are easy: twelve steps must visibly separate them.
    evals = metrics[metrics.split == "eval"]
    assert evals["true_accuracy"].iloc[-1] > evals["true_accuracy"].iloc[0] + 0.3
    assert evals["loss"].iloc[-1] < evals["loss"].iloc[0]


def test_stage_reruns_alone_and_invalidates_downstream(tiny_run, tmp_path, capsys):
    run_path = tmp_path / "copy"
    shutil.copytree(tiny_run.path, run_path)
    assert main(["score", str(run_path), "-q", "--set", "score.k=3"]) == 0
    run = RunDir(run_path)
    assert run.stage_status("score") == "done"
    assert run.manifest()["stages"]["score"]["k"] == 3
    # Only the stages that read scores.parquet are stale: the projection does not read it.
    assert run.stage_status("project") == "done"
    assert run.stage_status("render") == "stale"
    assert run.manifest()["stages"]["render"]["because"] == "score was redone"
    assert main(["project", str(run_path), "-q"]) == 0
    assert run.stage_status("score") == "done"
    assert main(["render", str(run_path), "-q"]) == 0
    assert run.stage_status("render") == "done"
    assert run.manifest()["stages"]["render"]["seconds"] >= 0


def test_stage_table_decides_what_goes_stale():
    from ftviz.rundir import STAGE_NAMES, stages_reading

    assert stages_reading("train") == [name for name in STAGE_NAMES if name != "train"]
    assert "project" not in stages_reading("score")
    assert "render" in stages_reading("score") and "render" in stages_reading("project")
    assert stages_reading("render") == []


def test_bad_stage_settings_fail_before_any_work(tiny_run, tmp_path, capsys):
    run_path = tmp_path / "copy"
    shutil.copytree(tiny_run.path, run_path)
    before = (run_path / "frames.npy").read_bytes()
    assert main(["project", str(run_path), "-q", "--set", "project.reference=bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "project.reference" in err and "Traceback" not in err
    run = RunDir(run_path)
    assert run.stage_status("project") == "done" and run.stage_status("render") == "done"
    assert (run_path / "frames.npy").read_bytes() == before


def test_a_stage_that_raises_is_marked_failed_with_its_error(tiny_run, tmp_path, capsys):
    run_path = tmp_path / "copy"
    shutil.copytree(tiny_run.path, run_path)
    run = RunDir(run_path)
    last = run.snapshot_steps()[-1]
    (run.snapshots_dir / f"step-{last:07d}.npz").write_bytes(b"not a zip file")
    assert main(["score", str(run_path), "-q"]) == 2
    err = capsys.readouterr().err
    entry = run.manifest()["stages"]["score"]
    assert entry["status"] == "failed"
    assert entry["error"] in err and "corrupt" in entry["error"]
    assert run.stage_status("render") == "stale"  # it read the scores being replaced
    assert main(["render", str(run_path), "-q"]) == 2
    assert "stage 'score' is failed" in capsys.readouterr().err


def test_a_stage_left_running_by_a_dead_process_reads_interrupted(tiny_run, tmp_path):
    import socket
    import subprocess

    run_path = tmp_path / "copy"
    shutil.copytree(tiny_run.path, run_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    run = RunDir(run_path)
    manifest = json.loads(run.manifest_path.read_text())
    manifest["stages"]["score"] = {"status": "running", "pid": dead.pid, "host": socket.gethostname()}
    run.manifest_path.write_text(json.dumps(manifest))
    assert run.stage_status("score") == "interrupted"


def test_interrupted_training_resumes_to_the_same_result(tmp_path, monkeypatch):
    """Ctrl-C inside the step-8 snapshot: the resume state stays the one saved between steps
    (end of epoch 1, step 6), and the resumed run equals a straight one exactly."""
    import torch

    from ftviz.models.vit import ViTProbe
    from ftviz.pipeline import run_experiment

    reference = run_experiment(tiny_config(tmp_path, name="straight"), progress=False, log=lambda *_: None)

    def interrupt_at_step_8(self, run, step):
        if step == 8:
            raise KeyboardInterrupt

    config = tiny_config(tmp_path, name="interrupted")
    monkeypatch.setattr(ViTProbe, "on_snapshot", interrupt_at_step_8, raising=False)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, progress=False, log=lambda *_: None)
    run = RunDir(tmp_path / "interrupted")
    assert run.stage_status("train") == "interrupted"
    assert run.manifest()["snapshot_steps"] == [0, 2, 4, 6, 8]
    assert torch.load(run.weights_dir / "latest.pt", weights_only=False)["step"] == 6
    monkeypatch.undo()
    run_experiment(config, progress=False, log=lambda *_: None)
    assert run.manifest()["snapshot_steps"] == [0, 2, 4, 6, 8, 10, 12]
    for step in run.manifest()["snapshot_steps"]:
        for resumed, straight in zip(run.load_snapshot(step), reference.load_snapshot(step)):
            np.testing.assert_array_equal(resumed, straight)
    pd.testing.assert_frame_equal(run.metrics(), reference.metrics())
    np.testing.assert_array_equal(run.frames(), reference.frames())


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("ftviz: error: ")
    return err


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["run", "--set", "train.epoch=1"]) == 2
    assert "unknown config key 'train.epoch'" in _one_line_error(capsys)
    assert main(["run", "--set", "model.name=resnet9000", "--set", f"out_dir={tmp_path}"]) == 2
    assert "unknown model 'resnet9000'" in _one_line_error(capsys)
    assert main(["score", str(tmp_path / "nowhere")]) == 2
    assert "no run directory" in _one_line_error(capsys)
    assert not (tmp_path / "vit-digits").exists()  # nothing half-made


def test_one_class_dataset_is_refused(tmp_path, capsys):
    from ftviz.data import ImageSet, register_source

    @register_source("one_class_for_test")
    def _one_class(path):
        return {"train": ImageSet(np.zeros((10, 8, 8, 3), np.uint8), np.zeros(10, np.int64), ["a", "b"]), "test": None}

    assert main(["run", "--set", "data.dataset=one_class_for_test", "--set", f"out_dir={tmp_path}"]) == 2
    assert "only one class" in _one_line_error(capsys)
    assert not any(tmp_path.iterdir())


def test_run_from_another_version_is_refused(tiny_run, tmp_path, capsys):
    run_path = tmp_path / "old"
    shutil.copytree(tiny_run.path, run_path)
    manifest = json.loads((run_path / "run.json").read_text())
    manifest["format_version"] = 0
    (run_path / "run.json").write_text(json.dumps(manifest))
    assert main(["project", str(run_path)]) == 2
    assert "run format 0" in _one_line_error(capsys)


def test_finished_run_is_never_overwritten(tiny_run, capsys):
    config_path = tiny_run.path.parent
    before = (tiny_run.path / "frames.npy").read_bytes()
    assert main(["run", "--set", f"out_dir={config_path}", "--set", f"name={tiny_run.path.name}"]) == 2
    assert "already holds a finished run" in _one_line_error(capsys)
    assert (tiny_run.path / "frames.npy").read_bytes() == before


def test_corrupt_snapshot_is_reported(tiny_run, tmp_path, capsys):
    run_path = tmp_path / "corrupt"
    shutil.copytree(tiny_run.path, run_path)
    (run_path / "snapshots" / "step-0000004.npz").write_bytes(b"not a zip")
    assert main(["score", str(run_path), "-q"]) == 2
    assert "step-0000004.npz is corrupt" in _one_line_error(capsys)
    assert RunDir(run_path).stage_status("score") != "done"
