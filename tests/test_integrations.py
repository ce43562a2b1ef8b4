"""FtvizCallback in a real transformers.Trainer; ftviz run and the callback on two processes
(torchrun, gloo) against one; timm models by name; bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ftviz.errors import FtvizError
from ftviz.rundir import RunDir
from tests import forked

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def digits():
    """200 training digits and a disjoint 60-image probe, 32 px RGB."""
    from ftviz.data import load_digits_images

    data = load_digits_images(32)
    order = np.random.default_rng(0).permutation(len(data))
    return {"images": data.images, "labels": data.labels, "names": data.class_names,
            "train": order[60:260], "probe": order[:60]}


def tiny_vit(names, **changes):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    settings = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=len(names), id2label=dict(enumerate(names)),
                    label2id={n: i for i, n in enumerate(names)})
    return ViTForImageClassification(ViTConfig(**{**settings, **changes}))


def train_with_callback(out: Path, model, digits, processor, callback, *, steps: int, save_steps: int = 0,
                        resume: str | None = None, extra_callbacks=()):
    from transformers import Trainer, TrainingArguments

    train = digits["train"]
    pixels = processor(list(digits["images"][train]), return_tensors="pt")["pixel_values"]
    rows = [{"pixel_values": pixels[i], "labels": int(digits["labels"][j])} for i, j in enumerate(train)]
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=10, learning_rate=2e-3, warmup_steps=1,
        logging_steps=1, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, processing_class=processor,
                      callbacks=[callback, *extra_callbacks])
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def make_callback(run_dir, digits, *, follow: bool = False, **kwargs):
    """The callback on the digits probe; the stages after training unless ``follow`` (the
    follower, a process of its own, is tested on this route by the ``trained`` run)."""
    from ftviz.config import ExperimentConfig
    from ftviz.integrations import FtvizCallback

    config = ExperimentConfig(name=Path(run_dir).name, out_dir=str(Path(run_dir).parent))
    config.score.k = 5
    config.train.follow = follow
    probe = digits["probe"]
    return FtvizCallback(run_dir, probe_images=digits["images"][probe], probe_labels=digits["labels"][probe],
                         config=config, precision="fp32", **kwargs)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """Six Trainer steps of a tiny ViT with the callback (every 2 steps) and a processor with
    ImageNet statistics, so the model's own settings visibly matter."""
    from transformers import ViTImageProcessorPil

    root = tmp_path_factory.mktemp("callback")
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    callback = make_callback(root / "run", digits, every=2, follow=True)
    trainer = train_with_callback(root / "hf", tiny_vit(digits["names"]), digits, processor, callback, steps=6)
    return {"trainer": trainer, "run": RunDir(root / "run"), "processor": processor, "root": root}


def test_callback_writes_a_complete_run(trained, digits):
    run = trained["run"]
    manifest = run.manifest()
    assert all(entry["status"] == "done" for entry in manifest["stages"].values()), manifest["stages"]
    assert run.snapshot_steps() == [0, 2, 4, 6]
    assert run.frames().shape == (4, 60, 2)
    assert sorted(run.scores()["step"].unique()) == [0, 2, 4, 6]
    assert (run.path / "animation.html").stat().st_size > 100_000
    np.testing.assert_array_equal(run.probe_images(), digits["images"][digits["probe"]])
    np.testing.assert_array_equal(run.samples()["given_label"], digits["labels"][digits["probe"]])
    assert manifest["model"]["name"] == "vit" and manifest["source"]["kind"] == "hf_trainer_callback"
    assert manifest["source"]["processor"]["mean"] == IMAGENET_MEAN
    assert not (run.path / "weights").exists()  # the Trainer owns the weights
    # followed while the Trainer ran (train.follow's default): the follower made the frames
    assert "to step 6" in (run.path / "analysis" / "follower.log").read_text()


def test_loss_curve_is_the_trainers_log(trained):
    history = [entry for entry in trained["trainer"].state.log_history if "loss" in entry]
    metrics = trained["run"].metrics()
    train = metrics[metrics["split"] == "train"]
    assert train["step"].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(train["loss"], [entry["loss"] for entry in history], rtol=1e-12)
    np.testing.assert_allclose(train["learning_rate"], [entry["learning_rate"] for entry in history], rtol=1e-12)
    probe = metrics[metrics["split"] == "probe"]
    assert probe["step"].tolist() == [0, 2, 4, 6]
    # a probe row carries the learning rate the Trainer logged at its step
    assert probe["learning_rate"].iloc[-1] == pytest.approx(history[-1]["learning_rate"])
    _, logits = trained["run"].load_snapshot(6)
    accuracy = (logits.astype(np.float32).argmax(1) == trained["run"].samples()["given_label"]).mean()
    assert probe["accuracy"].iloc[-1] == pytest.approx(accuracy)


