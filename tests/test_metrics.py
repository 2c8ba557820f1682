"""WA, UA and macro precision/recall/F1 on hand-made confusion matrices, checked against
values worked out by hand (fractions in the comments)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipser.learn.metrics import confusion_matrix, score, scores_from_confusion


def _labels(cm: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) that produce confusion matrix `cm` (rows true, columns predicted)."""
    pairs = [(i, j) for i, row in enumerate(cm) for j, n in enumerate(row) for _ in range(n)]
    y_true, y_pred = zip(*pairs, strict=True)
    return np.array(y_true), np.array(y_pred)


def test_confusion_matrix_rows_are_truth_columns_are_predictions() -> None:
    # Prepare
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 0, 2, 2])

    # Execute
    cm = confusion_matrix(y_true, y_pred, 3)

    # Assert
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert cm.dtype == np.int64


def test_ua_and_wa_differ_under_class_imbalance() -> None:
    # Prepare: 8 utterances of class 0, 2 of class 1, everything predicted as class 0
    cm = [[8, 0], [2, 0]]

    # Execute
    s = scores_from_confusion(np.array(cm))

    # Assert
    assert s.wa == pytest.approx(8 / 10)
    assert s.ua == pytest.approx((1 + 0) / 2)
    # precision: 8/10 and 0 (never predicted); F1 of class 0: 2*0.8*1/1.8 = 8/9
    assert s.macro_precision == pytest.approx((0.8 + 0) / 2)
    assert s.macro_recall == pytest.approx(0.5)
    assert s.macro_f1 == pytest.approx((8 / 9 + 0) / 2)


def test_ua_equals_wa_when_classes_are_balanced() -> None:
    # Prepare
    cm = np.array([[3, 1, 0], [2, 2, 0], [0, 0, 4]])

    # Execute
    s = scores_from_confusion(cm)

    # Assert: recalls 3/4, 2/4, 4/4 -> mean 3/4 = 9/12
    assert s.wa == pytest.approx(9 / 12)
    assert s.ua == pytest.approx(3 / 4)


def test_macro_scores_of_a_three_class_matrix() -> None:
    # Prepare
    cm = [[5, 1, 0],
          [2, 2, 0],
          [0, 1, 1]]

    # Execute: from labels, so the orientation of the matrix is checked too
    s = score(*_labels(cm), 3)

    # Assert
    np.testing.assert_array_equal(s.confusion, cm)
    # support 6, 4, 2; predicted 7, 4, 1; true positives 5, 2, 1
    assert s.wa == pytest.approx(8 / 12)
    # recall 5/6, 1/2, 1/2
    assert s.ua == pytest.approx(11 / 18)
    assert s.macro_recall == pytest.approx(11 / 18)
    # precision 5/7, 1/2, 1
    assert s.macro_precision == pytest.approx(31 / 42)
    # F1: 2(5/7)(5/6)/(5/7+5/6) = 10/13, 1/2, 2(1)(1/2)/(3/2) = 2/3
    assert s.macro_f1 == pytest.approx((10 / 13 + 1 / 2 + 2 / 3) / 3)
    assert s.macro_f1 == pytest.approx(151 / 234)


def test_a_class_never_predicted_has_precision_zero() -> None:
    # Prepare: class 2 occurs twice, the model never says it
    cm = np.array([[2, 0, 0], [0, 2, 0], [1, 1, 0]])

    # Execute
    s = scores_from_confusion(cm)

    # Assert: precision 2/3, 2/3, 0; recall 1, 1, 0; F1 4/5, 4/5, 0
    assert s.macro_precision == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert s.macro_recall == pytest.approx(2 / 3)
    assert s.macro_f1 == pytest.approx((0.8 + 0.8 + 0) / 3)
    assert s.wa == pytest.approx(4 / 6)


def test_classes_absent_from_the_truth_are_left_out_of_the_macro_averages() -> None:
    # Prepare: class 2 never occurs but is predicted once; class 3 never occurs at all
    cm = np.array([[3, 0, 1, 0],
                   [0, 2, 0, 0],
                   [0, 0, 0, 0],
                   [0, 0, 0, 0]])

    # Execute
    s = scores_from_confusion(cm)

    # Assert: only classes 0 and 1 count. recall 3/4, 1; precision 1, 1; F1 6/7, 1
    assert s.ua == pytest.approx((3 / 4 + 1) / 2)
    assert s.macro_recall == pytest.approx(7 / 8)
    assert s.macro_precision == pytest.approx(1.0)
    assert s.macro_f1 == pytest.approx((6 / 7 + 1) / 2)
    assert s.wa == pytest.approx(5 / 6)


def test_an_empty_evaluation_scores_zero() -> None:
    # Execute
    s = score(np.zeros(0, int), np.zeros(0, int), 3)

    # Assert
    assert (s.wa, s.ua, s.macro_precision, s.macro_recall, s.macro_f1) == (0.0,) * 5
    np.testing.assert_array_equal(s.confusion, np.zeros((3, 3)))
    assert s.to_dict()["confusion"] == [[0, 0, 0]] * 3


def test_perfect_predictions_score_one() -> None:
    # Execute
    s = score(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 2]), 4)

    # Assert
    assert (s.wa, s.ua, s.macro_precision, s.macro_recall, s.macro_f1) == (1.0,) * 5


def test_to_dict_is_json_ready() -> None:
    # Prepare
    s = scores_from_confusion(np.array([[1, 1], [0, 2]]))

    # Execute
    d = s.to_dict()

    # Assert
    assert set(d) == {"wa", "ua", "macro_precision", "macro_recall", "macro_f1", "confusion"}
    assert d["confusion"] == [[1, 1], [0, 2]]
    assert all(type(d[k]) is float for k in d if k != "confusion")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5).flatmap(lambda k: st.tuples(
    st.just(k),
    st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1, max_size=40),
)))
def test_scores_are_consistent_on_any_labels(case: tuple[int, list[tuple[int, int]]]) -> None:
    # Prepare
    k, pairs = case
    y_true = np.array([t for t, _ in pairs])
    y_pred = np.array([p for _, p in pairs])

    # Execute
    s = score(y_true, y_pred, k)

    # Assert
    assert s.confusion.sum() == len(pairs)
    assert s.wa == pytest.approx(float(np.mean(y_true == y_pred)))
    assert s.ua == s.macro_recall
    for v in (s.wa, s.ua, s.macro_precision, s.macro_recall, s.macro_f1):
        assert 0.0 <= v <= 1.0
    present = np.unique(y_true)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in present]
    assert s.ua == pytest.approx(float(np.mean(recalls)))
