"""Several runs side by side on the same probe samples: alignment, metrics and one page.

Runs are matched by *training progress* (snapshot step / the run's total steps), so a run of
100 steps and one of 168 line up at 0 %, 50 % and 100 %. The progress grid is the snapshot
progress of the run with the most snapshots; every other run shows, at each grid point, its
snapshot nearest in progress (its own step and progress are in the table).

Per grid frame and run, :func:`compare_runs` computes

``knn_accuracy``
    Leave-one-out k-nearest-neighbour accuracy of the embedding against the *true* labels,
    cosine similarity, k = 10, majority vote (ties go to the smallest label).
``silhouette``
    Silhouette score of the *full embedding* (not the 2-D frame, which PCA distorts) with
    the true labels as clusters, cosine distance, on at most 2,000 samples (fixed seed).
``label_issue_auroc``
    How well ``1 - label_quality`` (Cleanlab, from ``scores.parquet``) ranks the samples
    whose labels were flipped on purpose above the others (:func:`ftviz.numerics.auroc_against_noise`);
    NaN when the run has no injected noise.
``cka_<run>``
    Linear CKA between this run's embedding and the other run's embedding at the same
    progress (1 = the same geometry up to rotation and isotropic scale).
``sample_accuracy`` (diffusion runs; NaN for the others)
    The fraction of the snapshot's generated samples (``generated/step-XXXXXXX.npz``: uint8
    images and the class each was conditioned on) that a *classifier run* of the comparison
    assigns to their conditioning class. The classifier is that run's final model
    (``weights/final.pt``, built through the model registry from its ``run.json`` config),
    so every frame is judged by the same, fully trained classifier; ``sample_classifier``
    names the run. By default it is the first compared run that has final weights and no
    generated samples; ``classifier`` chooses another. Computed at every frame (a few
    dozen images per snapshot through a small classifier: cheap).

and, per run (the same on each of its rows),

``test_accuracy_true``
    The run's final accuracy on the held-out test split against the *true* labels, where the
    run's probe is that split (``data.probe = "test"`` in its run.json): the last ``eval`` row
    of its ``metrics.parquet`` (ftviz's loop), else the last ``probe`` row (ingested runs).
    NaN for a run whose probe it trained on: its accuracy there is no test accuracy.

and writes ``compare.html`` (self-contained: plotly.js embedded), ``compare.parquet`` and
``compare.csv`` to the output folder.

Frames: each run's ``frames.npy`` is already aligned within itself (the project stage). With
``align_to``, every run's frame is also moved onto the reference run's frame at the same
progress with :func:`ftviz.align.align` (rotation, reflection, isotropic scale, shift), so
the panels share one coordinate system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftviz.errors import FtvizError
from ftviz.palette import CLASS_PALETTE
from ftviz.render.page import plotly_text

KNN_K = 10
SILHOUETTE_SAMPLE = 2000
_RUN_COLOURS = ("#1f3b73", "#c0392b", "#1e8449", "#7d3c98", "#d35400", "#117a65", "#7f8c8d", "#b7950b")
_CLASS_COLOURS = CLASS_PALETTE  # one palette: a class has the colour it has in the animation


# ---- metrics -----------------------------------------------------------------------------
def knn_accuracy(embedding: np.ndarray, labels: np.ndarray, *, k: int = KNN_K, chunk: int = 2048) -> float:
    """Leave-one-out kNN accuracy with cosine similarity.

    Parameters
    ----------
    embedding : (N, D) features.
    labels : (N,) int labels (the truth to predict).
    k : neighbours, each sample's own row excluded; ties in the vote go to the smallest label.
    chunk : query rows per matrix product.

    Returns
    -------
    float in [0, 1].
    """
    from ftviz.numerics import knn_label_shares

    features = np.asarray(embedding, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(features)
    if features.ndim != 2 or len(labels) != n:
        raise ValueError(f"embedding (N, D) and labels (N,) disagree: {features.shape} vs {labels.shape}")
    if n <= k:
        raise FtvizError(f"kNN accuracy with k={k} needs more than {k} samples, got {n}")
    votes = knn_label_shares(embedding=features, labels=labels, num_classes=int(labels.max()) + 1, k=k, block=chunk)
    return float((votes.argmax(axis=1) == labels).mean())  # argmax: the first (smallest) label wins ties


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear centred kernel alignment of two representations of the same N samples.

    ``||B_c^T A_c||_F^2 / (||A_c^T A_c||_F ||B_c^T B_c||_F)`` with column-centred A, B
    (Kornblith et al., 2019). 1 when B is A rotated, reflected, scaled or shifted; the widths
    may differ.

    Parameters
    ----------
    a : (N, D1); b : (N, D2).

    Returns
    -------
    float in [0, 1]; NaN when either representation is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b):
        raise ValueError(f"CKA needs (N, D1) and (N, D2) with the same N, got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = np.linalg.norm(b.T @ a) ** 2
    norm = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    if norm == 0.0:
        return float("nan")
    return float(cross / norm)


def silhouette(embedding: np.ndarray, labels: np.ndarray, *, sample: int = SILHOUETTE_SAMPLE, seed: int = 0) -> float:
    """Silhouette score of ``embedding`` (N, D) with ``labels`` as clusters, cosine distance.

    At most ``sample`` rows are used (a fixed random subset, as sklearn's ``sample_size``);
    NaN when fewer than two labels are present.
    """
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
        return float("nan")
    features = np.asarray(embedding, dtype=np.float32)
    size = sample if len(features) > sample else None
    return float(silhouette_score(features, labels, metric="cosine", sample_size=size, random_state=seed))


def label_issue_auroc(label_quality: np.ndarray, is_noisy: np.ndarray) -> float:
    """AUROC of ``1 - label_quality`` as a detector of the injected noise ``is_noisy``
    (:func:`ftviz.numerics.auroc_against_noise`).

    NaN when no label (or every label) was flipped: there is nothing to detect.
    """
    from ftviz.numerics import auroc_against_noise

    return auroc_against_noise(1.0 - np.asarray(label_quality, dtype=np.float64), is_noisy)


# ---- runs --------------------------------------------------------------------------------
@dataclass
class ComparedRun:
    """One run as the comparison sees it.

    Attributes
    ----------
    label : short unique name (the folder name; parent/name when two folders share one).
    steps : (T,) snapshot steps; progress : (T,) steps / total steps, in [0, 1].
    frames : (T, N, 2) the run's own aligned 2-D frames.
    generated : {step: path of generated/step-XXXXXXX.npz}, empty unless a diffusion run.
    test_accuracy_true : final test accuracy against the true labels
        (:func:`held_out_true_accuracy`), NaN without a held-out probe.
    """

    label: str
    run: object
    model: str
    steps: np.ndarray
    progress: np.ndarray
    frames: np.ndarray
    samples: object
    scores: object
    generated: dict = field(default_factory=dict)
    test_accuracy_true: float = float("nan")
    _embeddings: dict = field(default_factory=dict, repr=False)
    _per_frame: dict = field(default_factory=dict, repr=False)

    def embedding(self, index: int) -> np.ndarray:
        """(N, D) float32 embedding of snapshot ``index`` (cached)."""
        if index not in self._embeddings:
            embedding, _ = self.run.load_snapshot(int(self.steps[index]))
            self._embeddings[index] = embedding.astype(np.float32)
        return self._embeddings[index]

    def label_quality(self, index: int) -> np.ndarray:
        """(N,) Cleanlab label quality at snapshot ``index``, in sample-id order."""
        if "label_quality" not in self._per_frame:  # (T, N), read once by the shared reader
            self._per_frame["label_quality"] = self.run.frame_scores(
                ["label_quality"], steps=self.steps, count=len(self.samples), scores=self.scores,
                complete=True)["label_quality"]
        return self._per_frame["label_quality"][index]


def load_run(path, label: str) -> ComparedRun:
    """Read what the comparison needs from one run; errors name the missing stage."""
    from ftviz.rundir import RunDir

    run = RunDir(path)
    manifest = run.manifest()
    run.require("train")
    run.require("score")
    run.require("project")
    steps = np.asarray(run.snapshot_steps(), dtype=np.int64)
    frames = run.frames()
    if frames.ndim != 3 or len(frames) != len(steps):
        raise FtvizError(
            f"{run.path}: frames.npy has shape {frames.shape} for {len(steps)} snapshots; "
            f"rerun `ftviz project {run.path}`"
        )
    total = manifest.get("stages", {}).get("train", {}).get("total_steps") or int(steps.max())
    progress = steps / total if total > 0 else np.zeros(len(steps))
    return ComparedRun(
        label=label,
        run=run,
        model=manifest.get("model", {}).get("name", "?"),
        steps=steps,
        progress=np.asarray(progress, dtype=np.float64),
        frames=frames,
        samples=run.samples().sort_values("id").reset_index(drop=True),
        scores=run.scores()[["step", "id", "label_quality"]],
        generated=generated_sample_files(run),
        test_accuracy_true=held_out_true_accuracy(run, manifest),
    )


def held_out_true_accuracy(run, manifest: dict | None = None) -> float:
    """A run's final accuracy on the held-out test split against the true labels; NaN unless
    its probe is that split (run.json's config ``data.probe == "test"``).

    The probe's metrics rows carry it: the last ``eval`` row (by step) of ``metrics.parquet``
    in ftviz's loop, else the last ``probe`` row (runs made by ``ftviz embed``), column
    ``true_accuracy``; NaN if neither has a value.
    """
    manifest = run.manifest() if manifest is None else manifest
    if manifest.get("config", {}).get("data", {}).get("probe") != "test":
        return float("nan")
    metrics = run.metrics()
    if "split" not in metrics or "true_accuracy" not in metrics:
        return float("nan")
    for split in ("eval", "probe"):
        rows = metrics[metrics["split"] == split]
        if len(rows):
            value = float(rows.sort_values("step", kind="stable")["true_accuracy"].iloc[-1])
            return value if np.isfinite(value) else float("nan")
    return float("nan")


# ---- generated samples and the classifier that judges them ---------------------------------
def generated_sample_files(run) -> dict[int, Path]:
    """{step: ``generated/step-XXXXXXX.npz``} of a run (empty when it generates nothing)."""
    files = {}
    for path in sorted((Path(run.path) / "generated").glob("step-*.npz")):
        try:
            files[int(path.stem.split("-", 1)[1])] = path
        except ValueError:  # not a name the diffusion model writes
            continue
    return files


def read_generated(path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (B, S, S, 3) and their conditioning classes (B,) from one sample file."""
    try:
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, ValueError, KeyError) as error:
        raise FtvizError(f"{path} is not a generated-sample file ({error}); rerun the diffusion run") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(labels) != len(images):
        raise FtvizError(f"{path} holds images {images.shape} {images.dtype} and labels {labels.shape}; "
                         "expected uint8 (B, S, S, 3) and (B,)")
    return images, labels.astype(np.int64)


def load_classifier(run):
    """A classifier run's final model, in eval mode on the CPU.

    Built with :func:`ftviz.models.create_model` from the config in ``run.json``, then given
    the weights of ``weights/final.pt``.
    """
    import torch

    from ftviz.config import config_from_manifest
    from ftviz.models import create_model

    path = Path(run.path) / "weights" / "final.pt"
    if not path.is_file():
        raise FtvizError(f"{run.path} has no weights/final.pt to classify generated samples with; "
                         "train it to the end with train.save_weights = \"latest\"")
    manifest = run.manifest()
    config = config_from_manifest(manifest)
    model = create_model(config.model.name, num_classes=manifest["model"]["num_classes"],
                         image_size=config.data.image_size, pretrained=config.model.pretrained,
                         **config.model.options)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()


def sample_accuracy(classifier, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 256) -> float:
    """Fraction of ``images`` (uint8 (B, H, W, 3)) that ``classifier`` assigns to ``labels`` (B,).

    The classifier resizes the images to its own input size (its ``preprocess``); fp32.
    """
    import torch

    from ftviz.embed import probe_forward

    if len(images) == 0:
        return float("nan")
    device = next(classifier.parameters()).device
    _, logits = probe_forward(classifier, torch.from_numpy(np.ascontiguousarray(images)).to(device),
                              batch_size=batch_size)
    return float((logits.astype(np.float32).argmax(axis=1) == np.asarray(labels)).mean())


def choose_classifier(runs: list["ComparedRun"], requested: int | None = None) -> int | None:
    """Index of the run whose final model judges the generated samples, or None.

    ``requested`` (an index) must be a run with ``weights/final.pt`` and no generated samples;
    by default the first such run, and None when no run generates samples or none classifies.
    """
    def classifies(run) -> bool:
        return not run.generated and (Path(run.run.path) / "weights" / "final.pt").is_file()

    if requested is not None:
        chosen = runs[requested]
        if chosen.generated:
            raise FtvizError(f"--classifier {chosen.label} is a diffusion run; choose a classifier run")
        if not classifies(chosen):
            raise FtvizError(f"--classifier {chosen.label}: {chosen.run.path} has no weights/final.pt")
        return requested
    if not any(run.generated for run in runs):
        return None
    return next((r for r, run in enumerate(runs) if classifies(run)), None)


def run_labels(paths) -> list[str]:
    """Folder names, lengthened with parent folders where two runs share one.

    >>> run_labels(["x/runs/vit", "y/runs/vit", "x/runs/swin"])
    ['x/runs/vit', 'y/runs/vit', 'swin']
    """
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(parts)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = [
            i for i, label in enumerate(labels)
            if depth[i] < len(parts[i])
            and any(other == label and parts[j] != parts[i] for j, other in enumerate(labels))
        ]
        if not clashes:
            break
        for i in clashes:
            depth[i] += 1
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # the same folder given twice
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label}#{seen[label]}"
    return labels


