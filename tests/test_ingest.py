"""ftviz embed: a real transformers.Trainer run with save_steps, ingested into a run directory
that matches its checkpoints and log history; bad input; nothing computed is lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ftviz.cli import main as ftviz_main
from ftviz.errors import FtvizError
from ftviz.ingest import find_checkpoints, metrics_from_log_history
from ftviz.rundir import RunDir
from ftviz.sources import write_cifar10_pickles
from tests.test_sources import cifar_like

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def train_with_trainer(out: Path, model, train_images, labels, processor, *, max_steps: int, save_steps: int,
                       eval_steps: int = 0) -> Path:
    """A few steps of the real HF Trainer with checkpoints, no hub, no reporting, on the CPU."""
    from transformers import Trainer, TrainingArguments

    pixels = processor(list(train_images), return_tensors="pt")["pixel_values"]
    rows = [{"pixel_values": pixels[i], "labels": int(labels[i])} for i in range(len(labels))]
    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, save_strategy="steps", save_steps=save_steps, logging_steps=1,
        eval_strategy="steps" if eval_steps else "no", eval_steps=eval_steps or None,
        per_device_train_batch_size=10, learning_rate=2e-3, warmup_steps=1, report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, save_only_model=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:20], processing_class=processor)
    trainer.train()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """CIFAR-format data (100 train, 30 test) and a tiny ViT fine-tuned on it for 6 steps,
    checkpoints every 2 steps, evaluated every 3, with a non-default processor saved."""
    return tiny_trainer_output(tmp_path_factory.mktemp("ingest"), eval_steps=3)


def tiny_trainer_output(root: Path, *, eval_steps: int = 0) -> dict:
    """A tiny ViT trained by the real Trainer for 6 steps (checkpoints at 2, 4, 6) on
    CIFAR-format pickles written under ``root`` (100 train, 30 test images), with a
    non-default processor saved."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    train, test = cifar_like()
    cifar = write_cifar10_pickles(root / "cifar-10-batches-py", train, test)
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=10, id2label=dict(enumerate(train.class_names)),
                       label2id={n: i for i, n in enumerate(train.class_names)})
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    out = train_with_trainer(root / "vit-out", ViTForImageClassification(config), train.images, train.labels,
                             processor, max_steps=6, save_steps=2, eval_steps=eval_steps)
    return {"root": root, "cifar": cifar, "out": out, "train": train, "test": test}


def embed_args(trained, runs: Path, *extra: str, name: str = "ingested", checkpoints: Path | None = None,
               follow: bool = False) -> list[str]:
    """``ftviz embed`` of the Trainer's checkpoints; the stages after embedding unless ``follow``
    (the follower, a process of its own, is tested on this route by the ``ingested`` run)."""
    return ["embed", "--checkpoints", str(checkpoints or trained["out"]), "--dataset", "cifar10",
            "--data-path", str(trained["cifar"]), "--name", name, "--out-dir", str(runs), "--device", "cpu",
            "--set", "train.embed_precision=fp32", "--set", "score.k=5", "--set", f"train.follow={str(follow).lower()}",
            "-q", *extra]


