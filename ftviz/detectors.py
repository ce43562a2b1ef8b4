"""Label-issue detectors that read the whole snapshot history: the "detect" stage.

A single frame of a converged network has memorised most wrong labels, so its Cleanlab score
misses them; the history still shows them, because a wrong label is learnt late, forgotten
often and fitted with a negative margin for most of training. Every function here takes and
returns numpy arrays, keyword-only: ``logits`` is a history (T, N, C) (T snapshots of N probe
samples, C classes) and ``labels`` the given labels (N,). :func:`detect_run` applies them to a
run and writes ``suspicion.parquet`` (and ``detectors.parquet`` when noise was injected).

Detectors and the direction in which each one is suspicious:

==========================  ============================================================  =========
column                      what                                                          suspicious
==========================  ============================================================  =========
label_quality_last          Cleanlab self-confidence at the last snapshot                 low
label_quality_ensemble      Cleanlab self-confidence of the mean softmax over snapshots   low
label_quality_knn           Cleanlab self-confidence at the last snapshot of the mean of  low
                            the softmax and the embedding neighbours' label shares
aum                         area under the margin (mean logit margin of the given label)  low
confidence                  data-map confidence: mean probability of the given label      low
variability                 data-map variability: its standard deviation over snapshots   high
correctness                 data-map correctness: fraction of snapshots predicting it     low
forgetting_events           learnt-then-forgotten transitions (never learnt: T)            high
outlier_score               Cleanlab kNN outlier score at the last snapshot               high
outlier_rank                rank of outlier_score, 1 = most atypical                      low
==========================  ============================================================  =========

``confidence`` and ``label_quality_ensemble`` are the same number: Cleanlab's self-confidence of
the snapshot-mean probabilities is the mean of the per-snapshot probabilities of the given label.

The recommendation (``suspicion``, ``suspicion_rank``, ``is_label_issue``, ``issue_step``) was
chosen by measurement on digits with 10% flipped labels (experiments/bench_detectors.py). For a
held-out probe the last frame's probabilities are out-of-sample, the setting Confident Learning
is derived for, and it is Cleanlab at the last snapshot. When the network trains on the probe
(:func:`recommend`), Cleanlab's own estimate of the number of label issues (its calibrated
confident joint) on the last frame's model-plus-neighbours probabilities sets how many to flag,
and the history ranks them; when the last frame has memorised more contradicted labels than
that estimate, the history also sets the count. No rule uses the injected noise rate.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ftviz.config import DetectConfig, check_section
from ftviz.errors import FtvizError
from ftviz.numerics import auroc_against_noise, knn_label_shares, softmax

# Column -> +1 if a high value is suspicious, -1 if a low one is (for AUROC and ranking).
DIRECTION = {
    "label_quality_last": -1,
    "label_quality_ensemble": -1,
    "label_quality_knn": -1,
    "aum": -1,
    "confidence": -1,
    "variability": +1,
    "correctness": -1,
    "forgetting_events": +1,
    "outlier_score": +1,
    "outlier_rank": -1,
    "suspicion": +1,
}


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 3 or logits.shape[1] != len(labels):
        raise ValueError(
            f"logits must be a history (T, N, C) with N = len(labels); got {logits.shape} and {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[2]):
        raise ValueError(f"labels must lie in 0..{logits.shape[2] - 1}")
    return logits, labels


def given_logit_margins(*, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Margin of the given label at every snapshot: its logit minus the largest other logit.

    Parameters
    ----------
    logits : (T, N, C) history.
    labels : (N,) given labels.

    Returns
    -------
    (T, N) float64; negative where another class is predicted.
    """
    logits, labels = _check(logits, labels)
    z = logits.astype(np.float64)
    rows = np.arange(len(labels))
    given = z[:, rows, labels]
    others = z.copy()
    others[:, rows, labels] = -np.inf
    return given - others.max(axis=2)


