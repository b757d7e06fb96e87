"""Stacked linear heads and metrics, on synthetic features (no encoder needed)."""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from poolkit.evaluation.metrics import METRICS, compute_metrics
from poolkit.heads.base import HeadConfig, HeadTask
from poolkit.heads.linear import train_heads

N = 240
SPLITS = {"train": np.arange(0, 180), "validation": np.arange(180, 210),
          "test": np.arange(210, 240)}


def _features(dim, seed, labels, signal=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, dim)).astype(np.float32)
    x[:, 0] += signal * labels  # linearly separable along one direction
    return x


@pytest.fixture(scope="module")
def labels():
    return np.random.default_rng(0).integers(0, 2, N).astype(np.int64)


def _task(labels, config=HeadConfig()):
    return HeadTask(labels, SPLITS, 2, config)


def _by_key(results):
    return {(r.feature_set, r.seed): r for r in results}


def test_heads_learn_separable_features(labels):
    features = {"a": _features(4, 1, labels, signal=8.0)}
    config = HeadConfig(max_epochs=60, learning_rate=0.05)
    (result,) = train_heads(features, _task(labels, config), [0])
    probs = result.probabilities
    assert probs.shape == (len(SPLITS["test"]), 2)
    assert_close(probs.sum(axis=1), np.ones(len(probs)))
    assert (probs.argmax(axis=1) == labels[SPLITS["test"]]).all()
    assert 1 <= result.best_epoch <= result.epochs <= 60


def test_one_result_per_pooler_and_seed(labels):
    features = {"a": _features(8, 1, labels), "b": _features(24, 2, labels)}
    results = train_heads(features, _task(labels, HeadConfig(max_epochs=3)), [0, 3, 7])
    assert sorted(_by_key(results)) == sorted((p, s) for p in "ab" for s in (0, 3, 7))


def test_early_stopping_stops_on_a_flat_validation_loss(labels):
    noise = {"noise": np.random.default_rng(5).normal(size=(N, 8)).astype(np.float32)}
    (result,) = train_heads(noise, _task(labels, HeadConfig(max_epochs=200, patience=3,
                                                            learning_rate=0.05)), [0])
    assert result.epochs < 200
    assert result.epochs - result.best_epoch == 3


def test_training_is_deterministic(labels):
    features = {"a": _features(8, 1, labels), "b": _features(8, 2, labels)}
    config = HeadConfig(max_epochs=10, dropout=0.2)
    first = train_heads(features, _task(labels, config), [0, 1])
    second = train_heads(features, _task(labels, config), [0, 1])
    for a, b in zip(first, second):
        assert_close(a.probabilities, b.probabilities, rtol=0, atol=0)


def _independence(labels, config):
    narrow = _features(16, 1, labels, signal=0.7)
    wide = _features(64, 2, labels, signal=0.7)
    together = _by_key(train_heads({"narrow": narrow, "wide": wide}, _task(labels, config),
                                   [0, 1]))
    (alone,) = train_heads({"narrow": narrow}, _task(labels, config), [1])
    assert alone.best_epoch == together["narrow", 1].best_epoch
    assert_close(alone.probabilities, together["narrow", 1].probabilities, rtol=0, atol=0)


def test_head_depends_only_on_its_features_and_seed(labels):
    _independence(labels, HeadConfig(max_epochs=20))


def test_head_with_dropout_depends_only_on_its_features_and_seed(labels):
    _independence(labels, HeadConfig(max_epochs=20, dropout=0.2))