def test_last_snapshot_equals_a_direct_forward_of_the_final_model(trained, digits):
    """The final model, with its processor run the transformers way (PIL, on the CPU)."""
    model = trained["trainer"].model.eval()
    pixels = trained["processor"](list(digits["images"][digits["probe"]]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = model.vit(pixels).last_hidden_state[:, 0].numpy()
        logits = model(pixel_values=pixels).logits.numpy()
    embedding16, logits16 = trained["run"].load_snapshot(6)
    assert cosines(embedding16, cls).min() >= 0.999
    np.testing.assert_allclose(logits16.astype(np.float32), logits, atol=5e-3, rtol=5e-3)
    # and the frames moved: step 0 is another model
    assert cosines(trained["run"].load_snapshot(0)[0], cls).min() < 0.999


def test_a_finished_run_is_refused_then_overwritten(trained, digits, tmp_path):
    import shutil

    from transformers import ViTImageProcessorPil

    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"].path, run_dir)
    before = (run_dir / "frames.npy").read_bytes()
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    with pytest.raises(FtvizError, match="already holds a finished run.*overwrite=True") as raised:
        train_with_callback(tmp_path / "hf", tiny_vit(digits["names"]), digits, processor,
                            make_callback(run_dir, digits, every=1), steps=1)
    assert "\n" not in str(raised.value)
    assert (run_dir / "frames.npy").read_bytes() == before
    train_with_callback(tmp_path / "hf", tiny_vit(digits["names"]), digits, processor,
                        make_callback(run_dir, digits, every=1, overwrite=True), steps=1)
    run = RunDir(run_dir)
    assert run.snapshot_steps() == [0, 1] and run.stage_status("render") == "done"
    assert run.manifest()["source"]["processor"]["mean"] == [0.5, 0.5, 0.5]


def test_bad_input_is_one_line(digits, tmp_path):
    from transformers import ViTImageProcessorPil

    from ftviz.integrations import FtvizCallback

    probe = digits["probe"]
    with pytest.raises(FtvizError, match="every must be"):
        FtvizCallback(tmp_path / "r", probe_images=digits["images"][probe], probe_labels=digits["labels"][probe], every=0)
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    cases = [
        (dict(class_names=["a", "b", "c"]), "probe_labels run from 0 to 9 but there are 3 class_names"),
        (dict(processor=42), "processor= wants an image processor"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FtvizError, match=message) as raised:
            train_with_callback(tmp_path / "hf", tiny_vit(digits["names"]), digits, processor,
                                make_callback(tmp_path / "r", digits, every=1, **kwargs), steps=1)
        assert "\n" not in str(raised.value)
    assert not (tmp_path / "r").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FtvizError, match="is not an ftviz run"):
        train_with_callback(tmp_path / "hf", tiny_vit(digits["names"]), digits, processor,
                            make_callback(tmp_path / "other", digits, every=1), steps=1)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_callback_with_swin_embeds_the_head_input(digits, tmp_path):
    from transformers import SwinConfig, SwinForImageClassification, ViTImageProcessorPil

    torch.manual_seed(0)
    model = SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                  num_heads=[1, 2], window_size=4, num_labels=10))
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    trainer = train_with_callback(tmp_path / "hf", model, digits, processor,
                                  make_callback(tmp_path / "run", digits, every=2, finish=False), steps=3)
    run = RunDir(tmp_path / "run")
    assert run.snapshot_steps() == [0, 2, 3] and run.stage_status("train") == "done"
    assert run.stage_status("score") == "pending"  # finish=False
    pixels = processor(list(digits["images"][digits["probe"]]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        pooled = trainer.model.eval().swin(pixels).pooler_output.numpy()
    assert cosines(run.load_snapshot(3)[0], pooled).min() >= 0.999


def test_callback_applies_a_cropping_bicubic_processor(digits, tmp_path):
    """ConvNeXt's processor resizes 32 px to 36 (shortest_edge / crop_pct) with bicubic
    resampling and centre-crops 32: the snapshots match the classifier input it produces."""
    from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessorPil

    torch.manual_seed(0)
    model = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2,
                                                          num_labels=10, image_size=32))
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 32})
    assert processor.crop_pct == 0.875 and int(processor.resample) == 3
    trainer = train_with_callback(tmp_path / "hf", model, digits, processor,
                                  make_callback(tmp_path / "run", digits, every=2, finish=False), steps=2)
    pixels = processor(list(digits["images"][digits["probe"]]), return_tensors="pt")["pixel_values"]
    captured = []
    head = trainer.model.eval().classifier
    handle = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    with torch.no_grad():
        trainer.model(pixel_values=pixels)
    handle.remove()
    assert cosines(RunDir(tmp_path / "run").load_snapshot(2)[0], captured[0].numpy()).min() >= 0.999


