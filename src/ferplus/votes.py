"""FER+ vote processing: from 10 raw tagger votes per image to an 8-emotion label distribution.

The rules follow the FER+ reference code (github.com/microsoft/FERPlus, ferplus.py,
`_process_data`) for the four label modes of Barsoum et al. 2016, "Training Deep Networks for
Facial Expression Recognition with Crowd-Sourced Label Distribution":

- majority: keep an image only when its top emotion has more than half of the votes; the label
  is that emotion alone.
- probability and crossentropy (the same keep/drop rule): take the top-voted entries, ties
  together, until they have at least 75% of the votes or 3 entries are taken. Keep the image when
  they have more than half of the votes in no more than 3 entries.
- multi_target: take every entry with at least 30% of the votes; keep the image when they hold
  more than half of the votes.

Before any mode, single votes may be removed as outliers (a count of 1 becomes 0), as the
reference code always does. An image is also dropped when its top entry is unknown or NF (not a
face), or when it has no emotion votes at all.
"""

import numpy as np

from ferplus import EMOTIONS

VOTE_MODES = ("majority", "probability", "crossentropy", "multi_target")

EMOTION_COUNT = len(EMOTIONS)

# Reasons an image gets no label, as counted in the ingest report.
KEPT = "kept"
NO_EMOTION_VOTES = "no_emotion_votes"
UNKNOWN_OR_NOT_FACE = "unknown_or_not_face"
NO_AGREEMENT = "no_agreement"


def remove_single_votes(votes: np.ndarray) -> np.ndarray:
    """Return a copy of `votes` where every count of 1 is 0: one tagger alone is an outlier."""
    return np.where(votes <= 1, 0, votes)


def _process_one(votes: np.ndarray, mode: str) -> tuple[np.ndarray | None, str]:
    """Apply a mode's rule to one image's 10 votes: (label over the 10 entries, reason)."""
    votes = votes.astype(np.float64)
    total = votes.sum()
    label = np.zeros_like(votes)

    if mode == "majority":
        top = int(np.argmax(votes))
        if votes[top] <= 0.5 * total:
            return None, NO_AGREEMENT
        label[top] = votes[top]

    elif mode in ("probability", "crossentropy"):
        remaining = votes.copy()
        taken_sum = 0.0
        taken_count = 0
        stopped_at_non_emotion = False
        while taken_sum < 0.75 * total and taken_count < 3 and not stopped_at_non_emotion:
            top_value = remaining.max()
            for position in np.flatnonzero(remaining == top_value):
                label[position] = top_value
                remaining[position] = 0
                taken_sum += top_value
                taken_count += 1
                if position >= EMOTION_COUNT:
                    # unknown or NF ties with the top: stop here, and drop that entry again
                    # when emotions were taken before it.
                    stopped_at_non_emotion = True
                    if label.sum() > top_value:
                        label[position] = 0
                        taken_count -= 1
                    break
        if label.sum() <= 0.5 * total or taken_count > 3:
            return None, NO_AGREEMENT

    elif mode == "multi_target":
        label = np.where(votes >= 0.3 * total, votes, 0.0)
        if label.sum() <= 0.5 * total:
            return None, NO_AGREEMENT

    else:
        raise ValueError(f"invalid vote mode {mode!r}: expected one of {', '.join(VOTE_MODES)}")

    if np.argmax(label) >= EMOTION_COUNT:
        return None, UNKNOWN_OR_NOT_FACE
    return label, KEPT


def process_votes(
    votes: np.ndarray, mode: str, drop_single_votes: bool = True, keep_rejected: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw votes into label distributions with a FER+ mode.

    votes: (N, 10) integer counts in VOTE_COLUMNS order.
    Returns (distributions, reasons). distributions is (N, 8) float32, with rows summing to 1 for
    kept images and all zeros for dropped ones. reasons is (N,) of KEPT or the drop reason.
    With keep_rejected, an image that the mode rejects (no agreement, or mostly unknown/NF) is
    kept with the plain distribution of its raw emotion votes, if it has any.
    """
    if mode not in VOTE_MODES:
        raise ValueError(f"invalid vote mode {mode!r}: expected one of {', '.join(VOTE_MODES)}")
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != EMOTION_COUNT + 2:
        raise ValueError(f"expected votes of shape (N, 10), got {votes.shape}")

    # Many images share the same 10 counts, so the per-image rule runs once per distinct row.
    unique_votes, inverse = np.unique(votes, axis=0, return_inverse=True)
    unique_distributions = np.zeros((len(unique_votes), EMOTION_COUNT), dtype=np.float32)
    unique_reasons = np.full(len(unique_votes), KEPT, dtype=object)
    for row, raw in enumerate(unique_votes):
        if raw[:EMOTION_COUNT].sum() == 0:
            unique_reasons[row] = NO_EMOTION_VOTES
            continue
        cleaned = remove_single_votes(raw) if drop_single_votes else raw
        label, reason = _process_one(cleaned, mode)
        if label is None and keep_rejected:
            label, reason = raw.astype(np.float64), KEPT
        unique_reasons[row] = reason
        if label is not None:
            emotion_part = label[:EMOTION_COUNT]
            unique_distributions[row] = emotion_part / emotion_part.sum()

    inverse = inverse.reshape(-1)
    return unique_distributions[inverse], unique_reasons[inverse].astype(str)


def majority_emotions(distributions: np.ndarray) -> np.ndarray:
    """Return the index of each row's top emotion; a tie goes to the emotion listed first."""
    return np.argmax(distributions, axis=1)


def one_hot_majority(distributions: np.ndarray) -> np.ndarray:
    """Return (N, 8) float32 one-hot rows of the top emotion (ties: the emotion listed first)."""
    one_hot = np.zeros_like(distributions, dtype=np.float32)
    if len(distributions):
        one_hot[np.arange(len(distributions)), majority_emotions(distributions)] = 1.0
    return one_hot


def count_ties(distributions: np.ndarray) -> int:
    """Count the rows whose top value is shared by two or more emotions."""
    if len(distributions) == 0:
        return 0
    top = distributions.max(axis=1, keepdims=True)
    return int(((distributions == top).sum(axis=1) > 1).sum())


def fer_plus_test_mask(votes: np.ndarray) -> np.ndarray:
    """Mark the images of the FER+ paper's test subset.

    True where, after single votes are removed, one emotion has more than half of all votes
    (the majority-mode rule). On PrivateTest with the FER+ folder labels this keeps 3,137 images.
    """
    _, reasons = process_votes(votes, "majority", drop_single_votes=True)
    return reasons == KEPT