@pytest.mark.slow
@pytest.mark.parametrize("case", range(12))
def test_a_heads_result_is_the_same_bits_whatever_trains_beside_it(case):
    """Random widths (odd ones too), label counts, batch sizes and seed subsets: each
    head trained alone equals, bit for bit, that head trained in the full stack."""
    rng = np.random.default_rng(case)
    n, classes = int(rng.choice([97, 240])), int(rng.choice([2, 3, 5]))
    y = rng.integers(0, classes, n).astype(np.int64)
    order = rng.permutation(n)
    splits = {"train": np.sort(order[: int(n * 0.7)]),
              "validation": np.sort(order[int(n * 0.7) : int(n * 0.85)]),
              "test": np.sort(order[int(n * 0.85) :])}
    dims = rng.choice([1, 5, 16, 33, 100, 384], size=int(rng.integers(1, 4)))
    features = {f"p{i}": (rng.normal(size=(n, d)) + 0.5 * y[:, None]).astype(np.float32)
                for i, d in enumerate(dims)}
    seeds = sorted(rng.choice(6, size=int(rng.integers(1, 4)), replace=False).tolist())
    config = HeadConfig(max_epochs=int(rng.choice([5, 20])), dropout=float(rng.choice([0, 0.2])),
                        batch_size=int(rng.choice([7, 16, 64])))
    task = HeadTask(y, splits, classes, config)
    together = _by_key(train_heads(features, task, seeds))
    for name in features:
        for seed in seeds:
            (alone,) = train_heads({name: features[name]}, task, [seed])
            assert alone.best_epoch == together[name, seed].best_epoch
            assert np.array_equal(alone.probabilities, together[name, seed].probabilities), (
                name, seed, dims.tolist(), seeds)


def test_metrics_of_perfect_and_hand_checked_predictions():
    y = np.array([0, 1, 1, 0])
    perfect = compute_metrics(y, np.eye(2)[y] * 0.98 + 0.01)
    assert list(perfect) == list(METRICS)
    for name in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "mcc", "roc_auc"):
        assert perfect[name] == pytest.approx(1.0), name
    assert perfect["log_loss"] == pytest.approx(-math.log(0.99))
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    got = compute_metrics(y, probs)
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["recall_macro"] == pytest.approx((1.0 + 0.5) / 2)
    assert got["roc_auc"] == pytest.approx(1.0)  # the ranking is still perfect


def _sklearn_metrics(y, probs, labels):
    """Every metric as scikit-learn's own functions give it: the definitions poolkit keeps."""
    from sklearn import metrics as sk

    predicted = probs.argmax(axis=1)
    macro = dict(labels=np.arange(labels), average="macro", zero_division=0)
    try:
        auc = (sk.roc_auc_score(y, probs[:, 1]) if labels == 2 else
               sk.roc_auc_score(y, probs, multi_class="ovr", average="macro",
                                labels=np.arange(labels)))
    except ValueError:  # a label without test items
        auc = np.nan
    return [sk.accuracy_score(y, predicted), sk.f1_score(y, predicted, **macro),
            sk.precision_score(y, predicted, **macro), sk.recall_score(y, predicted, **macro),
            sk.matthews_corrcoef(y, predicted), auc,
            sk.log_loss(y, probs, labels=np.arange(labels))]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.parametrize("labels, n, dtype", [(2, 9, np.float32), (2, 600, np.float64),
                                              (3, 90, np.float32), (5, 300, np.float64)])