@pytest.mark.slow
def test_resumed_trainer_gives_the_uninterrupted_runs_frames(trained, digits, tmp_path):
    """Training stopped at step 5 and resumed from checkpoint-4 keeps the frames before the
    checkpoint and records the rest: every frame and loss equals the uninterrupted run's
    (the ``trained`` fixture: same model, data, processor and seed)."""
    from transformers import TrainerCallback, ViTForImageClassification

    class StopAt5(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise KeyboardInterrupt

    processor = trained["processor"]
    with pytest.raises(KeyboardInterrupt):
        train_with_callback(tmp_path / "hf", tiny_vit(digits["names"]), digits, processor,
                            make_callback(tmp_path / "run", digits, every=2), steps=6, save_steps=2,
                            extra_callbacks=[StopAt5()])
    run = RunDir(tmp_path / "run")
    # "running" by this (live) process; a killed process's run reads "interrupted"
    assert run.manifest()["snapshot_steps"] == [0, 2, 4] and run.stage_status("train") == "running"
    first = (run.snapshots_dir / "step-0000002.npz").stat().st_mtime_ns
    # The model comes from the checkpoint with from_pretrained: transformers 5.24's Trainer
    # resume loads a ViT checkpoint's raw state dict, whose encoder keys it saved under their
    # legacy names, so on its own it would keep the fresh encoder ("There were missing keys in
    # the checkpoint model loaded"); optimizer, schedule, data order and RNG come from the resume.
    checkpoint = tmp_path / "hf" / "checkpoint-4"
    train_with_callback(tmp_path / "hf", ViTForImageClassification.from_pretrained(checkpoint), digits, processor,
                        make_callback(tmp_path / "run", digits, every=2), steps=6, save_steps=2,
                        resume=str(checkpoint))
    straight = trained["run"]
    assert run.snapshot_steps() == straight.snapshot_steps() == [0, 2, 4, 6]
    assert run.stage_status("render") == "done"
    assert (run.snapshots_dir / "step-0000002.npz").stat().st_mtime_ns == first  # kept, not redone
    # Measured: bit-identical here (same process, same threads); the bounds allow float16 rounding.
    for step in run.snapshot_steps():
        embedding, logits = run.load_snapshot(step)
        expected_embedding, expected_logits = straight.load_snapshot(step)
        assert cosines(embedding, expected_embedding).min() >= 1 - 1e-7, step
        np.testing.assert_allclose(logits.astype(np.float32), expected_logits.astype(np.float32), atol=1e-3)
    # and step 6 is not step 4 again: the resumed model trained on
    assert cosines(run.load_snapshot(6)[0], run.load_snapshot(4)[0]).min() < 0.9999
    losses, expected = (r.metrics().query("split == 'train'") for r in (run, straight))
    assert losses["step"].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(losses["loss"], expected["loss"], rtol=1e-6)


# ---- several processes (torchrun, gloo on the CPU) ------------------------------------------
TINY_RUN = [
    "--set", "data.dataset=synthetic", "--set", "data.train_size=200", "--set", "data.image_size=16",
    "--set", "model.options={hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64,patch_size=4}",
    "--set", "train.epochs=2", "--set", "train.lr=3e-3", "--set", "train.snapshot_every=2", "--set", "train.device=cpu",
    "--set", "train.precision=fp32", "--set", "train.embed_precision=fp32", "--set", "score.k=5",
]


def torchrun(*args: str, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (ARGS: ``-m MODULE ...`` or ``SCRIPT ...``).

    The launcher and each rank are processes forked with the libraries already imported
    (tests/forked.py): torchrun starts every rank as ``python -m tests.forked ARGS``.
    """
    rank = ["--no-python", sys.executable, "-m", "tests.forked", *args]
    command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *rank]
    environment = forked.command_env({**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    result = forked.run(command, cwd=cwd, env=environment, timeout=240)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


# Two processes against one, measured on the 2-core CPU: worst per-sample cosine 1 - 1.4e-8
# (ftviz run) and 1 - 3.7e-9 (callback), logits within 2.5e-4 (float16 rounding), losses
# within 1.9e-7 relative. The bounds leave a margin of about 10x.
MIN_COSINE, LOGITS_ATOL, LOSS_RTOL = 1 - 2e-7, 2e-3, 2e-6


def assert_same_frames(one: RunDir, two: RunDir) -> None:
    assert one.snapshot_steps() == two.snapshot_steps()
    for step in one.snapshot_steps():
        (embedding1, logits1), (embedding2, logits2) = one.load_snapshot(step), two.load_snapshot(step)
        assert cosines(embedding1, embedding2).min() >= MIN_COSINE, (step, cosines(embedding1, embedding2).min())
        np.testing.assert_allclose(logits2.astype(np.float32), logits1.astype(np.float32), atol=LOGITS_ATOL)


def assert_same_dynamics(one: RunDir, two: RunDir) -> None:
    """The training dynamics of two processes are one process's: the same (step, id) rows, once
    each, with the same logits (each step's rows compared in id order: the ranks' halves of a
    global batch are gathered, not interleaved as one process read them)."""
    from ftviz.dynamics import load_dynamics

    (ids1, steps1, logits1), (ids2, steps2, logits2) = load_dynamics(one), load_dynamics(two)
    assert len(ids1) > 0 and len(ids2) == len(ids1)
    order1, order2 = np.lexsort((ids1, steps1)), np.lexsort((ids2, steps2))
    np.testing.assert_array_equal(steps2[order2], steps1[order1])
    np.testing.assert_array_equal(ids2[order2], ids1[order1])
    assert len(np.unique(steps1 * 1_000_000 + ids1)) == len(ids1)  # no row twice
    np.testing.assert_allclose(logits2[order2].astype(np.float32), logits1[order1].astype(np.float32),
                               atol=LOGITS_ATOL)
    pd.testing.assert_frame_equal(one.read_parquet("train_samples.parquet"), two.read_parquet("train_samples.parquet"))


@pytest.mark.slow
def test_ftviz_run_on_two_processes_killed_and_resumed_equals_one(tmp_path):
    """torchrun --nproc_per_node 2 ftviz run: the same global batch split over two gloo ranks;
    rank 0 killed just after writing step 10's snapshot, the same command resumes; every frame
    equals a one-process run's, and each file exists once."""
    from ftviz.cli import main

    assert main(["run", *TINY_RUN, "--set", f"out_dir={tmp_path}", "--set", "name=one", "-q"]) == 0
    args = ["-m", "ftviz.cli", "run", *TINY_RUN, "--set", f"out_dir={tmp_path}", "--set", "name=two", "-q"]
    killed = torchrun(*args, cwd=tmp_path, env={"FTVIZ_TEST_KILL_AT": "wrote:step-0000010.npz"}, check=False)
    assert killed.returncode != 0
    two = RunDir(tmp_path / "two")
    assert two.manifest()["snapshot_steps"] == [0, 2, 4, 6, 8]  # step 10's file is there, run.json not yet
    assert (two.weights_dir / "latest.pt").is_file()  # saved at the end of epoch 1 (step 6)
    torchrun(*args, cwd=tmp_path)
    one = RunDir(tmp_path / "one")
    assert_same_frames(one, two)
    assert two.manifest()["stages"]["train"]["processes"] == 2
    assert two.stage_status("render") == "done"
    m1, m2 = one.metrics(), two.metrics()
    assert m2[["step", "split"]].values.tolist() == m1[["step", "split"]].values.tolist()  # no row twice
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=LOSS_RTOL)
    assert not list(two.path.rglob("*.tmp"))
    assert_same_dynamics(one, two)  # each rank's rows gathered and written once, resumed without a row twice


@pytest.mark.slow
def test_callback_on_two_processes_equals_one(tmp_path):
    """The example Trainer script under torchrun (2 x 8 images per step) and as one process (16)."""
    script = str(ROOT / "experiments" / "trainer_callback_example.py")
    # fp32 probes: on a CPU with AMX "auto" is bf16, whose rounding turns the two runs' last-bit
    # weight differences into cosines of 1 - 2e-6, a bound about bf16 rather than the gathering.
    common = ["--steps", "6", "--every", "3", "--probe", "80", "--batch-size", "16", "--probe-precision", "fp32"]
    torchrun(script, *common, "--run-dir", "two", "--output-dir", "two-hf", cwd=tmp_path)
    one = forked.run([script, *common, "--run-dir", "one", "--output-dir", "one-hf"], cwd=tmp_path,
                     env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    run_one, run_two = RunDir(tmp_path / "one"), RunDir(tmp_path / "two")
    assert run_one.snapshot_steps() == [0, 3, 6]
    assert_same_frames(run_one, run_two)
    assert run_two.manifest()["source"]["processes"] == 2
    t1, t2 = (r.metrics().query("split == 'train'") for r in (run_one, run_two))
    np.testing.assert_allclose(t2["loss"], t1["loss"], rtol=LOSS_RTOL)
    assert_same_dynamics(run_one, run_two)


# ---- timm -----------------------------------------------------------------------------------
# Why the timm tests skip on a CPU-only machine: timm needs torchvision built for the installed
# torch; PyPI has only CUDA builds of torchvision 0.28 (the one for torch 2.13), which do not
# import beside torch 2.13.0+cpu ("operator torchvision::nms does not exist"), and the PyTorch
# CPU index is not reachable everywhere, so `make install` adds the timm extra only beside a
# CUDA torch. The error path without timm is tested below either way.
TIMM_SKIP = ("timm is not importable: it needs a torchvision built for this torch, and PyPI has only "
             "CUDA builds of torchvision 0.28 (torch 2.13), which do not import beside a CPU-only torch")


def timm_or_skip():
    try:
        import timm
    except (ImportError, RuntimeError) as error:
        pytest.skip(f"{TIMM_SKIP} ({type(error).__name__}: {error})")
    return timm


def test_timm_model_by_name():
    """A random-init tiny timm ViT at 32 px: embedding = pooled pre-logits features."""
    timm_or_skip()
    from ftviz.models import create_model

    model = create_model("timm/vit_tiny_patch16_224", num_classes=10, image_size=32, pretrained="none",
                         img_size=32, patch_size=4, depth=2)
    assert (model.image_size, model.embedding_dim, model.num_classes) == (32, 192, 10)
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    model.eval()
    with torch.no_grad():
        embedding, logits = model.embed(model.preprocess(images))
        pixels = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
        net = model.timm_model
        expected = net.forward_head(net.forward_features(pixels), pre_logits=True)
        np.testing.assert_allclose(embedding.numpy(), expected.numpy(), atol=1e-5)
        np.testing.assert_allclose(logits.numpy(), net(pixels).numpy(), atol=1e-5)


@pytest.mark.slow
def test_timm_model_trains_in_ftviz_run(tmp_path):
    timm_or_skip()
    from ftviz.cli import main

    sets = [part for pair in zip(TINY_RUN[::2], TINY_RUN[1::2]) if not pair[1].startswith("model.options")
            for part in pair]
    assert main(["run", *sets, "--set", "model.name=timm/vit_tiny_patch16_224", "--set", "model.pretrained=none",
                 "--set", "model.options={img_size=16,patch_size=4,depth=1,embed_dim=32,num_heads=2}",
                 "--set", "train.epochs=1", "--set", f"out_dir={tmp_path}", "--set", "name=timm", "-q"]) == 0
    run = RunDir(tmp_path / "timm")
    assert run.snapshot_steps() == [0, 2, 4, 6] and run.stage_status("render") == "done"
    assert run.load_snapshot(6)[0].shape == (200, 32)


def test_timm_errors_are_one_line(monkeypatch):
    from ftviz.models import create_model

    try:
        import timm  # noqa: F401
    except (ImportError, RuntimeError):  # not installed, or its torchvision does not match torch
        with pytest.raises(FtvizError, match=r"torchvision") as raised:
            create_model("timm/resnet18", num_classes=3, pretrained="none")
        assert "\n" not in str(raised.value)
        return
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        (dict(name="timm/no_such_net"), "timm has no architecture 'no_such_net'"),
        (dict(name="timm/resnet18", pretrained="none", bogus=1), "bad model.options for timm/resnet18"),
        (dict(name="timm/resnet18", pretrained="/no/such/weights.pth"), "no such file or folder"),
        (dict(name="timm/resnet18", pretrained="", img_size=32), "cannot change a pretrained"),
        (dict(name="timm/resnet18"), "HF_HUB_OFFLINE is set"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FtvizError, match=message) as raised:
            create_model(num_classes=3, **kwargs)
        assert "\n" not in str(raised.value)
