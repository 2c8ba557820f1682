"""Classification metrics used in SER: WA, UA, macro precision/recall/F1, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


@dataclass(frozen=True)
class Scores:
    wa: float  # weighted accuracy: plain accuracy over all utterances
    ua: float  # unweighted accuracy: mean of per-class recall over classes present
    macro_precision: float
    macro_recall: float
    macro_f1: float
    confusion: np.ndarray

    def to_dict(self) -> dict:
        return {
            "wa": self.wa, "ua": self.ua, "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall, "macro_f1": self.macro_f1,
            "confusion": self.confusion.tolist(),
        }


def scores_from_confusion(cm: np.ndarray) -> Scores:
    """Metrics from a confusion matrix. Classes absent from the truth are left out of the
    macro averages (their recall is undefined); a class never predicted has precision 0."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    present = support > 0
    if total == 0 or not present.any():
        return Scores(0.0, 0.0, 0.0, 0.0, 0.0, cm.astype(np.int64))
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return Scores(
        wa=float(tp.sum() / total),
        ua=float(recall[present].mean()),
        macro_precision=float(precision[present].mean()),
        macro_recall=float(recall[present].mean()),
        macro_f1=float(f1[present].mean()),
        confusion=cm.astype(np.int64),
    )


def score(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> Scores:
    return scores_from_confusion(confusion_matrix(y_true, y_pred, n_classes))
