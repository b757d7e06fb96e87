"""How items are split and scored, and which heads learn: one choice per run.

A :class:`Protocol` fixes the folds (a single split, or K-fold cross-fitting in
which every item is scored once, out of fold), the default seeds, and the head
kinds. Everything downstream (metrics, intervals, paired tests, predictions,
plots) reads the scored items' predictions and does not care which protocol
made them.
"""

from dataclasses import dataclass

from poolkit.errors import PoolkitError
from poolkit.heads.linear import LinearHeads
from poolkit.heads.probes import ProbeHeads
from poolkit.heads.trainable import TrainablePoolerHeads

#: Folds of the default protocol when ``--folds`` is not given (and there is no --test-data).
DEFAULT_FOLDS = 5
#: Seeds of the default protocol when ``--seeds`` is not given.
DEFAULT_SEEDS = 1


@dataclass(frozen=True)
class Protocol:
    name: str
    #: one line, for the log and help
    about: str
    #: fixed number of folds (``None``: ``--folds``, default :data:`DEFAULT_FOLDS`)
    folds: int | None
    #: seeds when ``--seeds`` is not given
    seeds: int
    #: whether each fold keeps a validation part (for early stopping)
    validation: bool
    #: whether trainable poolers take part
    trainable: bool
    #: the head kind for fixed poolers: ``"linear"`` (poolkit's heads) or a
    #: :mod:`~poolkit.heads.probes` recipe
    heads: str = "linear"

    def kinds(self, features: dict, cache, timeout, progress: bool, log) -> list:
        """The head kinds that train this protocol's heads (see :mod:`poolkit.heads.base`)."""
        if self.heads == "linear":
            return [LinearHeads(features, progress=progress),
                    TrainablePoolerHeads(cache, timeout, log)]

        return [ProbeHeads(features, self.heads)]


#: Protocol name -> :class:`Protocol`.
PROTOCOLS = {p.name: p for p in (
    Protocol("default", "poolkit's linear heads (and trainable poolers), K-fold cross-fitting: "
             "every item scored once, out of fold (--folds 1: one 80/10/10 split)",
             folds=None, seeds=DEFAULT_SEEDS, validation=True, trainable=True),
    Protocol("senteval", "SentEval: 10-fold cross-validation, LogisticRegression with C from "
             "an inner 10-fold cross-validation over 2^-2..2^3, on fixed poolers",
             folds=10, seeds=1, validation=False, trainable=False, heads="senteval"),
    Protocol("mteb", "MTEB: LogisticRegression(max_iter=100) fitted on 8 items per label drawn "
             "from the training split, one experiment per seed, the test split fixed",
             folds=1, seeds=10, validation=True, trainable=False, heads="mteb"),
)}


def resolve(name: str, folds, seeds, test_data) -> tuple:
    """``(protocol, folds, seeds)`` for the options given (``None``: the protocol's)."""
    protocol = PROTOCOLS.get(name)
    if protocol is None:
        raise PoolkitError(f"--protocol {name}: use one of {', '.join(PROTOCOLS)}")
    if protocol.folds is not None:
        if folds is not None and folds != protocol.folds:
            raise PoolkitError(f"--protocol {name} fixes its folds ({protocol.folds}); leave "
                               "--folds out")
        folds = protocol.folds
    elif folds is None:
        folds = 1 if test_data is not None else DEFAULT_FOLDS
    if test_data is not None and folds != 1:
        raise PoolkitError(f"--folds {folds} cross-fits one data file; with --test-data the "
                           "test items are that file's (leave --folds out)")
    return protocol, folds, protocol.seeds if seeds is None else seeds