def check_same_probe(runs: list[ComparedRun]) -> None:
    """Error unless every run has the first run's probe: same sample ids and true labels."""
    first = runs[0]
    ids, true = first.samples["id"].to_numpy(), first.samples["true_label"].to_numpy()
    for other in runs[1:]:
        other_ids, other_true = other.samples["id"].to_numpy(), other.samples["true_label"].to_numpy()
        if len(other_ids) != len(ids):
            reason = f"{len(ids)} vs {len(other_ids)} samples"
        elif (other_ids != ids).any():
            reason = "their sample ids differ"
        elif (other_true != true).any():
            reason = f"true labels differ at {int((other_true != true).sum())} samples"
        else:
            continue
        raise FtvizError(
            f"{first.run.path} and {other.run.path} have different probe sets ({reason}); "
            "compare runs made with the same [data] settings and seed"
        )


def progress_grid(progress: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The shared slider positions and, per run, the snapshot shown at each.

    Parameters
    ----------
    progress : R arrays of shape (T_r,), each run's snapshot progress in [0, 1], ascending.

    Returns
    -------
    grid : (G,) the progress of the run with the most snapshots (the first such run).
    indices : (R, G) int, ``indices[r, g]`` = the snapshot of run r nearest to ``grid[g]``
        (the earlier one on a tie).
    """
    if not progress or any(len(p) == 0 for p in progress):
        raise FtvizError("every run needs at least one snapshot to compare")
    grid = np.asarray(progress[int(np.argmax([len(p) for p in progress]))], dtype=np.float64)
    indices = np.stack([np.abs(np.asarray(p)[None, :] - grid[:, None]).argmin(axis=1) for p in progress])
    return grid, indices


def aligned_frames(runs: list[ComparedRun], indices: np.ndarray, reference: int | None) -> list[np.ndarray]:
    """Per run, (G, N, 2) frames on the grid; moved onto run ``reference`` when given."""
    from ftviz.align import align

    frames = [run.frames[indices[r]].astype(np.float64) for r, run in enumerate(runs)]
    if reference is None:
        return frames
    target = frames[reference]
    for r in range(len(runs)):
        if r != reference:
            frames[r] = np.stack([align(frames[r][g], target[g]) for g in range(len(target))])
    return frames


def display_frames(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Each (G, N, 2) frame centred and scaled to unit root-mean-square radius, for display.

    A frame's scale in PCA units is arbitrary (and differs between models), its shape is
    what the page compares; so every panel shows every frame at the same size.
    """
    shown = []
    for run_frames in frames:
        centred = run_frames - np.nanmean(run_frames, axis=1, keepdims=True)
        radius = np.sqrt(np.nanmean((centred**2).sum(axis=2), axis=1))[:, None, None]
        shown.append(centred / np.where(radius > 0, radius, 1.0))
    return shown


def compare_table(runs: list[ComparedRun], grid: np.ndarray, indices: np.ndarray, *, k: int = KNN_K,
                  classifier: int | None = None):
    """One row per (grid frame, run): the metrics of the module docstring.

    Columns: frame, progress, run, model, step, run_progress, knn_accuracy, silhouette,
    label_issue_auroc, sample_accuracy, sample_classifier, test_accuracy_true (the run's, on
    each of its rows), and ``cka_<label>`` for every run (1 against itself). ``classifier`` is the index of the run whose final model judges the
    generated samples (see :func:`choose_classifier`); None leaves sample_accuracy NaN.
    """
    import pandas as pd

    true = runs[0].samples["true_label"].to_numpy()
    judge = load_classifier(runs[classifier].run) if classifier is not None else None
    per_snapshot: dict[tuple[int, int], dict] = {}
    for r, run in enumerate(runs):
        noisy = run.samples["is_noisy"].to_numpy()
        for index in np.unique(indices[r]):
            embedding = run.embedding(int(index))
            sample_file = run.generated.get(int(run.steps[index]))
            judged = judge is not None and sample_file is not None
            per_snapshot[r, int(index)] = {
                "knn_accuracy": knn_accuracy(embedding, true, k=k),
                "silhouette": silhouette(embedding, true),
                "label_issue_auroc": label_issue_auroc(run.label_quality(int(index)), noisy),
                "sample_accuracy": sample_accuracy(judge, *read_generated(sample_file)) if judged else float("nan"),
                "sample_classifier": runs[classifier].label if judged else "",
            }
    cka_cache: dict[tuple, float] = {}
    rows = []
    for g, position in enumerate(grid):
        for r, run in enumerate(runs):
            index = int(indices[r, g])
            row = {
                "frame": g,
                "progress": float(position),
                "run": run.label,
                "model": run.model,
                "step": int(run.steps[index]),
                "run_progress": float(run.progress[index]),
                **per_snapshot[r, index],
                "test_accuracy_true": float(run.test_accuracy_true),
            }
            for o, other in enumerate(runs):
                other_index = int(indices[o, g])
                key = tuple(sorted([(r, index), (o, other_index)]))
                if key not in cka_cache:
                    cka_cache[key] = 1.0 if key[0] == key[1] else linear_cka(
                        run.embedding(index), other.embedding(other_index)
                    )
                row[f"cka_{other.label}"] = cka_cache[key]
            rows.append(row)
    return pd.DataFrame(rows)


# ---- the page ----------------------------------------------------------------------------
def _format(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def build_figure(runs: list[ComparedRun], frames: list[np.ndarray], table, grid: np.ndarray, *, reference: int | None):
    """The plotly figure: scatter panels, metric curves, the per-snapshot table, one slider.

    Every name a person chose (run folders, models, class names) reaches plotly through
    :func:`~ftviz.render.page.plotly_text`, so it shows as typed, never as markup.

    Parameters
    ----------
    runs : the R compared runs; frames : R arrays (G, N, 2), each run's frame at every grid point.
    table : :func:`compare_table`'s rows; grid : (G,) progress of each grid point, in [0, 1].
    reference : the run the panels are aligned onto (named in the title), or None.
    """
    charts, sampled = metric_charts(runs, table)
    held_out = held_out_runs(runs)
    figure, height = _subplot_grid(runs, charts)
    scatter_traces = _add_scatter_panels(figure, runs, frames, columns=len(charts))
    percent = 100.0 * grid
    _add_metric_curves(figure, runs, table, charts, sampled, percent)
    table_cells = _frame_table_cells(runs, table, sampled, held_out)
    table_trace = _add_frame_table(figure, runs, sampled, held_out, table_cells(0))
    halves = 1.05 * np.stack([np.nanmax(np.abs(f), axis=(1, 2)) for f in frames])  # (R, G)
    _style_axes(figure, runs, charts, halves)
    cursor = _progress_cursor(figure, runs, charts, percent)
    figure.frames = _animation_frames(figure, runs, frames, scatter_traces, table_trace, table_cells, halves,
                                      cursor, columns=len(charts))
    _lay_out(figure, runs, percent, cursor, reference=reference, height=height)
    return figure


def metric_charts(runs: list[ComparedRun], table) -> tuple[list[tuple[str, str]], list[int]]:
    """The metric charts of row 2 as (table column, title), and the runs with a sample accuracy."""
    charts = [
        ("knn_accuracy", f"kNN accuracy (k={KNN_K}, cosine, true labels)"),
        ("silhouette", "silhouette (cosine, true labels)"),
        ("label_issue_auroc", "label-issue AUROC (1 − label quality)"),
        ("cka", "linear CKA between runs"),
    ]
    sampled = [r for r, run in enumerate(runs) if np.isfinite(table[table["run"] == run.label]["sample_accuracy"]).any()]
    if sampled:
        judge = next(name for name in table["sample_classifier"] if name)
        charts.append(("sample_accuracy", f"sample accuracy (generated, judged by {plotly_text(judge)})"))
    return charts, sampled


def held_out_runs(runs: list[ComparedRun]) -> bool:
    """Whether any run has a test accuracy against the true labels: the table then shows the
    column for every run ("–" for the runs whose probe they trained on)."""
    return any(np.isfinite(run.test_accuracy_true) for run in runs)


def _subplot_grid(runs: list[ComparedRun], charts: list) -> tuple[object, int]:
    """The empty figure: R scatter panels, C metric charts, the table; and its height in pixels.

    The grid has C * R columns: each scatter panel spans C of them, each chart R.
    """
    from plotly.subplots import make_subplots

    R, C = len(runs), len(charts)
    width = C * R
    specs = [
        ([{"type": "xy", "colspan": C}] + [None] * (C - 1)) * R,
        ([{"type": "xy", "colspan": R}] + [None] * (R - 1)) * C,
        [{"type": "table", "colspan": width}] + [None] * (width - 1),
    ]
    panel_titles = [f"<b>{plotly_text(run.label)}</b> · {plotly_text(run.model)}" for run in runs]
    # Heights in pixels: scatter panels, metric charts, the table (a header and R rows).
    heights = [460, 250, 28 * (R + 1) + 10]
    gaps = [90, 70]
    total = sum(heights) + sum(gaps)
    figure = make_subplots(
        rows=3, cols=width, specs=specs, row_heights=[h / sum(heights) for h in heights],
        vertical_spacing=sum(gaps) / 2 / total, horizontal_spacing=min(0.045, 0.5 / (width - 1)),
        subplot_titles=panel_titles + [title for _, title in charts] + [""],
    )
    return figure, total


def _add_scatter_panels(figure, runs: list[ComparedRun], frames: list[np.ndarray], *, columns: int) -> list:
    """Row 1: one panel per run, one trace per class (the legend toggles a class in every panel)
    and one for the samples whose labels were flipped on purpose, at the first grid point.

    Returns [(trace index, run index, sample ids (n,))] for the animation frames.
    """
    import plotly.graph_objects as go

    samples = runs[0].samples
    true = samples["true_label"].to_numpy()
    given = samples["given_label"].to_numpy()
    names = runs[0].run.class_names(samples=samples)
    class_names = {int(c): names[c] for c in np.unique(true)}  # the classes the probe holds
    noisy_any = np.zeros(len(true), dtype=bool)
    for run in runs:
        noisy_any |= run.samples["is_noisy"].to_numpy()
    masks = []
    for c in sorted(class_names):
        masks.append(((true == c) & ~noisy_any, dict(name=plotly_text(class_names[c]), legendgroup=f"class{c}",
                      marker=dict(color=_CLASS_COLOURS[c % len(_CLASS_COLOURS)], size=5, opacity=0.75))))
    if noisy_any.any():
        flipped_colours = [_CLASS_COLOURS[c % len(_CLASS_COLOURS)] for c in true[noisy_any]]
        masks.append((noisy_any, dict(name="label flipped (×, true-class colour)", legendgroup="flipped",
                      marker=dict(color=flipped_colours, size=7, symbol="x", line=dict(width=0)))))
    scatter_traces = []
    for r in range(len(runs)):
        for mask, style in masks:
            ids = np.flatnonzero(mask)
            customdata = np.stack([ids, given[ids], true[ids]], axis=1)
            trace = go.Scattergl(
                x=frames[r][0, ids, 0], y=frames[r][0, ids, 1], mode="markers", customdata=customdata,
                hovertemplate="id %{customdata[0]}<br>given label %{customdata[1]} · true %{customdata[2]}<extra></extra>",
                showlegend=r == 0, **style,
            )
            figure.add_trace(trace, row=1, col=columns * r + 1)
            scatter_traces.append((len(figure.data) - 1, r, ids))
    return scatter_traces


def _add_metric_curves(figure, runs: list[ComparedRun], table, charts: list, sampled: list[int],
                       percent: np.ndarray) -> None:
    """Row 2: metric curves over progress, one line per run (CKA: one per pair of runs)."""
    import plotly.graph_objects as go

    R = len(runs)
    # The run's name comes from the trace's own (escaped) name, never spliced into the template.
    hover = "%{x:.0f}%: %{y:.3f}<extra>%{fullData.name}</extra>"
    for chart, (metric, _) in enumerate(charts):
        col = chart * R + 1
        if metric == "cka":
            for a in range(R):
                for b in range(a + 1, R):
                    values = table[table["run"] == runs[a].label][f"cka_{runs[b].label}"].to_numpy()
                    figure.add_trace(go.Scatter(
                        x=percent, y=values, mode="lines",
                        name=f"{plotly_text(runs[a].label)} ↔ {plotly_text(runs[b].label)}",
                        line=dict(color=_RUN_COLOURS[(a + b) % len(_RUN_COLOURS)], dash="dot"),
                        legendgroup="cka", hovertemplate=hover,
                    ), row=2, col=col)
            continue
        for r, run in enumerate(runs):
            if metric == "sample_accuracy" and r not in sampled:
                continue
            values = table[table["run"] == run.label][metric].to_numpy()
            figure.add_trace(go.Scatter(
                x=percent, y=values, mode="lines", name=plotly_text(run.label), legendgroup=f"run{r}",
                showlegend=chart == 0, line=dict(color=_RUN_COLOURS[r % len(_RUN_COLOURS)], width=2),
                hovertemplate=hover,
            ), row=2, col=col)


def _frame_table_cells(runs: list[ComparedRun], table, sampled: list[int], held_out: bool = False):
    """A function of the grid point g: the columns of row 3's table at g, as text."""
    others = [f"cka_{run.label}" for run in runs]

    def table_cells(g: int) -> list[list[str]]:
        rows = table[table["frame"] == g]
        return [
            [plotly_text(name) for name in rows["run"]], [plotly_text(model) for model in rows["model"]],
            [str(s) for s in rows["step"]],
            [f"{100 * p:.0f}%" for p in rows["run_progress"]],
            [_format(v) for v in rows["knn_accuracy"]], [_format(v) for v in rows["silhouette"]],
            [_format(v) for v in rows["label_issue_auroc"]],
            *([[_format(v) for v in rows["sample_accuracy"]]] if sampled else []),
            *([[_format(v) for v in rows["test_accuracy_true"]]] if held_out else []),
            *[[_format(v) for v in rows[column]] for column in others],
        ]

    return table_cells


def _add_frame_table(figure, runs: list[ComparedRun], sampled: list[int], held_out: bool,
                     cells: list[list[str]]) -> int:
    """Row 3: the table of the current grid point; returns its trace index."""
    import plotly.graph_objects as go

    header = ["run", "model", "step", "progress", "kNN acc.", "silhouette", "label-issue AUROC",
              *(["sample acc."] if sampled else []), *(["test accuracy (true labels)"] if held_out else []),
              *[f"CKA vs {plotly_text(run.label)}" for run in runs]]
    figure.add_trace(go.Table(
        header=dict(values=[f"<b>{h}</b>" for h in header], fill_color="#eef1f5", align="left",
                    font=dict(size=12)),
        cells=dict(values=cells, align="left", height=24, font=dict(size=12),
                   fill_color="white", line_color="#e3e6ea"),
    ), row=3, col=1)
    return len(figure.data) - 1


def _style_axes(figure, runs: list[ComparedRun], charts: list, halves: np.ndarray) -> None:
    """Scatter panels: a square range per panel that just holds the cloud at the first grid
    point (frames are standardised, see :func:`display_frames`, so this only removes the
    outliers' say in the zoom), equal aspect, no tick labels since the coordinates are
    arbitrary. Metric charts: progress from 0 to 100 %."""
    R, C = len(runs), len(charts)
    for r in range(R):
        half = float(halves[r, 0])
        figure.update_xaxes(range=[-half, half], showticklabels=False, zeroline=False, showgrid=False,
                            showline=True, linecolor="#d0d4da", mirror=True, row=1, col=C * r + 1)
        x_name = figure.get_subplot(1, C * r + 1).xaxis.plotly_name.replace("axis", "")
        figure.update_yaxes(range=[-half, half], showticklabels=False, zeroline=False, showgrid=False,
                            showline=True, linecolor="#d0d4da", mirror=True, row=1, col=C * r + 1,
                            scaleanchor=x_name, scaleratio=1, constrain="domain")
    for chart in range(C):
        figure.update_xaxes(range=[0, 100], tickvals=[0, 25, 50, 75, 100],
                            ticktext=["0%", "25%", "50%", "75%", "100%"],
                            title_text="training progress", title_font=dict(size=11), title_standoff=4,
                            gridcolor="#eceff3", row=2, col=chart * R + 1)
        figure.update_yaxes(gridcolor="#eceff3", row=2, col=chart * R + 1,
                            **({"range": [0, 1.02]} if charts[chart][0] == "sample_accuracy" else {}))


def _progress_cursor(figure, runs: list[ComparedRun], charts: list, percent: np.ndarray):
    """A function of the grid point g: one dashed vertical line per metric chart at its progress."""
    R = len(runs)
    chart_axes = [figure.get_subplot(2, chart * R + 1) for chart in range(len(charts))]

    def cursor(g: int) -> list[dict]:
        return [dict(type="line", xref=axes.xaxis.plotly_name.replace("axis", ""),
                     yref=f"{axes.yaxis.plotly_name.replace('axis', '')} domain",
                     x0=percent[g], x1=percent[g], y0=0, y1=1, line=dict(color="#555", width=1, dash="dash"))
                for axes in chart_axes]

    return cursor


def _animation_frames(figure, runs: list[ComparedRun], frames: list[np.ndarray], scatter_traces: list,
                      table_trace: int, table_cells, halves: np.ndarray, cursor, *, columns: int) -> list:
    """One plotly frame per grid point: the panels' points, the table, the cursor, the panels' ranges."""
    import plotly.graph_objects as go

    panel_axes = [figure.get_subplot(1, columns * r + 1) for r in range(len(runs))]

    def panel_ranges(g: int) -> dict:
        return {axis.plotly_name: {"range": [-float(halves[r, g]), float(halves[r, g])]}
                for r, axes in enumerate(panel_axes) for axis in (axes.xaxis, axes.yaxis)}

    animated = [index for index, _, _ in scatter_traces] + [table_trace]
    animation_frames = []
    for g in range(halves.shape[1]):
        data = [go.Scattergl(x=frames[r][g, ids, 0], y=frames[r][g, ids, 1]) for _, r, ids in scatter_traces]
        data.append(go.Table(cells=dict(values=table_cells(g))))
        animation_frames.append(go.Frame(data=data, traces=animated, name=str(g),
                                         layout={"shapes": cursor(g), **panel_ranges(g)}))
    return animation_frames


def _lay_out(figure, runs: list[ComparedRun], percent: np.ndarray, cursor, *, reference: int | None,
             height: int) -> None:
    """Title, legend, the play/pause buttons and the progress slider."""
    n_samples = len(runs[0].samples)
    step_args = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    aligned_note = (f"panels aligned onto <b>{plotly_text(runs[reference].label)}</b> (Procrustes)"
                    if reference is not None else "each run in its own coordinates")
    figure.update_layout(
        title=dict(
            text=f"ftviz compare · {n_samples} probe samples · {aligned_note}<br><span style='font-size:12px;"
                 f"color:#666'>slider = training progress (each run's step / its total steps); colour = true "
                 f"class; × = label flipped on purpose</span>",
            x=0.01, font=dict(size=18),
        ),
        height=height + 110 + 90, template="plotly_white", margin=dict(l=40, r=30, t=110, b=90),
        legend=dict(orientation="v", x=1.01, y=1.0, font=dict(size=11), itemsizing="constant"),
        shapes=cursor(0),
        hovermode="closest",
        updatemenus=[dict(
            type="buttons", direction="left", x=0.0, y=-0.01, xanchor="left", yanchor="top",
            pad=dict(t=0, r=10), showactive=False,
            buttons=[
                dict(label="▶ play", method="animate",
                     args=[None, dict(mode="immediate", fromcurrent=True, frame=dict(duration=400, redraw=True),
                                      transition=dict(duration=0))]),
                dict(label="❚❚ pause", method="animate", args=[[None], step_args]),
            ],
        )],
        sliders=[dict(
            active=0, x=0.12, len=0.88, y=-0.01, yanchor="top", pad=dict(t=0),
            currentvalue=dict(prefix="progress ", font=dict(size=13)),
            steps=[dict(method="animate", label=f"{p:.0f}%", args=[[str(g)], step_args])
                   for g, p in enumerate(percent)],
        )],
    )
    for annotation in figure.layout.annotations:
        annotation.font = dict(size=13)


# ---- entry point -------------------------------------------------------------------------
def compare_runs(paths, *, out=None, align_to=None, classifier=None, log=print) -> Path:
    """Compare runs on their shared probe set; returns the path of ``compare.html``.

    Parameters
    ----------
    paths : run directories (at least one; all with the same probe set).
    out : output folder (default: ``compare/`` beside the first run).
    align_to : a run (its path or label) to align every other run's frames onto.
    classifier : a run (its path or label) whose final model judges the diffusion runs'
        generated samples (default: the first classifier run with weights/final.pt).

    Writes ``compare.html``, ``compare.parquet`` and ``compare.csv`` into ``out``.
    """
    from ftviz.rundir import atomic_path, write_parquet

    paths = [Path(p) for p in paths]
    if not paths:
        raise FtvizError("give at least one run directory to compare")
    labels = run_labels(paths)
    reference = None
    if align_to is not None:
        reference = _reference_index(str(align_to), paths, labels)
    requested = _reference_index(str(classifier), paths, labels, option="--classifier") \
        if classifier is not None else None
    runs = [load_run(path, label) for path, label in zip(paths, labels)]
    check_same_probe(runs)
    judge = choose_classifier(runs, requested)
    if judge is None and any(run.generated for run in runs):
        log("ftviz: no classifier run (weights/final.pt, no generated samples) among the compared runs; "
            "sample accuracy left empty")
    grid, indices = progress_grid([run.progress for run in runs])
    table = compare_table(runs, grid, indices, classifier=judge)
    frames = display_frames(aligned_frames(runs, indices, reference))
    figure = build_figure(runs, frames, table, grid, reference=reference)

    out = Path(out) if out is not None else paths[0].resolve().parent / "compare"
    write_parquet(out / "compare.parquet", table)
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    page = out / "compare.html"
    with atomic_path(page) as tmp:
        figure.write_html(tmp, include_plotlyjs=True, full_html=True, auto_play=False,
                          config={"displaylogo": False, "responsive": True})
    log(f"ftviz: compared {', '.join(labels)} over {len(grid)} frames -> {page}")
    for run in runs:
        if np.isfinite(run.test_accuracy_true):
            log(f"ftviz: test accuracy (true labels) of {run.label}: {run.test_accuracy_true:.3f}")
    last = table[(table["frame"] == len(grid) - 1) & np.isfinite(table["sample_accuracy"])]
    for row in last.itertuples():
        log(f"ftviz: sample accuracy of {row.run} at step {row.step}: {row.sample_accuracy:.3f} "
            f"(its generated samples as judged by {row.sample_classifier})")
    return page


def _reference_index(name: str, paths: list[Path], labels: list[str], *, option: str = "--align-to") -> int:
    """Index of the compared run named ``name`` (its label or path)."""
    if name in labels:
        return labels.index(name)
    target = Path(name).resolve()
    for i, path in enumerate(paths):
        if path.resolve() == target:
            return i
    raise FtvizError(
        f"{option} {name!r} is not one of the compared runs ({', '.join(labels)}); "
        "give one of their paths or names"
    )
