"""Experiment configuration: typed dataclasses, TOML files and strict ``--set key=value``.

Unknown keys are errors (a typo must not silently run the default). Each section declares
its defaults as field values and its allowed values beside them (``constraints``, as
scikit-learn declares ``_parameter_constraints``; ``rules`` for checks that tie fields
together); :func:`validate` checks every section in one place. The whole config is saved
into ``run.json`` (:meth:`ExperimentConfig.to_dict`) and rebuilt from it with
:func:`config_from_manifest`, so a run always says how it was made.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ftviz.errors import FtvizError


# ---------------------------------------------------------------------------------------
# Constraints: what a field accepts, and how to say so in one line
# ---------------------------------------------------------------------------------------
class Options:
    """One of a fixed set of values."""

    def __init__(self, *choices: Any):
        self.choices = choices

    def accepts(self, value: Any) -> bool:
        return value in self.choices

    def __str__(self) -> str:
        quoted = [repr(choice) for choice in self.choices]
        return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class Interval:
    """A number of type ``kind`` (int, or float which also takes ints) from ``low`` to ``high``.

    ``None`` leaves that side open-ended; ``closed`` ("both", "left", "right", "neither")
    says which of the given ends belong to the interval.
    """

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *, closed: str = "both"):
        self.kind, self.low, self.high, self.closed = kind, low, high, closed

    def accepts(self, value: Any) -> bool:
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        if self.low is not None and (value < self.low or (value == self.low and self.closed in ("right", "neither"))):
            return False
        if self.high is not None and (value > self.high or (value == self.high and self.closed in ("left", "neither"))):
            return False
        return True

    def __str__(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        low_in, high_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return f"{what} in {'[' if low_in else '('}{self.low}, {self.high}{']' if high_in else ')'}"
        if self.low is not None:
            return f"{what} {'>=' if low_in else '>'} {self.low}"
        if self.high is not None:
            return f"{what} {'<=' if high_in else '<'} {self.high}"
        return what


class Satisfies:
    """Whatever ``predicate`` accepts; ``text`` says what that is (after "must be")."""

    def __init__(self, predicate: Callable[[Any], bool], text: str):
        self.predicate, self.text = predicate, text

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def __str__(self) -> str:
        return self.text


def _is_frame_reference(value: Any) -> bool:
    """A Procrustes reference name, or a frame index as an int or a string such as "-1"."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int) or value in PROJECT_REFERENCES:
        return True
    return isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()) is not None


DEVICE = Satisfies(lambda value: value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value),
                   "'auto', 'cpu', 'cuda' or 'cuda:N'")
PRECISIONS = Options("auto", "fp32", "bf16")
# Choices that modules outside this file show or branch on (imported from here, declared once).
PROJECT_METHODS = ("pca", "tsne", "umap")
PROJECT_BASES = ("per_frame", "shared")
PROJECT_REFERENCES = ("previous", "first", "last", "consensus")
COLOR_BY = ("label", "prediction", "outlier_score", "label_issue", "noise", "suspicion")


class Section:
    """What every config section shares: its declared constraints and cross-field rules.

    ``constraints`` maps a field to what it accepts; ``rules`` are (predicate on the
    section, one-line message) pairs for checks that read several fields.
    """

    constraints: ClassVar[dict[str, Any]] = {}
    rules: ClassVar[tuple[tuple[Callable[[Any], bool], str], ...]] = ()


def check_section(section: Section, prefix: str = "") -> None:
    """Raise :class:`FtvizError` (one line naming the key and what it accepts) for the first bad value.

    ``prefix`` is the section's name in the config ("score" for ``score.k``; "" at the top).
    """
    dotted = f"{prefix}." if prefix else ""
    for key, constraint in type(section).constraints.items():
        value = getattr(section, key)
        if not constraint.accepts(value):
            raise FtvizError(f"{dotted}{key} must be {constraint}, got {value!r}")
    for predicate, message in type(section).rules:
        if not predicate(section):
            raise FtvizError(message)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------