def test_every_metric_is_sklearns_on_all_items_and_on_each_fold(labels, n, dtype):
    """poolkit scores from confusion counts and ranks, not through scikit-learn's
    functions (their input checks were most of a comparison's time): the same values."""
    from poolkit.evaluation.metrics import score_by_fold

    assert list(METRICS) == ["accuracy", "f1_macro", "precision_macro", "recall_macro", "mcc",
                             "roc_auc", "log_loss"]
    rng = np.random.default_rng(n + labels)
    y = rng.integers(0, labels - (labels == 5), n)  # with 5: the last label never occurs
    probs = rng.dirichlet(np.ones(labels), n)
    probs[: n // 2] = np.round(probs[: n // 2], 1) + 0.01  # tied scores
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(dtype)
    folds = rng.integers(0, 3, n)
    values, by_fold = score_by_fold(y, probs, folds)
    parts = [np.flatnonzero(folds == f) for f in range(3)]
    expected = np.array([_sklearn_metrics(y[q], probs[q], labels) for q in parts])
    tolerance = 1e-6 if dtype == np.float32 else 1e-12  # sklearn's log loss: in float32
    np.testing.assert_allclose(by_fold, expected, rtol=tolerance, atol=1e-15)
    everything = _sklearn_metrics(y, probs, labels)
    everything[5] = expected[:, 5].mean()  # cross-fitted AUC: the mean over the folds
    np.testing.assert_allclose(values, everything, rtol=tolerance, atol=1e-15)
    np.testing.assert_array_equal(list(compute_metrics(y, probs, folds).values()), values)
    np.testing.assert_allclose(list(compute_metrics(y, probs).values()),
                               _sklearn_metrics(y, probs, labels), rtol=tolerance, atol=1e-15)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_roc_auc_is_nan_when_a_label_has_no_test_example():
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    got = compute_metrics(y, probs)
    assert math.isnan(got["roc_auc"])
    assert got["accuracy"] == 1.0


def test_hand_written_adamw_matches_torch_adamw():
    from poolkit.heads.base import AdamW

    torch.manual_seed(0)
    theirs = [torch.randn(5, 3, 7), torch.randn(5, 1, 3)]
    mine = [p.clone() for p in theirs]
    start = [p.clone() for p in theirs]
    reference = torch.optim.AdamW(theirs, lr=3e-3, weight_decay=0.05)
    optimizer = AdamW(mine, 3e-3, 0.05)
    for step in range(40):
        for k, (a, b) in enumerate(zip(theirs, mine)):
            # the second parameter has no gradient on some steps: torch skips it then
            a.grad = None if k == 1 and step % 3 == 0 else torch.randn_like(a)
            b.grad = None if a.grad is None else a.grad.clone()
        reference.step()
        optimizer.step()
    for a, b, s in zip(theirs, mine, start):
        assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert (b - s).abs().max() > 1e-3  # the parameters did move


def _reference_head(x, labels, name, seed, config):
    """One head the plain way: ``nn.Linear``, ``F.cross_entropy``, ``torch.optim.AdamW``."""
    from poolkit.heads.base import head_seed

    train, val, test = (torch.from_numpy(SPLITS[k]) for k in ("train", "validation", "test"))
    mean, std = x[SPLITS["train"]].mean(axis=0), np.maximum(x[SPLITS["train"]].std(axis=0), 1e-6)
    x = torch.from_numpy(((x - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels)
    head = torch.nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        init = torch.Generator().manual_seed(head_seed(seed, name))
        head.weight.copy_(torch.randn(2, x.shape[1], generator=init) * 0.02)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(seed)
    best_loss, best_epoch, stale, best = math.inf, 0, 0, None
    for epoch in range(1, config.max_epochs + 1):
        perm = torch.randperm(len(train), generator=order)
        for start in range(0, len(train), config.batch_size):
            rows = train[perm[start : start + config.batch_size]]
            loss = torch.nn.functional.cross_entropy(head(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_loss = torch.nn.functional.cross_entropy(head(x[val]), y[val]).item()
        if val_loss < best_loss - 1e-6:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best = [p.detach().clone() for p in head.parameters()]
        else:
            stale += 1
            if stale >= config.patience:
                break
    logits = x[test] @ best[0].T + best[1]
    return torch.softmax(logits.double(), dim=-1).numpy(), best_epoch, epoch


def test_each_stacked_head_trains_like_nn_linear_with_torch_adamw(labels):
    """The stacked heads' hand-written gradients and optimizer give what the
    plain PyTorch loop gives for each head alone (narrower features padded)."""
    features = {"narrow": _features(8, 1, labels, signal=0.6),
                "wide": _features(24, 2, labels, signal=0.6)}
    config = HeadConfig(max_epochs=12, patience=3, learning_rate=0.02, batch_size=32)
    results = _by_key(train_heads(features, _task(labels, config), [0, 2]))
    for (name, seed), result in results.items():
        probs, best_epoch, epochs = _reference_head(features[name], labels, name, seed, config)
        assert (result.best_epoch, result.epochs) == (best_epoch, epochs), (name, seed)
        assert_close(result.probabilities, probs, rtol=1e-4, atol=1e-5)
