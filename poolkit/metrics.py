"""The metrics every head is scored on (scikit-learn), from predicted probabilities."""

import numpy as np

#: Metric name -> True when higher is better.
METRICS = {
    "accuracy": True,
    "f1_macro": True,
    "precision_macro": True,
    "recall_macro": True,
    "mcc": True,
    "roc_auc": True,
    "log_loss": False,
}


def compute_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    """All metrics for ``y_true`` ``(n,)`` label ids and ``probabilities`` ``(n, C)``.

    ROC-AUC is one-vs-rest macro for more than two labels (NaN when a label has
    no test example); log-loss uses all ``C`` labels.
    """
    import sklearn
    from sklearn import metrics as m

    num_labels = probabilities.shape[1]
    labels = np.arange(num_labels)
    pred = probabilities.argmax(axis=1)
    # The inputs are poolkit's own (label ids, softmax rows): skipping sklearn's
    # argument and finiteness checks takes ~30% off each head's metrics.
    with sklearn.config_context(skip_parameter_validation=True, assume_finite=True):
        # One call for the three macro averages: sklearn's input checks cost more than the maths.
        precision, recall, f1, _ = m.precision_recall_fscore_support(
            y_true, pred, labels=labels, average="macro", zero_division=0
        )
        out = {
            "accuracy": m.accuracy_score(y_true, pred),
            "f1_macro": f1,
            "precision_macro": precision,
            "recall_macro": recall,
            "mcc": m.matthews_corrcoef(y_true, pred),
            "log_loss": m.log_loss(y_true, probabilities, labels=labels),
        }
        try:
            if num_labels == 2:
                out["roc_auc"] = m.roc_auc_score(y_true, probabilities[:, 1])
            else:
                out["roc_auc"] = m.roc_auc_score(
                    y_true, probabilities, multi_class="ovr", average="macro", labels=labels
                )
        except ValueError:  # a label missing from the test split
            out["roc_auc"] = float("nan")
    return {name: float(out[name]) for name in METRICS}
