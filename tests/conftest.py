"""Shared fixtures: small real runs made by the real pipeline, on data the tests make."""

from __future__ import annotations

import os

import pytest

# Under pytest-xdist (`make test` runs two workers on two cores) each worker and the processes
# it starts use one thread: two workers with two threads each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

TINY_VIT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 4,
}


def tiny_config(tmp_path, name: str = "tiny", **sections):
    """An experiment on synthetic 16 px images with a one-layer ViT: trains in ~2 s.

    ``sections`` override whole keys, e.g. ``train={"epochs": 1}``.
    """
    from ftviz.config import ExperimentConfig

    values = {
        "name": name,
        "out_dir": str(tmp_path),
        "data": {"dataset": "synthetic", "train_size": 200, "image_size": 16, "noise_rate": 0.1},
        "model": {"name": "vit_tiny", "options": dict(TINY_VIT)},
        # follow=false: the stages after training, in this process (a follower is a process per
        # run; tests/test_follow.py and the Trainer-callback tests run with one)
        "train": {"epochs": 2, "batch_size": 32, "lr": 3e-3, "snapshot_every": 2, "device": "cpu", "follow": False},
        "score": {"k": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return ExperimentConfig.from_dict(values)


def random_pixels(model, batch: int = 6, seed: int = 0):
    """A batch of random uint8 images at ``model.image_size``, through the model's preprocess:
    (batch, 3, size, size) float32."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, model.image_size, model.image_size, 3), generator=generator,
                           dtype=torch.uint8)
    return model.preprocess(images)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A complete run directory (train, score, project, render done) shared by the session.

    Treat it as read-only; copy it (shutil.copytree) before changing anything.
    """
    from ftviz.pipeline import run_experiment

    config = tiny_config(tmp_path_factory.mktemp("runs"))
    return run_experiment(config, progress=False, log=lambda *_: None)
