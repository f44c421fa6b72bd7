"""FER+ vote processing: every mode's keep/drop rule on hand-made votes with exact labels."""

import numpy as np
import pytest

from ferplus.votes import (
    NO_AGREEMENT,
    NO_EMOTION_VOTES,
    UNKNOWN_OR_NOT_FACE,
    count_ties,
    fer_plus_test_mask,
    one_hot_majority,
    process_votes,
    remove_single_votes,
)

# Votes in the order neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
# unknown, NF.
CLEAR = [6, 3, 1, 0, 0, 0, 0, 0, 0, 0]
TWO_WAY_TIE = [4, 4, 2, 0, 0, 0, 0, 0, 0, 0]
THREE_WAY = [3, 3, 3, 1, 0, 0, 0, 0, 0, 0]
FIVE_WAY = [2, 2, 2, 2, 2, 0, 0, 0, 0, 0]
MOSTLY_UNKNOWN = [2, 0, 0, 0, 0, 0, 0, 0, 8, 0]
NOT_A_FACE = [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]
NINE_VOTES = [5, 0, 0, 0, 0, 0, 0, 4, 0, 0]
ALL_SINGLES = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
TIED_WITH_UNKNOWN = [4, 0, 0, 0, 0, 0, 0, 0, 4, 2]
ALL_CASES = [
    CLEAR,
    TWO_WAY_TIE,
    THREE_WAY,
    FIVE_WAY,
    MOSTLY_UNKNOWN,
    NOT_A_FACE,
    NINE_VOTES,
    ALL_SINGLES,
    TIED_WITH_UNKNOWN,
]

ZERO = [0.0] * 8


def label(**shares: float) -> list[float]:
    emotions = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear"]
    emotions.append("contempt")
    return [shares.get(emotion, 0.0) for emotion in emotions]


EXPECTED = {
    "majority": [
        (label(neutral=1.0), "kept"),
        (ZERO, NO_AGREEMENT),
        (ZERO, NO_AGREEMENT),
        (ZERO, NO_AGREEMENT),
        (ZERO, UNKNOWN_OR_NOT_FACE),
        (ZERO, NO_EMOTION_VOTES),
        (label(neutral=1.0), "kept"),
        (ZERO, NO_AGREEMENT),
        (ZERO, NO_AGREEMENT),
    ],
    "probability": [
        (label(neutral=2 / 3, happiness=1 / 3), "kept"),
        (label(neutral=0.5, happiness=0.5), "kept"),
        (label(neutral=1 / 3, happiness=1 / 3, surprise=1 / 3), "kept"),
        (ZERO, NO_AGREEMENT),  # five tied emotions: more than 3 taken
        (ZERO, UNKNOWN_OR_NOT_FACE),
        (ZERO, NO_EMOTION_VOTES),
        (label(neutral=5 / 9, contempt=4 / 9), "kept"),
        (ZERO, NO_AGREEMENT),
        (ZERO, NO_AGREEMENT),  # unknown ties neutral, is dropped again: 4 of 10 is not > half
    ],
    "multi_target": [
        (label(neutral=2 / 3, happiness=1 / 3), "kept"),
        (label(neutral=0.5, happiness=0.5), "kept"),
        (label(neutral=1 / 3, happiness=1 / 3, surprise=1 / 3), "kept"),
        (ZERO, NO_AGREEMENT),  # no entry reaches 30% of the votes
        (ZERO, UNKNOWN_OR_NOT_FACE),
        (ZERO, NO_EMOTION_VOTES),
        (label(neutral=5 / 9, contempt=4 / 9), "kept"),
        (ZERO, NO_AGREEMENT),
        (label(neutral=1.0), "kept"),  # neutral and unknown both >= 30%; the top is neutral
    ],
}
EXPECTED["crossentropy"] = EXPECTED["probability"]


@pytest.mark.parametrize("mode", ["majority", "probability", "crossentropy", "multi_target"])
def test_process_votes_mode_labels(mode):
    distributions, reasons = process_votes(np.array(ALL_CASES), mode)

    expected_labels = np.array([labels for labels, _ in EXPECTED[mode]], dtype=np.float32)
    expected_reasons = [reason for _, reason in EXPECTED[mode]]
    assert reasons.tolist() == expected_reasons
    np.testing.assert_allclose(distributions, expected_labels, rtol=0, atol=1e-7)
    assert distributions.dtype == np.float32


def test_process_votes_without_single_removal():
    votes = np.array([CLEAR, ALL_SINGLES, THREE_WAY])

    distributions, reasons = process_votes(votes, "probability", drop_single_votes=False)

    # CLEAR: 6 + 3 = 9 of 10 votes >= 75%, so surprise's single vote stays out.
    np.testing.assert_allclose(distributions[0], label(neutral=2 / 3, happiness=1 / 3), atol=1e-7)
    # ALL_SINGLES: ten tied entries, more than 3 taken.
    assert reasons[1] == NO_AGREEMENT
    # THREE_WAY keeps 9 of 10 votes over three emotions; sadness's single vote is below the top 3.
    np.testing.assert_allclose(
        distributions[2], label(neutral=1 / 3, happiness=1 / 3, surprise=1 / 3), atol=1e-7
    )


def test_process_votes_keep_rejected_uses_raw_votes():
    votes = np.array([MOSTLY_UNKNOWN, ALL_SINGLES, NOT_A_FACE, TWO_WAY_TIE])

    distributions, reasons = process_votes(votes, "majority", keep_rejected=True)

    assert reasons.tolist() == ["kept", "kept", NO_EMOTION_VOTES, "kept"]
    np.testing.assert_allclose(distributions[0], label(neutral=1.0), atol=1e-7)
    np.testing.assert_allclose(distributions[1], [1 / 8] * 8, atol=1e-7)
    np.testing.assert_allclose(distributions[2], ZERO, atol=0)
    np.testing.assert_allclose(
        distributions[3], label(neutral=0.4, happiness=0.4, surprise=0.2), atol=1e-7
    )


def test_process_votes_rows_never_nan():
    distributions, _ = process_votes(np.array(ALL_CASES), "multi_target", keep_rejected=True)

    assert not np.isnan(distributions).any()
    sums = distributions.sum(axis=1)
    assert np.all((np.abs(sums - 1) < 1e-6) | (sums == 0))


def test_process_votes_invalid_mode():
    with pytest.raises(ValueError, match="majority, probability, crossentropy, multi_target"):
        process_votes(np.array([CLEAR]), "soft")


def test_process_votes_wrong_shape():
    with pytest.raises(ValueError, match=r"shape \(N, 10\)"):
        process_votes(np.array([[1, 2, 3]]), "majority")


def test_remove_single_votes_zeroes_ones():
    assert remove_single_votes(np.array(THREE_WAY)).tolist() == [3, 3, 3, 0, 0, 0, 0, 0, 0, 0]


def test_one_hot_majority_tie_goes_first():
    distributions = np.array([label(neutral=0.5, happiness=0.5), label(surprise=0.4, fear=0.6)])

    one_hot = one_hot_majority(distributions)

    assert one_hot.tolist() == [label(neutral=1.0), label(fear=1.0)]
    assert count_ties(distributions) == 1


def test_fer_plus_test_mask_majority_rule():
    mask = fer_plus_test_mask(np.array(ALL_CASES))

    assert mask.tolist() == [True, False, False, False, False, False, True, False, False]
