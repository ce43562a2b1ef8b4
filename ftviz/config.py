"""Experiment configuration: typed dataclasses, TOML files and strict ``--set key=value``.

Unknown keys are errors (a typo must not silently run the default). The whole config is
saved into ``run.json`` so a run always says how it was made.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftviz.errors import FtvizError


@dataclass
class DataConfig:
    dataset: str = "digits"  # digits | cifar10 | imagefolder | synthetic
    path: str = ""  # local folder for cifar10 (cifar-10-batches-py) or imagefolder
    noise_rate: float = 0.1  # fraction of labels flipped to another class, recorded
    noise: str = "symmetric"  # symmetric (uniform other class) | asymmetric (most confused class)
    probe: str = "train"  # which split the probe set is drawn from: train | test
    probe_size: int = 0  # 0 = the whole split, else a stratified subset of this many
    train_size: int = 0  # 0 = the whole train split, else a stratified subset
    test_fraction: float = 0.2  # for datasets without an official split (digits, imagefolder)
    image_size: int = 32  # digits and synthetic are rendered at this size


@dataclass
class ModelConfig:
    name: str = "vit_tiny"
    pretrained: str = ""  # hub id or local directory; "" = the registry default
    # Architecture overrides for the registry function (e.g. {hidden_size = 64}).
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 32
    grad_accum: int = 1  # effective batch = batch_size * grad_accum
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1
    snapshot_every: int = 5  # optimizer steps between probe snapshots (step 0 always)
    eval_batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 (autocast)
    embed_precision: str = "auto"  # auto | fp32 | bf16, for the probe snapshots
    save_weights: str = "latest"  # latest | none | all (every snapshot, large)
    max_steps: int = 0  # 0 = from epochs


@dataclass
class ScoreConfig:
    k: int = 10  # neighbours for the outlier score
    top: int = 8  # outliers shown per frame
    method: str = "auto"  # auto | knn (blocked matmul, same values) | cleanlab (OutOfDistribution as is)
    device: str = "auto"  # where the knn method runs: auto | cpu | cuda


@dataclass
class DetectConfig:
    rule: str = "auto"  # auto (history if the probe is trained on, else last) | history | last
    learnt_fraction: float = 0.8  # history from the first snapshot at this share of the best probe accuracy
    min_flagged: float = 0.2  # memorised issue: Cleanlab flagged it at this share of the learnt snapshots
    knn: int = 10  # neighbours of the kNN label shares mixed into the last frame's probabilities


@dataclass
class ProjectConfig:
    method: str = "pca"  # pca | tsne (openTSNE) | umap (umap-learn): t-SNE/UMAP need ftviz[projection]
    basis: str = "per_frame"  # PCA: per_frame (the article) | shared (one PCA of all frames)
    reference: str = "previous"  # Procrustes reference, see ftviz.align.align_sequence
    knn: int = 10  # neighbours for the neighbourhood-preservation diagnostic
    knn_sample: int = 2000  # points used for that diagnostic per frame
    # t-SNE / UMAP schedule: the first frame from scratch, every later one warm-started from
    # the previous frame's layout (iterations for t-SNE, epochs for UMAP).
    first_iter: int = 750
    iter: int = 50
    last_iter: int = 0  # extra iterations for the last frame
    perplexity: float = 30.0  # t-SNE
    neighbors: int = 15  # UMAP n_neighbors


@dataclass
class RenderConfig:
    color_by: str = "label"  # label | prediction | outlier_score | label_issue | noise | suspicion (detect stage)
    point_size: float = 5.0
    frame_ms: int = 400  # playback: time per snapshot (GIF/MP4 too)
    thumbnails: bool = True
    transition_ms: int = 300  # eased move when jumping to a frame (slider, loss-curve click)
    axes: str = "fixed"  # fixed (one range for all frames) | per_frame (each frame fills the plot)
    thumbnail_size: int = 32  # longest thumbnail side in px; big probes get smaller ones
    thumbnail_format: str = "auto"  # auto | png | jpeg (the sprite sheet)
    video_width: int = 1280  # GIF/MP4 size in px
    video_height: int = 720
    video_tween: int = 3  # eased in-between images per transition in GIF/MP4


@dataclass
class ExperimentConfig:
    name: str = "vit-digits"
    seed: int = 0
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert ``value`` to the type of the field's default, or explain why not."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise FtvizError(f"config key {key} wants true or false, got {value!r}")
    if isinstance(current, dict):
        if isinstance(value, dict):
            return value
        raise FtvizError(f"config key {key} wants a table, got {value!r}")
    for kind in (int, float, str):
        if isinstance(current, kind):
            if isinstance(value, str) and kind is not str:
                try:
                    return kind(value)
                except ValueError:
                    raise FtvizError(f"config key {key} wants {kind.__name__}, got {value!r}") from None
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
            raise FtvizError(f"config key {key} wants {kind.__name__}, got {value!r}")
    return value


def _apply(target: Any, values: dict, prefix: str) -> None:
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise FtvizError(
                f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(names))}"
            )
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise FtvizError(f"config key {dotted!r} is a section; use [{dotted}] or {dotted}.KEY")
            _apply(current, value, f"{dotted}.")
        else:
            setattr(target, key, _coerce(value, current, dotted))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=1"`` -> (["train", "epochs"], "1"); TOML syntax is accepted for values."""
    if "=" not in text:
        raise FtvizError(f"--set wants KEY=VALUE (e.g. train.epochs=1), got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as vit_tiny
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment TOML (or the defaults) and apply ``--set`` overrides, strictly."""
    config = ExperimentConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FtvizError(f"no experiment file at {path}; see experiments/ for examples")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise FtvizError(f"{path} is not valid TOML: {error}") from None
        _apply(config, values, "")
        if "name" not in values:
            config.name = path.stem
    apply_overrides(config, overrides or [])
    validate(config)
    return config


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> None:
    """Apply ``--set key=value`` strings to ``config`` in place (strictly; validate after)."""
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _apply(config, nested, "")


def validate(config: ExperimentConfig) -> None:
    """Range checks that TOML types cannot express."""
    checks = [
        (0.0 <= config.data.noise_rate < 1.0, "data.noise_rate must be in [0, 1)"),
        (config.data.noise in ("symmetric", "asymmetric"),
         f"data.noise must be 'symmetric' or 'asymmetric', got {config.data.noise!r}"),
        (config.data.probe in ("train", "test"), "data.probe must be 'train' or 'test'"),
        (config.train.epochs > 0 or config.train.max_steps > 0, "train.epochs must be > 0"),
        (config.train.batch_size > 0, "train.batch_size must be > 0"),
        (config.train.grad_accum > 0, "train.grad_accum must be > 0"),
        (config.train.snapshot_every > 0, "train.snapshot_every must be > 0"),
        (config.train.precision in ("auto", "fp32", "bf16"), "train.precision: auto, fp32 or bf16"),
        (config.train.embed_precision in ("auto", "fp32", "bf16"), "train.embed_precision: auto, fp32 or bf16"),
        (config.train.save_weights in ("latest", "none", "all"), "train.save_weights: latest, none or all"),
        (config.score.k > 0, "score.k must be > 0"),
        (config.detect.rule in ("auto", "history", "last"), "detect.rule: auto, history or last"),
        (0.0 < config.detect.learnt_fraction <= 1.0, "detect.learnt_fraction must be in (0, 1]"),
        (0.0 <= config.detect.min_flagged <= 1.0, "detect.min_flagged must be in [0, 1]"),
        (config.detect.knn >= 1, "detect.knn must be >= 1"),
        (config.score.method in ("auto", "knn", "cleanlab"), "score.method: auto, knn or cleanlab"),
        (bool(config.name) and "/" not in config.name, "name must be a plain folder name"),
    ]
    for ok, message in checks:
        if not ok:
            raise FtvizError(message)
    from ftviz.project import check_config  # numpy only; the stage module owns its section's rules

    check_config(config.project, libraries=False)

