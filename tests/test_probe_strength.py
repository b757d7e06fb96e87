"""poolkit's linear heads are as strong as a tuned scikit-learn probe, on real features.

The fixture (tests/fixtures/probe_features.npz, made by make_probe_fixture.py)
holds the default model's ``cls`` and ``mean`` features of 1,000 default-data
snippets. On the same 5 cross-fitted folds, poolkit's heads must score within
two points of accuracy of ``LogisticRegression`` with C tuned by inner
cross-validation (standardized features, as poolkit's heads see them): a weaker
optimiser, a broken early stop or a bad default would show here first.
"""

from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "probe_features.npz"


def out_of_fold(features, labels, folds, fit_predict):
    predicted = np.empty(len(labels), dtype=np.int64)
    for splits in folds:
        predicted[splits["test"]] = fit_predict(features, splits)
    return float((predicted == labels).mean())


def poolkit_head(labels):
    from poolkit.heads.base import HeadConfig, HeadTask
    from poolkit.heads.linear import train_heads

    def fit_predict(x, splits):
        task = HeadTask(labels, splits, int(labels.max()) + 1, HeadConfig())
        (head,) = train_heads({"probe": x}, task, [0])
        return head.probabilities.argmax(axis=1)

    return fit_predict


def tuned_logistic_regression(labels):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit_predict(x, splits):
        rows = np.concatenate([splits["train"], splits["validation"]])
        probe = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                             {"logisticregression__C": np.logspace(-4, 1, 6)}, cv=5)
        return probe.fit(x[rows], labels[rows]).predict(x[splits["test"]])

    return fit_predict


@pytest.mark.slow
@pytest.mark.parametrize("pooler", ["cls", "mean"])
def test_poolkit_heads_score_within_two_points_of_a_tuned_logistic_regression(pooler):
    from poolkit.data.folds import cross_folds

    fixture = np.load(FIXTURE, allow_pickle=False)
    x, labels = fixture[pooler].astype(np.float32), fixture["labels"]
    folds = cross_folds(labels, 5, seed=0, validation=0.1, source="probe fixture")
    ours = out_of_fold(x, labels, folds, poolkit_head(labels))
    theirs = out_of_fold(x, labels, folds, tuned_logistic_regression(labels))
    assert theirs > 0.6  # real features: far above the 0.5 majority rate
    assert ours >= theirs - 0.02, f"poolkit {ours:.3f} vs tuned LogisticRegression {theirs:.3f}"