@pytest.fixture(scope="module")
def ingested(trained, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert ftviz_main(embed_args(trained, runs, follow=True)) == 0
    return RunDir(runs / "ingested")


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ftviz: error: ")
    return lines[0]


def test_frames_match_checkpoints(trained, ingested):
    on_disk = sorted(int(p.name.split("-")[1]) for p in trained["out"].glob("checkpoint-*"))
    assert on_disk == [2, 4, 6]
    assert ingested.snapshot_steps() == on_disk  # no step 0: the Trainer saves none
    manifest = ingested.manifest()
    assert all(stage["status"] == "done" for stage in manifest["stages"].values())
    assert manifest["source"]["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert manifest["model"]["model_type"] == "vit" and manifest["noise_rate"] == 0.0
    assert ingested.frames().shape == (3, 30, 2)
    assert sorted(ingested.scores()["step"].unique()) == on_disk
    # followed as the checkpoints were embedded (train.follow's default): the follower made the frames
    assert "to step 6" in (ingested.path / "analysis" / "follower.log").read_text()


def test_probe_set_and_samples(trained, ingested):
    np.testing.assert_array_equal(ingested.probe_images(), trained["test"].images)
    samples = ingested.samples()
    np.testing.assert_array_equal(samples["given_label"], trained["test"].labels)
    assert not samples["is_noisy"].any()  # ingestion injects no noise by default


def test_loss_curve_is_the_log_history(trained, ingested):
    state = json.loads((trained["out"] / "checkpoint-6" / "trainer_state.json").read_text())
    history = state["log_history"]
    metrics = ingested.metrics()
    train = metrics[metrics["split"] == "train"]
    expected = [e for e in history if "loss" in e]
    assert len(expected) == 6
    np.testing.assert_array_equal(train["step"], [e["step"] for e in expected])
    np.testing.assert_allclose(train["loss"], [e["loss"] for e in expected], rtol=1e-12)
    np.testing.assert_allclose(train["learning_rate"], [e["learning_rate"] for e in expected], rtol=1e-12)
    np.testing.assert_allclose(train["epoch"], [e["epoch"] for e in expected], rtol=1e-12)
    evals = metrics[metrics["split"] == "eval"]
    np.testing.assert_array_equal(evals["step"], [3, 6])
    np.testing.assert_allclose(evals["loss"], [e["eval_loss"] for e in history if "eval_loss" in e], rtol=1e-12)
    probe = metrics[metrics["split"] == "probe"]
    np.testing.assert_array_equal(probe["step"], [2, 4, 6])
    _, logits = ingested.load_snapshot(6)
    accuracy = (logits.astype(np.float32).argmax(1) == trained["test"].labels).mean()
    assert probe["accuracy"].iloc[-1] == pytest.approx(accuracy)


def test_embeddings_equal_a_direct_forward(trained, ingested):
    """Checkpoint-4 reloaded with from_pretrained and its own saved processor (ImageNet mean
    and std, not ViT's 0.5): the stored float16 snapshot matches its CLS embedding and logits."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    checkpoint = trained["out"] / "checkpoint-4"
    model = ViTForImageClassification.from_pretrained(checkpoint).eval()
    pixels = AutoImageProcessor.from_pretrained(checkpoint)(list(trained["test"].images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = model.vit(pixels).last_hidden_state[:, 0].numpy()
        logits = model(pixel_values=pixels).logits.numpy()
    embedding16, logits16 = ingested.load_snapshot(4)
    np.testing.assert_allclose(embedding16.astype(np.float32), cls, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(logits16.astype(np.float32), logits, rtol=2e-3, atol=2e-3)
    assert ingested.manifest()["source"]["processor"]["mean"] == IMAGENET_MEAN
    # and the frames differ from checkpoint to checkpoint: it is not one model three times
    assert not np.array_equal(ingested.load_snapshot(2)[0], embedding16)


def test_existing_run_is_refused_then_replaced_with_force(trained, ingested, capsys):
    runs = ingested.path.parent
    before = {p: p.read_bytes() for p in ingested.path.rglob("*") if p.is_file()}
    assert ftviz_main(embed_args(trained, runs)) == 2
    assert "already holds a finished run" in one_line_error(capsys)
    assert {p: p.read_bytes() for p in ingested.path.rglob("*") if p.is_file()} == before
    # --force replaces it with an identical ingestion, in a copy so the other tests keep theirs
    copy = runs.parent / "copy-runs"
    shutil.copytree(runs, copy)
    assert ftviz_main(embed_args(trained, copy, "--force")) == 0
    again = RunDir(copy / "ingested")
    assert again.manifest()["created_at"] >= ingested.manifest()["created_at"]
    np.testing.assert_array_equal(again.load_snapshot(6)[1], ingested.load_snapshot(6)[1])


def test_checkpoint_without_weights(trained, tmp_path, capsys):
    out = shutil.copytree(trained["out"], tmp_path / "out")
    (out / "checkpoint-4" / "model.safetensors").unlink()
    assert ftviz_main(embed_args(trained, tmp_path / "runs", checkpoints=out)) == 2
    message = one_line_error(capsys)
    assert "checkpoint-4 has no weights" in message
    assert not (tmp_path / "runs").exists()  # checked before anything was written


def test_head_size_differs_from_dataset(trained, tmp_path, capsys):
    from PIL import Image

    for name in ("a", "b", "c"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(trained["test"].images[i]).save(tmp_path / "imgs" / name / f"{i}.png")
    args = embed_args(trained, tmp_path / "runs")
    args[args.index("cifar10")] = "imagefolder"
    args[args.index(str(trained["cifar"]))] = str(tmp_path / "imgs")
    assert ftviz_main(args) == 2
    message = one_line_error(capsys)
    assert "has 10 outputs but imagefolder has 3 classes" in message
    assert not (tmp_path / "runs").exists()


def test_label_order_differs_from_dataset(trained, tmp_path, capsys):
    out = shutil.copytree(trained["out"], tmp_path / "out")
    for config_path in out.glob("checkpoint-*/config.json"):
        config = json.loads(config_path.read_text())
        names = list(config["id2label"].values())
        config["id2label"] = {str(i): n for i, n in enumerate(reversed(names))}
        config["label2id"] = {n: i for i, n in enumerate(reversed(names))}
        config_path.write_text(json.dumps(config))
    assert ftviz_main(embed_args(trained, tmp_path / "runs", checkpoints=out)) == 2
    assert "labels would be misread" in one_line_error(capsys)


def test_not_a_trainer_folder(tmp_path, trained, capsys):
    (tmp_path / "empty").mkdir()
    assert ftviz_main(embed_args(trained, tmp_path / "runs", checkpoints=tmp_path / "empty")) == 2
    assert "no checkpoint-<step> folders" in one_line_error(capsys)
    assert ftviz_main(embed_args(trained, tmp_path / "runs", checkpoints=tmp_path / "absent")) == 2
    assert "no folder at" in one_line_error(capsys)


@pytest.mark.slow
def test_corrupt_checkpoint_keeps_frames_and_resumes(trained, tmp_path, capsys):
    out = shutil.copytree(trained["out"], tmp_path / "out")
    weights = out / "checkpoint-6" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    runs = tmp_path / "runs"
    assert ftviz_main(embed_args(trained, runs, checkpoints=out)) == 2
    assert "checkpoint-6" in one_line_error(capsys)
    run = RunDir(runs / "ingested")
    assert run.snapshot_steps() == [2, 4] and run.stage_status("train") == "failed"
    first = (run.snapshots_dir / "step-0000002.npz").stat().st_mtime_ns

    weights.write_bytes(good)  # repaired: the same command resumes
    assert ftviz_main(embed_args(trained, runs, checkpoints=out)) == 0
    assert run.snapshot_steps() == [2, 4, 6] and run.stage_status("render") == "done"
    assert (run.snapshots_dir / "step-0000002.npz").stat().st_mtime_ns == first  # not recomputed


def test_one_checkpoint_folder(trained, tmp_path):
    assert ftviz_main(embed_args(trained, tmp_path, checkpoints=trained["out"] / "checkpoint-4")) == 0
    run = RunDir(tmp_path / "ingested")
    assert run.snapshot_steps() == [4]


def rows_in(images: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """For each image, the row of ``pool`` that holds it (-1 where none does)."""
    index = {image.tobytes(): row for row, image in enumerate(pool)}
    return np.array([index.get(image.tobytes(), -1) for image in images])


def test_probe_drawn_from_the_training_split(trained, tmp_path):
    """--probe train --probe-size 20: 20 of the 100 training images, two per class, with their
    labels, and the snapshot rows are those images through the checkpoint's model."""
    from transformers import AutoImageProcessor, ViTForImageClassification

    checkpoint = trained["out"] / "checkpoint-4"
    args = embed_args(trained, tmp_path, "--probe", "train", "--probe-size", "20", checkpoints=checkpoint)
    assert ftviz_main(args) == 0
    run = RunDir(tmp_path / "ingested")
    images, train, test = run.probe_images(), trained["train"], trained["test"]
    assert images.shape == (20, 32, 32, 3)
    rows = rows_in(images, train.images)
    assert (rows >= 0).all() and len(set(rows)) == 20  # drawn from the training split, each once
    assert (rows_in(images, test.images) < 0).all()  # and not from the test split
    labels = run.samples()["given_label"].to_numpy()
    np.testing.assert_array_equal(labels, train.labels[rows])
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10  # stratified
    manifest = run.manifest()
    assert manifest["probe_size"] == 20 and manifest["config"]["data"]["probe"] == "train"
    model = ViTForImageClassification.from_pretrained(checkpoint).eval()
    pixels = AutoImageProcessor.from_pretrained(checkpoint)(list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = model.vit(pixels).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(run.load_snapshot(4)[0].astype(np.float32), cls, rtol=2e-3, atol=2e-3)


def test_probe_size_subsets_the_test_split(trained, tmp_path, capsys):
    """--probe-size 10 of the 30 test images (one per class); more than the split holds is a
    one-line error before anything is written."""
    checkpoint = trained["out"] / "checkpoint-2"
    assert ftviz_main(embed_args(trained, tmp_path / "runs", "--probe-size", "10", checkpoints=checkpoint)) == 0
    run = RunDir(tmp_path / "runs" / "ingested")
    rows = rows_in(run.probe_images(), trained["test"].images)
    assert len(rows) == 10 and (rows >= 0).all() and len(set(rows)) == 10
    labels = run.samples()["given_label"].to_numpy()
    np.testing.assert_array_equal(labels, trained["test"].labels[rows])
    assert sorted(labels.tolist()) == list(range(10))
    assert run.load_snapshot(2)[0].shape == (10, 32)

    args = embed_args(trained, tmp_path / "other", "--probe-size", "31", checkpoints=checkpoint)
    assert ftviz_main(args) == 2
    assert "data.probe_size = 31 but the cifar10 test split" in one_line_error(capsys)
    assert not (tmp_path / "other").exists()


def test_find_checkpoints_orders_by_step(tmp_path):
    for step in (100, 20, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "pytorch_model.bin").write_bytes(b"")
        (tmp_path / f"checkpoint-{step}" / "config.json").write_text("{}")
    (tmp_path / "checkpoint-last").mkdir()  # not a step: ignored
    assert [c.step for c in find_checkpoints(tmp_path)] == [3, 20, 100]


def test_metrics_from_log_history_skips_the_summary():
    history = [
        {"loss": 2.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 1},
        {"eval_loss": 1.5, "eval_accuracy": 0.25, "epoch": 0.5, "step": 1},
        {"train_runtime": 3.0, "train_loss": 2.0, "epoch": 1.0, "step": 2},
    ]
    rows = metrics_from_log_history(history)
    assert [(r["split"], r["step"], r["loss"]) for r in rows] == [("train", 1, 2.0), ("eval", 1, 1.5)]
    assert rows[1]["accuracy"] == 0.25 and np.isnan(rows[1]["learning_rate"])


@pytest.mark.slow
def test_swin_checkpoints(tmp_path, trained):
    """Swin from the same Trainer: embedding = the pooled vector its classifier reads."""
    from transformers import SwinConfig, SwinForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
                        num_labels=10)
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    out = train_with_trainer(tmp_path / "swin-out", SwinForImageClassification(config), trained["train"].images,
                             trained["train"].labels, processor, max_steps=2, save_steps=1)
    assert ftviz_main(embed_args(trained, tmp_path / "runs", name="swin", checkpoints=out)) == 0
    run = RunDir(tmp_path / "runs" / "swin")
    assert run.snapshot_steps() == [1, 2] and run.manifest()["model"]["model_type"] == "swin"
    model = SwinForImageClassification.from_pretrained(out / "checkpoint-2").eval()
    pixels = processor(list(trained["test"].images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = model.swin(pixels).pooler_output.numpy()
        logits = model(pixel_values=pixels).logits.numpy()
    embedding16, logits16 = run.load_snapshot(2)
    assert embedding16.shape == (30, model.config.hidden_size)
    np.testing.assert_allclose(embedding16.astype(np.float32), pooled, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(logits16.astype(np.float32), logits, rtol=2e-3, atol=2e-3)


def test_ingest_function_errors_without_cli(trained, tmp_path):
    from ftviz.config import ExperimentConfig
    from ftviz.ingest import ingest_checkpoints

    config = ExperimentConfig(name="x", out_dir=str(tmp_path))
    config.data.dataset, config.data.path = "cifar10", str(tmp_path / "nowhere")
    with pytest.raises(FtvizError, match="no CIFAR-10 folder"):
        ingest_checkpoints(trained["out"], config, progress=False, log=lambda *_: None)
    assert not (tmp_path / "x").exists()


def test_processor_fallbacks(trained, tmp_path):
    """No preprocessor_config.json in the checkpoints: ViT defaults (0.5), or --processor's."""
    out = shutil.copytree(trained["out"], tmp_path / "out")
    for path in out.glob("checkpoint-*/preprocessor_config.json"):
        path.unlink()
    base = tmp_path / "base-model"
    base.mkdir()
    shutil.copy(trained["out"] / "checkpoint-2" / "preprocessor_config.json", base)

    assert ftviz_main(embed_args(trained, tmp_path / "runs", checkpoints=out)) == 0
    processor = RunDir(tmp_path / "runs" / "ingested").manifest()["source"]["processor"]
    assert processor == {"origin": "defaults", "size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}

    assert ftviz_main(embed_args(trained, tmp_path / "runs", "--processor", str(base), "--force", checkpoints=out)) == 0
    run = RunDir(tmp_path / "runs" / "ingested")
    processor = run.manifest()["source"]["processor"]
    assert processor["origin"] == str(base) and processor["mean"] == IMAGENET_MEAN
    reference = RunDir(tmp_path / "reference")  # the same checkpoints with their own processor saved
    assert ftviz_main(embed_args(trained, tmp_path, name="reference")) == 0
    np.testing.assert_array_equal(run.load_snapshot(4)[0], reference.load_snapshot(4)[0])