@dataclass
class DataConfig(Section):
    dataset: str = "digits"  # digits | cifar10 | imagefolder | synthetic (checked by ftviz.data's registry)
    path: str = ""  # local folder for cifar10 (cifar-10-batches-py) or imagefolder
    noise_rate: float = 0.1  # fraction of labels flipped to another class, recorded
    noise: str = "symmetric"  # symmetric (uniform other class) | asymmetric (most confused class)
    probe: str = "train"  # which split the probe set is drawn from: train | test
    probe_size: int = 0  # 0 = the whole split, else a stratified subset of this many
    train_size: int = 0  # 0 = the whole train split, else a stratified subset
    test_fraction: float = 0.2  # for datasets without an official split (digits, imagefolder)
    image_size: int = 32  # digits and synthetic are rendered at this size
    # Label fixes from `ftviz quality RUN --export FILE.csv` (possibly edited): the training
    # rows with is_label_issue true are relabelled to suggested_label, or dropped.
    fixes: str = ""  # "" = none, else the CSV's path
    # auto: each training row as its `fix` cell says (the find run's recommendation: while its
    # network was weak, relabel where it was confident of the suggestion and drop the rest; once
    # it had learnt, drop); relabel | drop: every flagged row so
    fix: str = "auto"

    constraints: ClassVar[dict[str, Any]] = {
        "fix": Options("auto", "relabel", "drop"),
        "noise_rate": Interval(float, 0, 1, closed="left"),
        "noise": Options("symmetric", "asymmetric"),
        "probe": Options("train", "test"),
        "probe_size": Interval(int, 0),
        "train_size": Interval(int, 0),
        "test_fraction": Interval(float, 0, 1, closed="neither"),
        "image_size": Interval(int, 1),
    }

    def known_probe_size(self) -> int | None:
        """The probe set's size where the config alone fixes it, else None (known after loading)."""
        if self.probe_size > 0:
            return self.probe_size  # exact: a split too small for it is an error, not a cap
        if self.probe == "train" and self.train_size > 0:
            return self.train_size
        return None


@dataclass
class ModelConfig(Section):
    name: str = "vit_tiny"  # checked by the model registry (ftviz models lists the names)
    pretrained: str = ""  # hub id or local directory; "" = the registry default
    # Architecture overrides for the registry function (e.g. {hidden_size = 64}).
    options: dict = field(default_factory=dict)


@dataclass
class TrainConfig(Section):
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
    follow: bool = True  # analyse each snapshot as it lands, in a process apart (ftviz/follow.py)
    dynamics: bool = True  # record every training sample's logits at each step (ftviz/dynamics.py)
    # With dynamics, also each training sample's embedding at each step (the head's input, float16:
    # N x D x 2 bytes an epoch, 77 MB for CIFAR-10 at ViT-B): the training set's kNN label vote and
    # outlier score. Turn off for many epochs of a large set.
    dynamics_features: bool = True
    # The training's own randomness (new layers' initial weights, batch order, dropout); -1 = the
    # run's seed. The split and the injected noise follow the run's seed only, so runs that
    # differ in train.seed train on the same labels (repeat a training to see its spread).
    seed: int = -1

    constraints: ClassVar[dict[str, Any]] = {
        "seed": Interval(int, -1),
        "epochs": Interval(float, 0),
        "batch_size": Interval(int, 1),
        "grad_accum": Interval(int, 1),
        "lr": Interval(float, 0, closed="neither"),
        "weight_decay": Interval(float, 0),
        "warmup_ratio": Interval(float, 0, 1),
        "snapshot_every": Interval(int, 1),
        "eval_batch_size": Interval(int, 1),
        "device": DEVICE,
        "precision": PRECISIONS,
        "embed_precision": PRECISIONS,
        "save_weights": Options("latest", "none", "all"),
        "max_steps": Interval(int, 0),
        "dynamics": Satisfies(lambda value: isinstance(value, bool), "true or false"),
        "dynamics_features": Satisfies(lambda value: isinstance(value, bool), "true or false"),
        "follow": Satisfies(lambda value: isinstance(value, bool), "true or false"),
    }
    rules: ClassVar[tuple] = (
        (lambda s: s.epochs > 0 or s.max_steps > 0, "train.epochs must be > 0 (or set train.max_steps)"),
    )


@dataclass
class ScoreConfig(Section):
    k: int = 10  # neighbours for the outlier score
    top: int = 8  # outliers shown per frame
    method: str = "auto"  # auto | knn (blocked matmul, same values) | cleanlab (OutOfDistribution as is)
    device: str = "auto"  # where the knn method runs: auto | cpu | cuda

    constraints: ClassVar[dict[str, Any]] = {
        "k": Interval(int, 1),
        "top": Interval(int, 0),
        "method": Options("auto", "knn", "cleanlab"),
        "device": DEVICE,
    }


@dataclass
class DetectConfig(Section):
    rule: str = "auto"  # auto (history if the probe is trained on, else last) | history | last
    learnt_fraction: float = 0.8  # history from the first snapshot at this share of the best probe accuracy
    min_flagged: float = 0.2  # memorised issue: Cleanlab flagged it at this share of the learnt snapshots
    knn: int = 10  # neighbours of the kNN label shares mixed into the last frame's probabilities

    constraints: ClassVar[dict[str, Any]] = {
        "rule": Options("auto", "history", "last"),
        "learnt_fraction": Interval(float, 0, 1, closed="right"),
        "min_flagged": Interval(float, 0, 1),
        "knn": Interval(int, 1),
    }


