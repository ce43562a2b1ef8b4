"""The whole pipeline on real (small) data, the run directory contract, resume and bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ftviz.cli import main
from ftviz.rundir import RunDir
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory) -> dict:
    """The tiny run with the probe embedded in each precision explicitly: "auto" picks bf16 only
    on CPUs with native bf16, so a test on "auto" would cover one path or the other by machine."""
    from ftviz.pipeline import run_experiment

    return {precision: run_experiment(tiny_config(tmp_path_factory.mktemp(f"runs-{precision}"),
                                                  train={"embed_precision": precision}),
                                      progress=False, log=lambda *_: None)
            for precision in ("fp32", "bf16")}


@pytest.fixture(params=["fp32", "bf16"])
def precision_run(request, precision_runs):
    return precision_runs[request.param]


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


def test_bf16_snapshots_differ_from_fp32_within_tolerance(precision_runs):
    """The two runs train alike (training precision is fp32 on a CPU) and differ only in how the
    probe is embedded: bf16 must change the stored numbers, and only by bf16's rounding."""
    fp32, bf16 = precision_runs["fp32"], precision_runs["bf16"]
    assert fp32.snapshot_steps() == bf16.snapshot_steps()
    for step in fp32.snapshot_steps():
        for exact, rounded in zip(fp32.load_snapshot(step), bf16.load_snapshot(step)):
            exact, rounded = exact.astype(np.float32), rounded.astype(np.float32)
            assert not np.array_equal(exact, rounded), f"bf16 was ignored at step {step}"
            np.testing.assert_allclose(rounded, exact, rtol=0, atol=0.05 * np.abs(exact).max())


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