def area_under_margin(*, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Area under the margin (Pleiss, Zhang, Elenberg and Weinberger, "Identifying Mislabeled
    Data using the Area Under the Margin Ranking", NeurIPS 2020).

    The mean over snapshots of the given label's logit minus the largest other logit. A correct
    label is fitted early, by generalisation, so its margin is large for most of training; a
    wrong one is fitted late, by memorisation, so its margin is negative until then.

    Returns (N,) float64, low = suspicious.
    """
    return given_logit_margins(logits=logits, labels=labels).mean(axis=0)


def data_map(*, logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Data-map coordinates (Swayamdipta et al., "Dataset Cartography: Mapping and Diagnosing
    Datasets with Training Dynamics", EMNLP 2020).

    Returns
    -------
    {"confidence": mean over snapshots of the softmax probability of the given label,
     "variability": its (population) standard deviation over snapshots,
     "correctness": fraction of snapshots whose argmax is the given label},
    each (N,) float64. Mislabelled samples sit at low confidence and low correctness
    ("hard to learn"); ambiguous ones at high variability.
    """
    logits, labels = _check(logits, labels)
    rows = np.arange(len(labels))
    p_given = softmax(logits)[:, rows, labels]
    correct = logits.argmax(axis=2) == labels[None, :]
    return {
        "confidence": p_given.mean(axis=0),
        "variability": p_given.std(axis=0),
        "correctness": correct.mean(axis=0),
    }


def forgetting_events(*, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Forgetting events (Toneva et al., "An Empirical Study of Example Forgetting during Deep
    Neural Network Learning", ICLR 2019).

    A forgetting event is a transition from correctly classified (argmax = given label) at one
    snapshot to misclassified at the next. As in the paper, a sample that is never classified
    correctly counts as forgotten more often than any other: it gets T, more than the most
    events a history of T snapshots can hold (T // 2).

    Returns (N,) float64, high = suspicious.
    """
    logits, labels = _check(logits, labels)
    correct = logits.argmax(axis=2) == labels[None, :]
    events = (correct[:-1] & ~correct[1:]).sum(axis=0).astype(np.float64)
    events[~correct.any(axis=0)] = float(len(correct))
    return events


def label_quality(*, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab's label quality (self-confidence) and ``find_label_issues`` flags for (N, C) probs.

    Returns (quality (N,) float64, low = suspicious; issues (N,) bool). Predictions too
    degenerate for a confident joint (a network that has learnt nothing) flag nothing.
    """
    from ftviz.quality import label_scores_from_probs

    return label_scores_from_probs(probs=probs, labels=labels)


def ensembled_label_quality(*, logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cleanlab on snapshot-ensembled probabilities: the mean softmax over snapshots, handed to
    Cleanlab's ``get_label_quality_scores`` and ``find_label_issues`` (Northcutt, Jiang and
    Chuang, "Confident Learning", JAIR 2021; snapshot ensembles: Huang et al., ICLR 2017).

    Returns (quality (N,), issues (N,) bool), as :func:`label_quality`.
    """
    logits, labels = _check(logits, labels)
    return label_quality(probs=softmax(logits).mean(axis=0), labels=labels)


def knn_mixed_probabilities(*, logits: np.ndarray, embedding: np.ndarray | None, labels: np.ndarray,
                            k: int = 10, neighbours: np.ndarray | None = None) -> np.ndarray:
    """An ensemble of two classifiers of one snapshot: the mean of the network's softmax (N, C)
    and the kNN label shares in its embedding (:func:`ftviz.numerics.knn_label_shares`). Cleanlab's estimates are
    only as good as the probabilities it is given; the kNN vote errs differently from the head
    (it reads the neighbours' labels, not the decision boundary) and the average of the two
    measured better than either on the digits (default run: AP 0.953 -> 0.956, and Cleanlab's
    own flags F1 0.84 -> 0.88). ``embedding`` and ``neighbours`` (its cosine neighbours, nearest
    first, when the score stage found them) None: the softmax alone.

    Returns (N, C) float64.
    """
    probs = softmax(logits)
    if embedding is None and neighbours is None:
        return probs
    shares = knn_label_shares(embedding=embedding, labels=labels, num_classes=probs.shape[1], k=k, neighbours=neighbours)
    return 0.5 * probs + 0.5 * shares


def estimated_issue_count(*, probs: np.ndarray, labels: np.ndarray) -> int:
    """Cleanlab's estimate of the number of label issues, ``num_label_issues`` with the calibrated
    confident joint (Northcutt et al., JAIR 2021, eq. 4): the count of off-diagonal entries of
    the joint of given and true labels. Degenerate predictions (nothing learnt) give 0."""
    from cleanlab.count import num_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return int(num_label_issues(np.asarray(labels, dtype=np.int64), probs,
                                        estimation_method="off_diagonal_calibrated"))
        except (ValueError, ZeroDivisionError):
            return 0


def top_count(score: np.ndarray, count: int) -> np.ndarray:
    """(N,) bool: the ``count`` highest values of ``score`` (ties broken by position)."""
    flags = np.zeros(len(score), dtype=bool)
    flags[np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")[: max(int(count), 0)]] = True
    return flags


def recommend(
    *, margins: np.ndarray, frame_flags: np.ndarray, probs: np.ndarray, labels: np.ndarray, start: int,
    min_flagged: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The recommended score and flag for a probe the network trains on.

    1. Count: Cleanlab's estimate of the number of label issues (:func:`estimated_issue_count`)
       on ``probs``, the last snapshot's model-plus-neighbours probabilities
       (:func:`knn_mixed_probabilities`), and never fewer than Cleanlab's ``find_label_issues``
       flagged at the last snapshot (``frame_flags[-1]``). That flags about as many, but picks
       them class by class by margin; the same number taken in the order of a better ranking is
       more precise (digits, default run: F1 0.84 -> 0.92).
    2. Ranking: the mean of the two ranks of ``1 - probs[given]`` and of minus the area under
       the margin over the learnt snapshots (``margins[start:]``, Pleiss et al. 2020): the last
       frame knows most, the history says which disagreement was sustained.
    3. Memorisation: the labels :func:`contradicted_labels` finds (negative mean margin over
       the learnt snapshots and flagged by Cleanlab at ``min_flagged`` of them) that the last
       snapshot fits. When they outnumber the count of step 1, the last frame has memorised
       more contradicted labels than it still flags, so it cannot be trusted: the ranking is
       the area under the margin alone and the count is at least those samples.

    Parameters
    ----------
    margins : (T, N) given-label margins; frame_flags : (T, N) Cleanlab's flags per snapshot;
    probs : (N, C) last-snapshot probabilities; start : first learnt snapshot.

    Returns (suspicion (N,) float64 in [0, 1], is_label_issue (N,) bool, memorised: bool).
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    # Never fewer than Cleanlab's own find_label_issues flagged at the last snapshot (the peer).
    count = max(estimated_issue_count(probs=probs, labels=labels), int(frame_flags[-1].sum()))
    aum = margins[start:].mean(axis=0)
    contradicted = contradicted_labels(margins=margins, frame_flags=frame_flags, start=start, min_flagged=min_flagged)
    memorised = int((contradicted & (margins[-1] > 0)).sum()) > count
    if memorised:
        suspicion = 1.0 / (1.0 + np.exp(np.clip(aum, -50, 50)))  # sigmoid(-AUM), 0.5 at zero margin
        count = max(count, int(contradicted.sum()))
    else:
        given = probs[np.arange(n), labels]
        suspicion = (rankdata(-given) + rankdata(-aum)) / (2.0 * max(n, 1))  # in (0, 1]
    return suspicion, top_count(suspicion, count), memorised


def rank_descending(values: np.ndarray) -> np.ndarray:
    """1-based rank, 1 = largest value; ties share the smallest rank ("min" method)."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(values, dtype=np.float64), method="min").astype(np.int64)


def stays_flagged_from(*, flags: np.ndarray, steps) -> np.ndarray:
    """The first step from which each sample stays flagged up to the last snapshot.

    Parameters
    ----------
    flags : (T, N) bool, the flag of every sample at every snapshot.
    steps : (T,) snapshot steps.

    Returns
    -------
    (N,) int64, -1 where the sample is not flagged at the last snapshot.
    """
    flags = np.asarray(flags, dtype=bool)
    steps = np.asarray(steps, dtype=np.int64)
    if flags.ndim != 2 or len(flags) != len(steps):
        raise ValueError(f"flags must be (T, N) with T = len(steps); got {flags.shape} and {steps.shape}")
    # Index of the last unflagged snapshot, per sample; the run of flags starts right after it.
    unflagged = ~flags
    last_unflagged = np.where(unflagged.any(axis=0), len(flags) - 1 - np.argmax(unflagged[::-1], axis=0), -1)
    start = last_unflagged + 1
    out = np.full(flags.shape[1], -1, dtype=np.int64)
    flagged_now = start < len(flags)
    out[flagged_now] = steps[start[flagged_now]]
    return out


def learnt_from(*, logits: np.ndarray, labels: np.ndarray, fraction: float = 0.8) -> int:
    """Index of the first snapshot at which the probe accuracy against the given labels reaches
    ``fraction`` of its best over the run: before it the network has not learnt the data yet,
    and its margins (near zero or negative for every sample) say nothing about the labels.
    """
    logits, labels = _check(logits, labels)
    accuracy = (logits.argmax(axis=2) == labels[None, :]).mean(axis=1)
    return int(np.argmax(accuracy >= fraction * accuracy.max()))


def contradicted_labels(
    *, margins: np.ndarray, frame_flags: np.ndarray, start: int, min_flagged: float = 0.2
) -> np.ndarray:
    """Labels the history contradicts, from the learnt snapshots on: over the snapshots from
    ``start`` on, the mean margin is negative (the area under the margin of Pleiss et al. 2020:
    another class won on average) *and* Cleanlab flagged the label at ``min_flagged`` or more of
    them (the network was confidently wrong about it for a sustained stretch, which a hard but
    correct label rarely is). Finds the wrong labels that memorisation has fitted by the last
    snapshot; no noise rate needed.

    Parameters
    ----------
    margins : (T, N) given-label margins (:func:`given_logit_margins`).
    frame_flags : (T, N) bool, Cleanlab's ``find_label_issues`` at each snapshot.
    start : first learnt snapshot (:func:`learnt_from`).

    Returns (N,) bool.
    """
    learnt = slice(start, None)
    return (margins[learnt].mean(axis=0) < 0) & (frame_flags[learnt].mean(axis=0) >= min_flagged)


def issue_steps_of_recommendation(
    *, margins: np.ndarray, frame_flags: np.ndarray, frame_quality: np.ndarray, accuracy: np.ndarray, steps,
    final: np.ndarray, fraction: float = 0.8, min_flagged: float = 0.2,
) -> np.ndarray:
    """``issue_step`` for :func:`recommend`: the rule applied to every prefix of the history (as
    if training had stopped at that snapshot), then :func:`stays_flagged_from`. Per prefix it
    reads what the score stage stored for that snapshot: the count is the number Cleanlab's
    ``find_label_issues`` flagged there and the last-frame half of the ranking is its label
    quality (the kNN half would need every snapshot's embeddings); the whole history's prefix
    is the final flag ``final``. Prefixes that end before the network has learnt the data
    (:func:`learnt_from` on the whole run) flag nothing: a random network's disagreement with a
    label is not evidence against it.

    Parameters
    ----------
    margins, frame_flags, frame_quality : (T, N) as in :func:`detect`.
    accuracy : (T,) probe accuracy against the given labels at each snapshot.
    final : (N,) bool, :func:`recommend`'s flag on the whole history.

    Returns (N,) int64 step, -1 where ``final`` is false.
    """
    from scipy.stats import rankdata

    T, N = margins.shape
    margin_sums = np.vstack([np.zeros((1, N)), np.cumsum(margins, axis=0)])
    flag_sums = np.vstack([np.zeros((1, N)), np.cumsum(frame_flags, axis=0)])
    best = np.maximum.accumulate(accuracy)
    learnt = int(np.argmax(accuracy >= fraction * accuracy.max()))
    flags = np.zeros(margins.shape, dtype=bool)
    for t in range(learnt, T - 1):
        start = int(np.argmax(accuracy[: t + 1] >= fraction * best[t]))
        width = t + 1 - start
        aum = (margin_sums[t + 1] - margin_sums[start]) / width
        contradicted = (aum < 0) & ((flag_sums[t + 1] - flag_sums[start]) / width >= min_flagged)
        count = int(frame_flags[t].sum())
        if int((contradicted & (margins[t] > 0)).sum()) > count:
            flags[t] = top_count(-aum, max(count, int(contradicted.sum())))
        else:
            flags[t] = top_count(rankdata(-np.asarray(frame_quality[t], dtype=np.float64)) + rankdata(-aum), count)
    flags[-1] = final
    return stays_flagged_from(flags=flags, steps=steps)


def detect(
    *,
    logits: np.ndarray,
    labels: np.ndarray,
    steps,
    frame_quality: np.ndarray,
    frame_flags: np.ndarray,
    outlier_score: np.ndarray,
    embedding: np.ndarray | None = None,
    neighbours: np.ndarray | None = None,
    probe_trained_on: bool = True,
    learnt_fraction: float = 0.8,
    min_flagged: float = 0.2,
    knn: int = 10,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray | None]]:
    """Every detector on one history, plus the recommended ``suspicion`` and ``is_label_issue``.

    Parameters
    ----------
    logits : (T, N, C) history; labels : (N,) given labels; steps : (T,) snapshot steps.
    frame_quality, frame_flags : (T, N) Cleanlab label quality and ``find_label_issues`` at each
        snapshot (the score stage's ``label_quality`` and ``is_label_issue``).
    outlier_score : (N,) kNN outlier score at the last snapshot.
    embedding : (N, D) the last snapshot's embedding, for the kNN half of
        :func:`knn_mixed_probabilities` (None: the softmax alone); ``knn`` its neighbours;
        ``neighbours`` (N, >= knn) those neighbours when the score stage found them already.
    probe_trained_on : whether the network trains on the probe samples (``data.probe = "train"``).
        Then the last snapshot's probabilities are in-sample, memorisation hides wrong labels, and
        the recommendation also reads the history (:func:`recommend`). For a held-out probe they
        are out-of-sample, the setting Confident Learning is built for, and the recommendation is
        Cleanlab at the last snapshot (suspicion = 1 - its label quality).

    Returns
    -------
    columns : {name: (N,) array} in ``suspicion.parquet`` order (``issue_step`` int64, -1 = none).
    flags : {detector: (N,) bool or None}, each detector's own flag rule (None: it has none).
    """
    logits, labels = _check(logits, labels)
    steps = np.asarray(steps, dtype=np.int64)
    frame_flags = np.asarray(frame_flags, dtype=bool)
    if frame_flags.shape != logits.shape[:2] or np.shape(frame_quality) != logits.shape[:2]:
        raise ValueError(f"frame scores must be (T, N) = {logits.shape[:2]}, got {frame_flags.shape}")
    margins = given_logit_margins(logits=logits, labels=labels)
    aum = margins.mean(axis=0)
    dm = data_map(logits=logits, labels=labels)
    forgotten = forgetting_events(logits=logits, labels=labels)
    ensemble_quality, ensemble_flags = ensembled_label_quality(logits=logits, labels=labels)
    mixed = knn_mixed_probabilities(logits=logits[-1], embedding=embedding, labels=labels, k=knn, neighbours=neighbours)
    knn_quality, knn_flags = label_quality(probs=mixed, labels=labels)
    accuracy = (logits.argmax(axis=2) == labels[None, :]).mean(axis=1)

    if probe_trained_on:
        start = learnt_from(logits=logits, labels=labels, fraction=learnt_fraction)
        suspicion, is_issue, _ = recommend(margins=margins, frame_flags=frame_flags, probs=mixed, labels=labels,
                                           start=start, min_flagged=min_flagged)
        issue_step = issue_steps_of_recommendation(
            margins=margins, frame_flags=frame_flags, frame_quality=np.asarray(frame_quality, dtype=np.float64),
            accuracy=accuracy, steps=steps, final=is_issue, fraction=learnt_fraction, min_flagged=min_flagged,
        )
    else:
        suspicion = 1.0 - np.asarray(frame_quality[-1], dtype=np.float64)
        is_issue = frame_flags[-1].copy()
        learnt = np.arange(len(steps))[:, None] >= learnt_from(logits=logits, labels=labels, fraction=learnt_fraction)
        issue_step = stays_flagged_from(flags=frame_flags & learnt, steps=steps)

    columns = {
        "label_quality_last": np.asarray(frame_quality[-1], dtype=np.float64),
        "label_quality_ensemble": ensemble_quality,
        "label_quality_knn": knn_quality,
        "aum": aum,
        "confidence": dm["confidence"],
        "variability": dm["variability"],
        "correctness": dm["correctness"],
        "forgetting_events": forgotten,
        "outlier_score": np.asarray(outlier_score, dtype=np.float64),
        "outlier_rank": rank_descending(outlier_score),
        "suspicion": suspicion,
        "suspicion_rank": rank_descending(suspicion),
        "is_label_issue": is_issue,
        "issue_step": issue_step,
    }
    flags = {
        "label_quality_last": frame_flags[-1],
        "label_quality_ensemble": ensemble_flags,
        "label_quality_knn": knn_flags,
        "aum": aum < 0,  # the given label lost to another class on average
        "confidence": dm["confidence"] < 0.5,  # under half the probability on average
        "variability": None,
        "correctness": dm["correctness"] < 0.5,  # predicted at under half the snapshots
        "forgetting_events": forgotten >= 1,  # Toneva et al.'s "forgettable" (never learnt included)
        "outlier_score": None,
        "suspicion": is_issue,
    }
    return columns, flags


def detector_scores(*, score: np.ndarray, flags: np.ndarray | None, is_noisy: np.ndarray) -> dict:
    """AUROC and average precision of ``score`` (high = suspicious), and precision, recall and F1
    of ``flags``, against the injected noise ``is_noisy``. NaN where undefined."""
    from sklearn.metrics import average_precision_score

    is_noisy = np.asarray(is_noisy, dtype=bool)
    both = 0 < is_noisy.sum() < len(is_noisy)
    out = {
        "auroc": auroc_against_noise(score, is_noisy),
        "average_precision": float(average_precision_score(is_noisy, score)) if both else float("nan"),
        "precision": float("nan"), "recall": float("nan"), "f1": float("nan"), "n_flagged": None,
    }
    if flags is not None:
        flags = np.asarray(flags, dtype=bool)
        hits = int((flags & is_noisy).sum())
        precision = hits / flags.sum() if flags.any() else 0.0
        recall = hits / is_noisy.sum() if is_noisy.any() else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out.update(precision=float(precision), recall=float(recall), f1=float(f1), n_flagged=int(flags.sum()))
    return out


def detector_table(
    *, columns: dict, flags: dict, is_noisy: np.ndarray, steps, frame_quality: np.ndarray, frame_flags: np.ndarray
):
    """The rows of ``detectors.parquet``: one per detector (step null, except ``label_quality_last``
    at the last step), then ``cleanlab_frame`` at every snapshot."""
    import pandas as pd

    rows = []
    for name, rule in flags.items():
        score = DIRECTION[name] * np.asarray(columns[name], dtype=np.float64)
        step = int(steps[-1]) if name == "label_quality_last" else None
        rows.append({"detector": name, "step": step, **detector_scores(score=score, flags=rule, is_noisy=is_noisy)})
    for t, step in enumerate(steps):
        rows.append({"detector": "cleanlab_frame", "step": int(step),
                     **detector_scores(score=-np.asarray(frame_quality[t], dtype=np.float64), flags=frame_flags[t],
                                       is_noisy=is_noisy)})
    table = pd.DataFrame(rows)
    table["step"] = table["step"].astype("Int64")
    table["n_flagged"] = table["n_flagged"].astype("Int64")
    return table


# ---- the training set, from the training dynamics --------------------------------------------
def suggestions(*, logits: np.ndarray, labels: np.ndarray, flags: np.ndarray, start: int = 0,
                shares: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The label to give each sample, and the probability the network gives it: the argmax of
    the mean softmax over ``logits[start:]`` (averaged with the kNN label ``shares`` when given);
    for a flagged sample whose argmax is still its given label (a memorised label), the most
    probable other class (then its probability is under one half).

    The kNN vote corrects the undertrained network's suggestions: on digits training sets at
    6 epochs the flagged flips' suggestions were right 0.76-0.86 of the time from the network
    alone and 0.81-0.91 with the vote (six runs, 10% and 20% noise); at 40 epochs, where the
    features memorise too, 0.963 against 0.971.

    Parameters
    ----------
    logits : (T, N, C) history; labels : (N,) given labels; flags : (N,) bool;
    shares : (N, C) the neighbours' label shares (:func:`ftviz.numerics.knn_label_shares`) or None.

    Returns (suggested (N,) int64, probability (N,) float64 of the suggested class).
    """
    logits, labels = _check(logits, labels)
    probs = softmax(logits[min(int(start), len(logits) - 1):]).mean(axis=0)
    if shares is not None:
        probs = 0.5 * probs + 0.5 * np.asarray(shares, dtype=np.float64)
    suggested = probs.argmax(axis=1)
    memorised = np.asarray(flags, dtype=bool) & (suggested == labels)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    suggested[memorised] = others[memorised].argmax(axis=1)
    return suggested.astype(np.int64), probs[np.arange(len(labels)), suggested]


class MarginModes(NamedTuple):
    """What the area under the margin's mixtures say of a run (:func:`margin_modes`)."""

    lower: int  # samples in the lower of two modes
    lowest: int  # samples in the lowest of three modes
    rise: float  # :func:`accuracy_rise` (NaN with one pass)

    @property
    def weak(self) -> bool:
        """Its accuracy on the given labels still rises (NaN, one pass: weak): not learnt yet."""
        return still_learning(self.rise)


class TrainingRegime(NamedTuple):
    """What :func:`detect_training_set` read of the network that trained on the set."""

    accuracy_rise: float  # per pass over the last two (:func:`accuracy_rise`); NaN: not read

    @property
    def weak(self) -> bool:
        """Still learning, or no regime read (too few margins): treated as weak."""
        return still_learning(self.accuracy_rise)

    @property
    def fix(self) -> str:
        """The fix recommended for the flagged labels: "mixed" while weak, else "drop" (:data:`FIX_BY_REGIME`)."""
        return FIX_BY_REGIME[self.weak]


def still_learning(rise: float) -> bool:
    """Whether an accuracy rise per pass (:func:`accuracy_rise`) reads as a network still learning
    its training set: :data:`STILL_LEARNING_RISE` or more, or NaN (one pass, or not read)."""
    return not rise < STILL_LEARNING_RISE


# A network whose accuracy against the given labels still rose by this much per pass over its
# last two passes is still learning its training set (weak, :func:`margin_modes`). Digits, 10% and
# 20% flips, symmetric and asymmetric, held-out probe (2026-12-06): every 20-epoch run (17) rose by
# 0.000-0.006 per pass, 40 epochs 0.003, 10 epochs (4) 0.008-0.016, 8 epochs (2) 0.023-0.025, every
# 6-epoch run (20) 0.041-0.078. Read as weak, the 8-epoch runs flag better (F1 0.845 against 0.722
# with asymmetric flips, 0.907 against 0.891 symmetric) and the 10-epoch ones worse (0.772-0.942
# against 0.797-0.961: their networks have begun to memorise).
STILL_LEARNING_RISE = 0.02


def accuracy_rise(*, logits: np.ndarray, labels: np.ndarray, slot_steps: np.ndarray | None = None) -> float:
    """How much the accuracy against the given labels rose per pass over the last two passes
    (over the last one when there are only two), on the samples the last pass trained on; NaN
    with fewer than two passes. Two passes, not one: one pass's rise on digits moves by a
    sample or ten either way.

    A run cut within an epoch forward-fills the samples its last pass did not reach
    (:func:`ftviz.dynamics.histories`): with ``slot_steps`` the rise is measured on the samples
    whose slot is fresh (a new step), up to the last pass that reached a tenth of them.

    Parameters
    ----------
    logits : (K, N, C) pass logits; labels : (N,) given labels; slot_steps : (K, N) the step of
    each pass per sample, or None (every pass reached every sample).
    """
    labels = np.asarray(labels)
    k, fresh = len(logits) - 1, np.ones(logits.shape[1], dtype=bool)
    if slot_steps is not None:
        while k >= 1:
            fresh = np.asarray(slot_steps[k]) != np.asarray(slot_steps[k - 1])
            if fresh.sum() >= max(1, logits.shape[1] // 10):
                break
            k -= 1
    if k < 1:
        return float("nan")
    first = max(k - 2, 0)
    right = logits[[first, k]][:, fresh].argmax(axis=2) == labels[fresh]
    return float((right[1].mean() - right[0].mean()) / (k - first))


def _lower_mode_size(aum: np.ndarray, components: int) -> int:
    """How many of ``aum`` (N,) the lowest component of a ``components``-Gaussian mixture holds."""
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(components, random_state=0).fit(aum[:, None])
    lowest = int(np.argmin(mixture.means_.ravel()))
    return int((mixture.predict_proba(aum[:, None])[:, lowest] > 0.5).sum())


def margin_modes(*, logits: np.ndarray, labels: np.ndarray, start: int,
                 slot_steps: np.ndarray | None = None) -> MarginModes | None:
    """The modes of the area under the margin over the learnt passes, and the network's regime;
    None when the margins are too few or all equal.

    ``lower``: the size of the lower mode, a two-component Gaussian mixture, the wrong labels'
    AUM being the lower component (Pleiss et al. 2020 separate the two with threshold samples; a
    mixture needs no extra training).
    ``weak``: the accuracy against the given labels still rises by :data:`STILL_LEARNING_RISE`
    or more per pass (:func:`accuracy_rise`; one pass: weak): the network is still learning its
    training set, so its disagreement includes hard but correct labels. A network that has
    learnt it has stopped rising, whether or not it memorises the wrong labels.
    The earlier test (the passes' mean prediction disagrees with more labels than ``lower``
    holds) read 6-epoch runs with asymmetric flips as learnt: such flips widen the lower mode
    (five runs: 253-312 samples for 144 flips at 10%, against 230-261 disagreements), and the learnt
    regime's count then flagged 194-203 (F1 0.70-0.79) and its retrain dropped 253-312 rows.
    ``lowest``: the size of the lowest of three modes (easy, hard but correct, wrong labels),
    which a network that has learnt its data separates (:func:`training_issue_count`).

    Parameters
    ----------
    logits : (K, N, C) pass logits; labels : (N,) given labels; start : first learnt pass
    (:func:`learnt_from`); slot_steps : (K, N) or None, as :func:`accuracy_rise`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    aum = given_logit_margins(logits=logits, labels=labels)[start:].mean(axis=0)
    if len(aum) < 10 or not np.ptp(aum) > 0:
        return None
    rise = accuracy_rise(logits=logits, labels=labels, slot_steps=slot_steps)
    return MarginModes(lower=_lower_mode_size(aum, 2), lowest=_lower_mode_size(aum, 3), rise=rise)


def training_issue_count(*, recommended: int, modes: MarginModes | None, mixed_flagged: int | None = None) -> int:
    """How many training labels to flag, from estimates that fail in opposite regimes.

    :func:`recommend`'s count (Cleanlab's estimate, or the contradicted labels once the network
    memorises) is one; the others are the modes of the area under the margin
    (:func:`margin_modes`). A weak network's count includes hard but correct labels, so the
    smaller of it and the lower of two modes is taken. A network that has learnt its data may
    memorise wrong labels, which hides them from the first count, so the larger of it and the
    lowest of three modes is taken: the three modes keep apart the labels learnt late (hard but
    correct) that the lower of two modes takes in. Measured on 21 digits runs read as learnt
    (10% and 20% symmetric noise, 6, 20 and 40 epochs, seeds 0-4, two recipes; 2026-12-05): F1 at
    6 epochs 0.60-0.79 -> 0.84-0.94 (the lower of two modes flagged 240-422 for 144-180 flips),
    at 20 and 40 epochs 0.70-0.96 -> 0.93-0.96, at the price of up to 16 flips fewer flagged
    (median 5 of 144-359), which is why a retrain drops more (:func:`retrain_drop_count`).

    A weak network's third estimate is ``mixed_flagged``: how many labels Cleanlab's
    ``find_label_issues`` flags on the same mixed probabilities that Cleanlab's estimate
    (``num_label_issues``, calibrated) reads (the ``label_quality_knn`` detector's flags). Without
    it the count flagged 1-27 labels more on each of 45 six-epoch digits runs, two thirds of them
    clean. Taking the smallest of the three (2026-12-06; seeds 0-9, seeds 5-9 not used to choose
    it), mean F1 of the flags: 10% symmetric flips held out 0.883 -> 0.890 (better or equal on all
    10 seeds), trained on 0.915 -> 0.918 (>= 0.90 on 9 seeds of 10, before 7); 20% symmetric held
    out 0.864 -> 0.873 (9 of 10 better); 10% asymmetric 0.784 -> 0.783; 20% asymmetric (seeds
    0-4) 0.782 -> 0.778.

    ``modes``: :func:`margin_modes`, None: the first count alone; ``mixed_flagged`` None: not read.
    """
    if modes is None:
        return int(recommended)
    if modes.weak:
        counts = [int(recommended), modes.lower] + ([] if mixed_flagged is None else [int(mixed_flagged)])
        return min(counts)
    return max(int(recommended), modes.lowest)


def retrain_drop_count(*, recommended: int, modes: MarginModes | None, flagged: int) -> int:
    """How many training labels a retrain should drop once the network has learnt its data:
    at least the ``flagged`` ones, and the lower of two margin modes (:func:`margin_modes`).

    Flagging and dropping weigh their two errors differently. A flag a reviewer reads should be
    precise (the lowest of three modes, :func:`training_issue_count`); a retrain loses little
    with a clean sample dropped and much with a wrong label kept. On digits, 20% symmetric
    flips, 20 epochs, each arm the mean of three trainings (2026-12-05): dropping the 277
    flagged (269 flips) closed 0.52 of the noisy-to-oracle gap, dropping the lower mode's 312
    (279 flips) 0.82; on another seed 286 against 297 rows (274 against 276 flips), 0.68 both.
    """
    if modes is None or modes.weak:
        return int(flagged)
    return max(int(flagged), int(recommended), modes.lower)


# The fix the detect stage recommends for the flagged training labels, by the network's regime
# (:func:`margin_modes`): "mixed" while it is weak (:func:`retrain_fixes`), "drop" once it has
# learnt its data. Digits, 20% symmetric flips, retraining on the fixed labels, each arm the mean
# of 3 trainings, share of the noisy-to-oracle gap closed on seeds 0-3, the default recipe
# (2026-12-06): at 6 epochs (weak) mixed 0.59 / 0.46 / 0.31 / 0.63 (mean 0.50) against relabel
# 0.41 / 0.35 / 0.36 / 0.57 (0.42) and drop 0.38 / 0.42 / 0.25 / 0.36 (0.35); at 20 epochs
# (learnt) drop 0.68 / 0.82 / 0.83 / 0.80 (0.78) against mixed 0.76 / 0.74 / 0.63 / 0.88 (0.75).
# With 10% asymmetric flips at 6 epochs (weak): mixed 0.70 / 0.21 / 0.80 / 0.40 (0.53) against drop
# 0.29 and relabel 0.23 on average (those two with the flags before the count's third bound).
# A weak network's confident suggestions are mostly right, its unsure ones as often wrong as
# right; a learnt network's suggestions are right for 95-97% of the flagged flips, but every
# clean label it flags would be relabelled wrong, and relabelling the confident ones only
# gained nothing there.
FIX_BY_REGIME = {True: "mixed", False: "drop"}

# A weak network's suggestion is taken (the row relabelled) from this probability on: half of
# the mean softmax (with the neighbours' vote), so the suggested class beats all others together.
# Digits, 6 epochs, 20% flips, four runs (2026-12-06): 231-274 of 314-341 flagged rows relabelled,
# 46-50 of them wrongly, against 70-114 wrong when every flagged row is relabelled.
RELABEL_PROBABILITY = 0.5

RETRAIN_FIXES = ("relabel", "drop")  # the values of a training row's ``fix`` (blank: keep it)


def retrain_fixes(*, flagged: np.ndarray, dropped: np.ndarray, probability: np.ndarray, weak: bool) -> np.ndarray:
    """What a retrain does with each training row (:data:`FIX_BY_REGIME`), object (N,): "" (keep),
    "relabel" (to its suggested label) or "drop".

    While the network is weak (``weak``): a flagged row is relabelled where the network gives its
    suggestion ``probability`` >= :data:`RELABEL_PROBABILITY`, dropped otherwise. Once it has
    learnt: every row of ``dropped`` (the flagged ones and those next in line,
    :func:`retrain_drop_count`) is dropped.

    Parameters
    ----------
    flagged, dropped : (N,) bool; probability : (N,) the suggestion's probability (:func:`suggestions`).
    """
    relabel, drop = RETRAIN_FIXES
    fix = np.full(len(flagged), "", dtype=object)
    if weak:
        fix[flagged] = drop
        fix[flagged & (np.asarray(probability) >= RELABEL_PROBABILITY)] = relabel
    else:
        fix[np.asarray(dropped, dtype=bool) | flagged] = drop
    return fix


def detect_training_set(*, history: np.ndarray, labels: np.ndarray, slot_steps: np.ndarray,
                        features: np.ndarray | None = None, knn: int = 10,
                        learnt_fraction: float = 0.8, min_flagged: float = 0.2):
    """Every detector on the training set, from the outputs training itself computed.

    The training-time logits of a sample at its k-th pass (slot k, about epoch k) play the part
    of the probe's snapshots: Cleanlab's label quality and flags at every slot, the area under
    the margin, the data map and forgetting events over the slots, and the recommendation of
    :func:`recommend` (the network trains on these samples). Each pass's logits were computed
    before that batch's update, so the sample is out-of-sample at its first pass only.
    ``features``, each sample's embedding at its last pass, play the last snapshot's
    embedding: one cosine search of them gives the outlier score and, while the network is weak
    (:func:`margin_modes`), the kNN half of the mixed probabilities and of the suggested labels.
    Without them the outlier columns are NaN and the probabilities are the softmax alone.

    Parameters
    ----------
    history : (K, N, C) slot logits (:func:`ftviz.dynamics.histories`); labels : (N,) given labels;
    slot_steps : (K, N) step of each slot per sample; features : (N, D) or None
    (:func:`ftviz.dynamics.last_features`); knn : neighbours of the vote and the outlier score.

    Returns
    -------
    columns : {name: (N,) array} as :func:`detect`, ``issue_step`` the sample's own step (-1:
        none), plus ``suggested_label``, ``suggested_probability`` (:func:`suggestions`) and
        ``fix`` (object: what a retrain does with the row, "relabel", "drop" or "",
        :func:`retrain_fixes`); flags : {detector: (N,) bool or None}; frame_quality,
        frame_flags : (K, N) Cleanlab at every slot; regime : :class:`TrainingRegime`, the fix
        recommended for the flagged labels ("mixed" while the network is weak, else "drop",
        :data:`FIX_BY_REGIME`) and the accuracy rise it was read from.
    """
    history, labels = _check(history, labels)
    slots = len(history)
    quality = np.empty(history.shape[:2], dtype=np.float64)
    frame_flags = np.zeros(history.shape[:2], dtype=bool)
    for k in range(slots):
        quality[k], frame_flags[k] = label_quality(probs=softmax(history[k]), labels=labels)
    start = learnt_from(logits=history, labels=labels, fraction=learnt_fraction)
    slot_steps = np.asarray(slot_steps)
    modes = margin_modes(logits=history, labels=labels, start=start, slot_steps=slot_steps)
    regime = TrainingRegime(accuracy_rise=float("nan") if modes is None else modes.rise)
    k = min(int(knn), len(labels) - 1)
    neighbours, outlier = None, np.zeros(len(labels))
    if features is not None and k >= 1:
        from ftviz.numerics import exact_neighbours
        from ftviz.quality import outlier_scores

        neighbours, distances = exact_neighbours(np.asarray(features, dtype=np.float32), k, metric="cosine")
        outlier = outlier_scores(features, k=k, method="knn", distances=distances)
    # The neighbours' vote corrects a weak network and misleads one that has learnt its training
    # set (its features pull each sample towards its given label, flips included): digits, 10% and
    # 20% noise, AUROC +0.002 to +0.004 on five 6-epoch runs, -0.002 to -0.005 on four 20-epoch ones.
    vote = neighbours if modes is not None and modes.weak else None
    columns, flags = detect(
        logits=history, labels=labels, steps=np.arange(slots), frame_quality=quality, frame_flags=frame_flags,
        outlier_score=outlier, neighbours=vote, probe_trained_on=True, knn=max(k, 1),
        learnt_fraction=learnt_fraction, min_flagged=min_flagged,
    )
    if neighbours is None:  # no embedding of the training set: no outlier score
        columns["outlier_score"] = np.full(len(labels), np.nan)
        columns["outlier_rank"] = np.full(len(labels), -1, dtype=np.int64)
        del flags["outlier_score"]  # no score, no row in train_detectors.parquet
    recommended = columns["is_label_issue"]
    is_issue = top_count(columns["suspicion"], training_issue_count(
        recommended=int(recommended.sum()), modes=modes, mixed_flagged=int(flags["label_quality_knn"].sum())))
    # Labels the count adds are flagged from the last pass on (earlier passes' rule did not
    # flag them); labels it removes are not flagged at all.
    slot = np.where(is_issue, np.where(recommended, columns["issue_step"], slots - 1), -1)
    columns["is_label_issue"], flags["suspicion"] = is_issue, is_issue
    found = slot >= 0
    issue_step = np.full(len(labels), -1, dtype=np.int64)
    issue_step[found] = slot_steps[slot[found], np.flatnonzero(found)]
    columns["issue_step"] = issue_step
    shares = None if vote is None else knn_label_shares(
        embedding=None, labels=labels, num_classes=history.shape[2], k=k, neighbours=vote)
    columns["suggested_label"], columns["suggested_probability"] = suggestions(
        logits=history, labels=labels, flags=columns["is_label_issue"], start=start, shares=shares)
    weak = regime.weak  # too few margins to read a regime: as a weak network
    dropped = is_issue if weak else top_count(columns["suspicion"], retrain_drop_count(
        recommended=int(recommended.sum()), modes=modes, flagged=int(is_issue.sum())))
    columns["fix"] = retrain_fixes(flagged=is_issue, dropped=dropped, probability=columns["suggested_probability"],
                                   weak=weak)
    return columns, flags, quality, frame_flags, regime


def detect_training_run(run, section: DetectConfig) -> dict:
    """``train_suspicion.parquet`` (and ``train_detectors.parquet`` under injected noise) from
    the run's training dynamics; returns what the detect stage records. Call only when
    :func:`ftviz.dynamics.has_dynamics`."""
    import pandas as pd

    from ftviz.dynamics import histories, last_features, load_dynamics, read_train_samples, sample_positions
    from ftviz.rundir import write_parquet

    samples = read_train_samples(run)
    sample_ids = samples["id"].to_numpy(np.int64)
    ids, steps, logits = load_dynamics(run)
    position, known = sample_positions(sample_ids, ids)
    if not known.all():
        raise FtvizError(f"{run.path}: the training dynamics name sample id {int(ids[~known][0])}, which "
                         "train_samples.parquet lacks; rerun training")
    history, slot_steps, times_seen = histories(position, steps, logits, len(sample_ids))
    if not np.isfinite(history).all():
        raise FtvizError(f"{run.path}: the training dynamics hold NaN or infinite logits (training diverged); "
                         "rerun training with a lower train.lr")
    seen = times_seen > 0
    labels = samples["given_label"].to_numpy(np.int64)
    features = last_features(run, sample_ids)
    if features is not None:
        features = features[seen]
        if not np.isfinite(features).all():  # some samples without features, or a diverged training
            features = None
    columns, flags, quality, frame_flags, regime = detect_training_set(
        history=history[:, seen], labels=labels[seen], slot_steps=slot_steps[:, seen], features=features,
        knn=section.knn, learnt_fraction=section.learnt_fraction, min_flagged=section.min_flagged)
    table = pd.DataFrame({"id": sample_ids})
    for name, values in columns.items():  # samples never trained on (a run shorter than an epoch): empty
        empty = {"b": False, "i": -1, "O": ""}.get(values.dtype.kind, np.nan)
        full = np.full(len(sample_ids), empty, dtype=values.dtype)
        full[seen] = values
        table[name] = full
    table["times_seen"] = times_seen
    table["issue_step"] = table["issue_step"].where(table["issue_step"] >= 0).astype("Int64")
    table["outlier_rank"] = table["outlier_rank"].where(table["outlier_rank"] >= 0).astype("Int64")
    write_parquet(run.file("train_suspicion.parquet"), table)
    rise = regime.accuracy_rise  # what the fix was read from, for `ftviz quality` to say why
    record = {"train_flagged": int(columns["is_label_issue"].sum()), "train_samples": int(seen.sum()),
              "train_fix": regime.fix, "train_fix_rows": int((columns["fix"] != "").sum()),
              "train_accuracy_rise": round(rise, 4) if np.isfinite(rise) else None}
    noisy = samples["is_noisy"].to_numpy(bool)[seen] if "is_noisy" in samples else np.zeros(int(seen.sum()), bool)
    if noisy.any():
        detectors = detector_table(columns=columns, flags=flags, is_noisy=noisy, steps=np.arange(len(history)),
                                   frame_quality=quality, frame_flags=frame_flags)
        write_parquet(run.file("train_detectors.parquet"), detectors)
        row = detectors[detectors["detector"] == "suspicion"].iloc[0]
        record.update(train_auroc=round(float(row["auroc"]), 4), train_f1=round(float(row["f1"]), 4))
    elif run.file("train_detectors.parquet").exists():
        run.file("train_detectors.parquet").unlink()
    return record


# ---- the stage ------------------------------------------------------------------------------
def load_logits(run, steps) -> np.ndarray:
    """The logits of every snapshot, (T, N, C) float32, without reading the embeddings."""
    return np.stack([run.load_logits(step).astype(np.float32) for step in steps])


def frame_scores(run, scores, steps, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, N) label quality, (T, N) issue flags and (N,) last outlier score from scores.parquet
    (:meth:`ftviz.rundir.RunDir.frame_scores`; every (step, id) must have its row)."""
    per_frame = run.frame_scores(["label_quality", "is_label_issue", "outlier_score"], steps=steps, count=count,
                                 scores=scores, complete=True)
    return per_frame["label_quality"], per_frame["is_label_issue"], per_frame["outlier_score"][-1]


def _check_finite(run, steps, history: np.ndarray, what: str) -> None:
    """One line naming the first snapshot whose ``history`` (T, N, ...) holds NaN or infinity."""
    finite = np.isfinite(history).reshape(len(history), -1).all(axis=1)
    if not finite.all():
        step = steps[int(np.argmin(finite))]
        raise FtvizError(
            f"{run.path}: snapshot step {step} holds NaN or infinite {what} (training diverged); "
            "rerun training with a lower train.lr"
        )


def probe_is_trained_on(manifest: dict) -> bool:
    """Whether the run's network trained on its probe samples (``data.probe = "train"``)."""
    return manifest.get("config", {}).get("data", {}).get("probe", "train") == "train"


def detect_run(run, section: DetectConfig, *, progress: bool = True) -> None:
    """The "detect" stage: write ``suspicion.parquet`` and, under injected noise, ``detectors.parquet``.

    Reads ``snapshots/`` (logits; the embedding of the last one), ``samples.parquet`` and ``scores.parquet``; ``section``
    holds the ``[detect]`` settings.
    """
    from ftviz.rundir import write_parquet

    run.require("train")
    run.require("score")
    check_section(section, "detect")  # a section built in code never met ftviz.config.validate
    rule = section.rule
    manifest = run.manifest()
    trained_on = probe_is_trained_on(manifest) if rule == "auto" else rule == "history"
    with run.stage("detect", rule=rule, history=trained_on) as record:
        samples = run.samples().sort_values("id").reset_index(drop=True)
        count = len(samples)
        steps = run.snapshot_steps()
        if not steps:
            raise FtvizError(f"{run.path} has no snapshots; rerun training")
        logits = load_logits(run, steps)
        if logits.shape[1] != count:
            raise FtvizError(
                f"{run.path}: snapshots hold {logits.shape[1]} samples, samples.parquet {count}; rerun training"
            )
        _check_finite(run, steps, logits, "logits")
        quality, frame_flags, outlier = frame_scores(run, run.scores(), steps, count)
        table, columns, flags = _suspicion_table(run, section, samples, steps, logits, quality, frame_flags,
                                                 outlier, trained_on)
        write_parquet(run.file("suspicion.parquet"), table)
        record["flagged"] = int(columns["is_label_issue"].sum())
        noisy = samples["is_noisy"].to_numpy(bool) if "is_noisy" in samples else np.zeros(count, bool)
        if noisy.any():
            detectors = detector_table(columns=columns, flags=flags, is_noisy=noisy, steps=steps,
                                       frame_quality=quality, frame_flags=frame_flags)
            write_parquet(run.file("detectors.parquet"), detectors)
            suspicion_row = detectors[detectors["detector"] == "suspicion"].iloc[0]
            record["auroc"] = round(float(suspicion_row["auroc"]), 4)
            record["f1"] = round(float(suspicion_row["f1"]), 4)
        elif run.file("detectors.parquet").exists():
            run.file("detectors.parquet").unlink()  # a stale table from other labels must not survive
        from ftviz.dynamics import has_dynamics

        if has_dynamics(run):  # the whole training set, from the logits training computed
            record.update(detect_training_run(run, section))
        else:
            for stale in ("train_suspicion.parquet", "train_detectors.parquet"):
                run.file(stale).unlink(missing_ok=True)


def _suspicion_table(run, section: DetectConfig, samples, steps, logits, quality, frame_flags, outlier,
                     trained_on: bool):
    """(suspicion table, detector columns, flags) from the history of ``steps``: the detect
    stage's work, shared by the stage and the follower's interim tables."""
    import pandas as pd

    from ftviz.quality import recorded_neighbours

    labels = samples["given_label"].to_numpy(np.int64)
    # The kNN half of the mixed probabilities: the last frame's neighbours as the score stage
    # found them (one search a frame), else a search of its embedding.
    neighbours = recorded_neighbours(run, steps[-1], k=min(section.knn, len(labels) - 1))
    embedding = None
    if neighbours is None:
        embedding = run.load_snapshot(steps[-1])[0].astype(np.float32)
        _check_finite(run, steps[-1:], embedding[None], "embedding")
    columns, flags = detect(
        logits=logits, labels=labels, steps=steps, frame_quality=quality, frame_flags=frame_flags,
        outlier_score=outlier, embedding=embedding, neighbours=neighbours, probe_trained_on=trained_on,
        learnt_fraction=section.learnt_fraction, min_flagged=section.min_flagged, knn=section.knn,
    )
    table = pd.DataFrame({"id": samples["id"].to_numpy(np.int64), **columns})
    table["issue_step"] = table["issue_step"].where(table["issue_step"] >= 0).astype("Int64")  # null: never
    return table, columns, flags


def interim_suspicion(run, section: DetectConfig, score_section, steps) -> bool:
    """While training runs: :data:`INTERIM_SUSPICION`, ``suspicion.parquet``'s table from the
    history so far (the follower, now and then), from the frames scored under
    ``analysis/score/``. The detect stage writes the final ``suspicion.parquet``; returns False
    where the history cannot be judged yet."""
    from ftviz.quality import score_cache
    from ftviz.rundir import INTERIM_SUSPICION, write_parquet

    cache = score_cache(run, score_section)
    frames = [cache.get(step) for step in steps]
    if len(steps) < 2 or any(frame is None for frame in frames):
        return False
    samples = run.samples().sort_values("id").reset_index(drop=True)
    rule = section.rule
    trained_on = probe_is_trained_on(run.manifest()) if rule == "auto" else rule == "history"
    logits = load_logits(run, steps)
    quality = np.stack([frame["label_quality"] for frame in frames])
    flags = np.stack([frame["is_label_issue"] for frame in frames]).astype(bool)
    try:
        table, _, _ = _suspicion_table(run, section, samples, steps, logits, quality, flags,
                                       frames[-1]["outlier_score"], trained_on)
    except (FtvizError, ValueError):
        return False  # too early to judge (e.g. nothing learnt yet): the next interval tries again
    # Its own file, never suspicion.parquet: training may end, and the detect stage write the
    # final table, between this process reading "running" and this write.
    write_parquet(run.file(INTERIM_SUSPICION), table)
    return True


# ---- readers ----------------------------------------------------------------------------------
def load_suspicion(run):
    """``suspicion.parquet`` of ``run`` (:meth:`ftviz.rundir.RunDir.suspicion`: the detect stage
    must be done)."""
    return run.suspicion()


def load_detectors(run):
    """``detectors.parquet`` of ``run``, or None when the run injected no noise
    (:meth:`ftviz.rundir.RunDir.detectors`)."""
    return run.detectors()