@dataclass
class ProjectConfig(Section):
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

    constraints: ClassVar[dict[str, Any]] = {
        "method": Options(*PROJECT_METHODS),
        "basis": Options(*PROJECT_BASES),
        "reference": Satisfies(_is_frame_reference, f"{Options(*PROJECT_REFERENCES)} or a frame index"),
        "knn": Interval(int, 1),
        "knn_sample": Interval(int, 1),
        "first_iter": Interval(int, 0),
        "iter": Interval(int, 0),
        "last_iter": Interval(int, 0),
        "perplexity": Interval(float, 0, closed="neither"),
        "neighbors": Interval(int, 2),
    }
    rules: ClassVar[tuple] = (
        (lambda s: s.first_iter > 0 or s.method == "pca",
         "project.first_iter must be > 0 for t-SNE and UMAP (the first frame starts from scratch)"),
    )


@dataclass
class RenderConfig(Section):
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

    constraints: ClassVar[dict[str, Any]] = {
        "color_by": Options(*COLOR_BY),
        "point_size": Interval(float, 0, closed="neither"),
        "frame_ms": Interval(int, 1),
        "thumbnails": Satisfies(lambda value: isinstance(value, bool), "true or false"),
        "transition_ms": Interval(int, 0),
        "axes": Options("fixed", "per_frame"),
        "thumbnail_size": Interval(int, 1),
        "thumbnail_format": Options("auto", "png", "jpeg"),
        "video_width": Interval(int, 320),
        "video_height": Interval(int, 240),
        "video_tween": Interval(int, 0),
    }


def plain_run_name(value: Any) -> bool:
    """Whether ``value`` is a run name that stays a folder inside out_dir (used by
    :func:`ftviz.runs.check_run_name` too)."""
    import unicodedata

    return (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value
            and not any(unicodedata.category(ch)[0] == "C" for ch in value))


@dataclass
class ExperimentConfig(Section):
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

    constraints: ClassVar[dict[str, Any]] = {
        "name": Satisfies(plain_run_name, "a plain folder name (not '.' or '..', no '/' or '\\', no control characters)"),
        "seed": Interval(int, 0),
    }

    @property
    def training_seed(self) -> int:
        """``train.seed``, or the run's seed where it is -1."""
        return self.seed if self.train.seed < 0 else self.train.seed

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ExperimentConfig":
        """The config that :meth:`to_dict` wrote (or any part of it: missing keys keep their
        defaults), checked like a TOML file: unknown keys and bad values are errors."""
        config = cls()
        apply_values(config, values)
        validate(config)
        return config


def config_from_manifest(manifest: dict) -> ExperimentConfig:
    """The config a run was made with, from its ``run.json`` (the manifest's "config")."""
    return ExperimentConfig.from_dict(manifest.get("config", {}))


def check_probe_size(config: ExperimentConfig, probe_size: int) -> None:
    """Once the probe set is loaded (its size is not always in the config): the settings it must fit.

    Call right after the splits are loaded, before training; :func:`validate` already does it
    where the config fixes the size (``data.probe_size``, or ``data.train_size`` for a probe
    drawn from the training split).
    """
    if config.score.k >= probe_size:
        raise FtvizError(
            f"score.k = {config.score.k} but the probe set has {probe_size} samples; "
            f"set score.k to at most {probe_size - 1} (the outlier score needs more than k samples)"
        )


# ---------------------------------------------------------------------------------------
# Values from TOML, run.json and --set
# ---------------------------------------------------------------------------------------
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


def apply_values(target: Any, values: dict, prefix: str = "") -> None:
    """Set ``values`` (nested dicts, as in TOML or run.json) on ``target`` in place, strictly.

    Unknown keys and values of the wrong type are errors; call :func:`validate` after.
    ``target`` is an :class:`ExperimentConfig` (or a section, with ``prefix`` "score." etc.).
    """
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
            apply_values(current, value, f"{dotted}.")
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
        apply_values(config, values)
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
        apply_values(config, nested)


def sections(config: ExperimentConfig) -> dict[str, Section]:
    """The config's sections by name ("data", "model", ..., "render")."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if isinstance(getattr(config, f.name), Section)}


def validate(config: ExperimentConfig) -> None:
    """Check every section's declared constraints and rules, then the cross-section ones.

    Raises :class:`FtvizError` with one line naming the first bad key and what it accepts.
    Libraries a setting needs (openTSNE for ``project.method = "tsne"``) are checked by the
    stage that uses them, so ``ftviz score`` does not ask for them.
    """
    for name, section in sections(config).items():
        check_section(section, name)
    check_section(config)
    probe_size = config.data.known_probe_size()
    if probe_size is not None:  # else check_probe_size runs once the splits are loaded
        check_probe_size(config, probe_size)