def test_interrupted_training_resumes_to_the_same_result(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C inside the step-8 snapshot: the resume state stays the one saved between steps
    (end of epoch 1, step 6), and the resumed run equals a straight one exactly."""
    import torch

    from ftviz.models.vit import ViTProbe
    from ftviz.pipeline import run_experiment

    reference = tiny_run  # the same config, never stopped

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
    assert torch.load(run.weights_dir / "latest.pt", weights_only=True)["step"] == 6
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


# ---- the training loop ------------------------------------------------------------------------
def _tiny_run_args(out_dir, name: str, *settings: str) -> list[str]:
    """``ftviz run`` with tiny_config's settings (checked against tiny_run below), then ``settings``."""
    from tests.conftest import TINY_VIT

    options = ", ".join(f"{key}={value}" for key, value in TINY_VIT.items())
    values = [f"out_dir={out_dir}", f"name={name}", "data.dataset=synthetic", "data.train_size=200",
              "data.image_size=16", "data.noise_rate=0.1", "model.name=vit_tiny", f"model.options={{{options}}}",
              "train.epochs=2", "train.batch_size=32", "train.lr=3e-3", "train.snapshot_every=2",
              "train.device=cpu", "train.follow=false", "score.k=5", *settings]
    return ["run", "-q", *[part for value in values for part in ("--set", value)]]


def _stop_with_sigterm(monkeypatch, point: str, args: list[str]) -> int:
    """``ftviz run`` in this process, sending itself SIGTERM at the test hook ``point``."""
    from ftviz.rundir import KILL_AT_ENV

    with monkeypatch.context() as patch:
        patch.setenv(KILL_AT_ENV, point)
        patch.setenv("FTVIZ_TEST_KILL_SIGNAL", "SIGTERM")
        return main(args)


def _train_only(out_dir, name: str = "tiny", **train) -> RunDir:
    """tiny_config with ``train`` settings, trained by ftviz.train.train alone (no later stage)."""
    import torch

    from ftviz.data import load_splits
    from ftviz.models import create_model
    from ftviz.runs import Probe, new_run_manifest, open_run
    from ftviz.train import train as train_loop

    config = tiny_config(out_dir, name=name, train=train)
    splits = load_splits(config.data, seed=config.seed)
    torch.manual_seed(config.seed)
    model = create_model(config.model.name, num_classes=splits.num_classes, image_size=config.data.image_size,
                         pretrained=config.model.pretrained, **config.model.options)
    probe = Probe.from_splits(splits)
    run, _ = open_run(config.run_dir, config=config, probe=probe,
                      manifest=lambda: new_run_manifest(config, probe, model, train_size=len(splits.train)))
    train_loop(run, config, splits, model, progress=False)
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``trained(**train)``: a run trained alone with those settings, made once per module."""
    made = {}

    def get(**train) -> RunDir:
        key = tuple(sorted(train.items()))
        if key not in made:
            made[key] = _train_only(tmp_path_factory.mktemp("train"), **train)
        return made[key]

    return get


def _weights(run: RunDir) -> dict:
    import torch

    return torch.load(run.weights_dir / "final.pt", map_location="cpu", weights_only=True)["model"]


def _largest_difference(a: dict, b: dict) -> float:
    return max((a[name].float() - b[name].float()).abs().max().item() for name in a)


def _train_losses(run: RunDir) -> np.ndarray:
    metrics = run.metrics()
    return metrics[metrics.split == "train"]["loss"].to_numpy()


def test_grad_accum_gives_the_update_of_the_whole_batch(trained):
    """Two micro-batches of 32 accumulated = one batch of 64 (the same 64 samples, in the same
    order), to float rounding; a plain batch of 32 is another update (so the check can fail)."""
    whole = trained(batch_size=64, max_steps=2, precision="fp32")
    accumulated = trained(batch_size=32, grad_accum=2, max_steps=2, precision="fp32")
    half = trained(batch_size=32, max_steps=2, precision="fp32")
    np.testing.assert_allclose(_train_losses(accumulated), _train_losses(whole), rtol=1e-5)
    assert _largest_difference(_weights(accumulated), _weights(whole)) < 1e-5
    assert _largest_difference(_weights(half), _weights(whole)) > 1e-3


def test_max_steps_trains_exactly_that_many_and_snapshots_the_last(trained):
    run = trained(max_steps=3, precision="fp32", save_weights="all")
    metrics = run.metrics()
    assert metrics[metrics.split == "train"]["step"].tolist() == [1, 2, 3]
    assert metrics[metrics.split == "eval"]["step"].tolist() == [0, 2, 3]
    assert run.manifest()["snapshot_steps"] == [0, 2, 3]  # every 2, and the last
    assert run.manifest()["stages"]["train"]["total_steps"] == 3
    import torch

    assert torch.load(run.weights_dir / "final.pt", weights_only=True)["step"] == 3


def test_save_weights_all_and_none_write_exactly_those_files(trained):
    every = trained(max_steps=3, precision="fp32", save_weights="all")
    assert sorted(p.name for p in every.weights_dir.iterdir()) == [
        "final.pt", "step-0000000", "step-0000002", "step-0000003"]
    assert all(any(folder.iterdir()) for folder in every.weights_dir.glob("step-*"))
    # 7 steps: past the end of epoch 1 (step 6), where "latest" writes its resume state
    none = trained(max_steps=7, save_weights="none")
    assert not none.weights_dir.exists() or not any(none.weights_dir.iterdir())
    assert none.stage_status("train") == "done"


def test_bf16_training_changes_the_numbers_within_tolerance(trained):
    """Training under bf16 autocast: the step-1 loss (same initial weights, same batch) and
    the weights after 3 steps differ from fp32's, by bf16's rounding only."""
    fp32 = trained(max_steps=3, precision="fp32", save_weights="all")
    bf16 = trained(max_steps=3, precision="bf16")
    exact, rounded = _train_losses(fp32), _train_losses(bf16)
    assert exact[0] != rounded[0], "bf16 was ignored"
    np.testing.assert_allclose(rounded, exact, rtol=1e-2)
    assert 0 < _largest_difference(_weights(bf16), _weights(fp32)) < 0.05


def test_sigterm_between_steps_saves_that_step_and_resumes_from_it(tiny_run, tmp_path, monkeypatch, capsys):
    """SIGTERM between optimizer steps 3 and 4 (no snapshot in progress, mid-epoch): exit 143,
    latest.pt holds step 3, another config is refused with one line, and the rerun goes on
    from step 3 (the snapshots before it are kept, not redone) to tiny_run's numbers exactly."""
    import torch

    args = _tiny_run_args(tmp_path, "stopped")
    assert _stop_with_sigterm(monkeypatch, "step:3", args) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == "ftviz: terminated; rerun the same command to resume"
    run = RunDir(tmp_path / "stopped")
    ours, reference = run.manifest()["config"], tiny_run.manifest()["config"]
    assert {**ours, "name": "", "out_dir": ""} == {**reference, "name": "", "out_dir": ""}
    assert run.stage_status("train") == "interrupted"
    assert run.manifest()["snapshot_steps"] == [0, 2]
    state = torch.load(run.weights_dir / "latest.pt", weights_only=True)
    assert state["step"] == 3
    assert [row["step"] for row in state["metrics"] if row["split"] == "train"] == [1, 2, 3]
    kept = {step: (run.snapshots_dir / f"step-{step:07d}.npz").stat().st_mtime_ns for step in (0, 2)}

    saved = (run.weights_dir / "latest.pt").read_bytes()
    assert main(args + ["--set", "train.lr=1e-3"]) == 2
    error = _one_line_error(capsys)
    assert "unfinished run with another config" in error and "--force" in error
    assert (run.weights_dir / "latest.pt").read_bytes() == saved

    assert main(args) == 0
    assert {step: (run.snapshots_dir / f"step-{step:07d}.npz").stat().st_mtime_ns for step in (0, 2)} == kept
    assert run.manifest()["snapshot_steps"] == tiny_run.manifest()["snapshot_steps"]
    for step in run.manifest()["snapshot_steps"]:
        for resumed, straight in zip(run.load_snapshot(step), tiny_run.load_snapshot(step)):
            np.testing.assert_array_equal(resumed, straight)
    pd.testing.assert_frame_equal(run.metrics(), tiny_run.metrics())


@pytest.fixture(scope="module")
def stopped_after_a_timed_save(tmp_path_factory):
    """A run whose resume state is saved every step (RESUME_EVERY_S = 0), stopped by SIGTERM
    just after the first one lands: inside step 1, so the stop itself saves nothing."""
    from ftviz import train

    out = tmp_path_factory.mktemp("timed")
    args = _tiny_run_args(out, "timed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "RESUME_EVERY_S", 0.0)
        assert _stop_with_sigterm(patch, "wrote:latest.pt", args) == 143
    return RunDir(out / "timed")


def test_resume_state_is_saved_mid_epoch_every_resume_every_s(stopped_after_a_timed_save):
    """Epoch ends are at steps 6 and 12; with RESUME_EVERY_S = 0 the first state is step 1's,
    and it is plain data (weights_only loads it)."""
    import torch

    run = stopped_after_a_timed_save
    state = torch.load(run.weights_dir / "latest.pt", weights_only=True)
    assert state["step"] == 1 and state["total_steps"] == 12
    assert [(row["step"], row["split"]) for row in state["metrics"]] == [(0, "eval"), (1, "train")]
    assert state["torch_rng"].dtype == torch.uint8
    assert run.stage_status("train") == "interrupted"


class _RunsCode:
    """Pickles as a call to os.mkdir: loading it with weights_only=False makes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("damage", ["pickled code", "truncated"])
def test_unsafe_or_damaged_resume_state_is_refused_with_one_line(stopped_after_a_timed_save, tmp_path,
                                                                 capsys, damage):
    import torch

    stopped = stopped_after_a_timed_save
    # a copy of the stopped run, its run.json moved to the copy's out_dir (part of the config)
    shutil.copytree(stopped.path, tmp_path / "timed")
    run = RunDir(tmp_path / "timed")
    manifest = json.loads(run.manifest_path.read_text())
    manifest["config"]["out_dir"] = str(tmp_path)
    run.manifest_path.write_text(json.dumps(manifest))
    args = _tiny_run_args(tmp_path, "timed")
    latest = run.weights_dir / "latest.pt"
    marker = tmp_path / "code-ran"
    if damage == "pickled code":
        state = torch.load(latest, weights_only=True)
        state["metrics"].append(_RunsCode(marker))
        torch.save(state, latest)
    else:
        latest.write_bytes(latest.read_bytes()[:1000])
    before = run.manifest_path.read_bytes()
    assert main(args) == 2
    error = _one_line_error(capsys)
    assert str(latest) in error and "damaged" in error and "--force" in error
    assert not marker.exists()
    assert run.manifest_path.read_bytes() == before  # refused before the train stage started
    if damage == "pickled code":  # the file does run code when loaded the unsafe way
        torch.load(latest, weights_only=False)
        assert marker.is_dir()


def test_nan_loss_is_one_line_naming_the_step(tmp_path, capsys):
    assert main(_tiny_run_args(tmp_path, "diverged", "train.lr=1e9", "train.max_steps=4")) == 2
    error = _one_line_error(capsys)
    assert error == "ftviz: error: the training loss became nan at step 2: lower train.lr"
    train_stage = RunDir(tmp_path / "diverged").manifest()["stages"]["train"]
    assert train_stage["status"] == "failed" and train_stage["error"] in error


def test_train_seed_retrains_the_same_labels_differently(precision_runs, tmp_path):
    """train.seed changes the training's randomness (initial weights, batch order), never the
    split or the flips; -1 (the default) is the run's seed."""
    from ftviz.pipeline import run_experiment

    base = precision_runs["fp32"]
    runs = {seed: run_experiment(tiny_config(tmp_path / f"s{seed}", train={"embed_precision": "fp32", "seed": seed}),
                                 progress=False, log=lambda *_: None)
            for seed in (0, 1)}
    losses = {name: run.metrics().query("split == 'train'")["loss"].to_numpy()
              for name, run in (("base", base), *runs.items())}
    np.testing.assert_array_equal(losses[0], losses["base"])  # train.seed 0 is the run's seed 0
    assert not np.allclose(losses[1], losses["base"])
    for run in runs.values():
        pd.testing.assert_frame_equal(run.samples(), base.samples())
        np.testing.assert_array_equal(run.read_parquet("train_samples.parquet")["given_label"],
                                      base.read_parquet("train_samples.parquet")["given_label"])
