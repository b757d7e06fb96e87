"""The Python API: ``pool`` for features, ``run`` for the whole comparison."""

import inspect

from poolkit.config import RunConfig
from poolkit.errors import PoolkitError
from poolkit.options import OPTIONS
from poolkit.pipeline import stages as pipeline
from poolkit.pipeline.stages import run_config
from poolkit.pipeline.suites import Suite, read_suite, run_suite
from poolkit.winner.final import load as load_final

DEFAULT_POOLERS = ("cls", "bert_pooler", "mean", "max")


def pool(texts, poolers=DEFAULT_POOLERS, model=None, max_length=None, batch_size=None,
         device=None, *, cache_dir=None, plugins_dir=None, cache_dtype="fp16", precision="bf16",
         attn_implementation=None, prompt=None, trust_remote_code=False, compile=False):
    """Pooled features ``{name: (len(texts), D) float32 array}`` in input order.

    ``poolers`` are registered names or :class:`Pooler` instances (fixed ones:
    a trainable pooler has no features before training); ``model`` a Hugging
    Face name or local path (``None``: the embedded default); ``batch_size``
    caps the texts per encoder batch. Single-layer poolers pool the last
    layer. A pooler that fails raises :class:`PoolkitError` naming it. Pairs of
    texts: ``texts`` a list of ``(text, text_pair)`` tuples. ``attn_implementation``,
    ``prompt``, ``trust_remote_code`` and ``compile`` as in :func:`run`.
    """
    texts = list(texts)
    def is_pair(item):
        return isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)

    if any(isinstance(t, tuple) for t in texts) and not all(map(is_pair, texts)):
        raise PoolkitError("texts: give all strings, or all (text, text_pair) pairs of strings")

    chosen = pipeline.resolve_poolers(list(poolers), plugins_dir=plugins_dir)
    for name, pooler in chosen.selected.items():
        if getattr(pooler, "trainable", False):
            raise PoolkitError(f"pooler '{name}' is trainable: it has features only inside "
                               "'poolkit run', trained with each head")
    config = RunConfig(model=model, max_length=max_length, device=device, cache_dir=cache_dir,
                       cache_dtype=cache_dtype, precision=precision,
                       attn_implementation=attn_implementation, prompt=prompt,
                       trust_remote_code=trust_remote_code, compile=compile)
    config.validate()
    encoded = pipeline.encode_for(config, config.encoder(config.model), chosen.selected, texts,
                                  max_texts=batch_size)
    features = pipeline.pool(encoded, timeout=config.pooler_timeout)
    failures = {**encoded.failures, **features.failures}
    if failures:
        key, reason = next(iter(failures.items()))
        raise PoolkitError(f"pooler '{encoded.sets[key].pooler_name}' failed: {reason}")
    return {encoded.sets[key].pooler_name: array for key, array in features.arrays.items()}


def run(data=None, *, out=None, progress=False, log=None, **options):
    """Run the whole comparison; return a :class:`~poolkit.pipeline.stages.RunResult`.

    Its ``results`` has a row per pooler × layer × seed and a column per metric;
    ``summary`` the intervals and significance groups; ``pairs`` the paired tests between
    feature sets; ``failures`` ``{pooler@layer: reason}``; ``labels`` the label names in
    head-output order; ``settings`` and ``recipe``.

    ``data`` and ``options`` are the options of ``poolkit run``, by their names with
    underscores (``text_col="text"``, ``seeds=3``, ``finetune=True``, ...; the CLI
    reference says what each does), plus ``head`` (a
    :class:`~poolkit.heads.base.HeadConfig`), ``finetune`` (``True`` or a
    :class:`~poolkit.heads.base.FineTuneConfig`), ``validation_size`` and ``test_size``
    (a single split's shares). Lists may be lists (``poolers=["cls", "mean"]``); a value
    of ``None`` is the default. With ``out`` the run directory is written there;
    ``progress`` shows a progress bar; ``log`` gets the run's messages. Ctrl-C stops the
    run with :class:`~poolkit.errors.Interrupted` once what finished is saved; the same
    call then resumes.
    """
    config = RunConfig.from_options({"data": data, **options, "out": out,
                                     "progress": progress})
    return run_config(config, log=log)


run.__signature__ = inspect.Signature(
    [inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option.default)
       for name, option in OPTIONS.items() if option.api and name != "data"]
    + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
       for name, default in (("out", None), ("progress", False), ("log", None))])


def suite(suite=None, *, out=None, log=None, **options):
    """Run a suite of tasks and the verdict across them; return a
    :class:`~poolkit.pipeline.suites.SuiteResult`.

    ``suite`` is a suite file (TOML; ``None``: the embedded default suite) or a
    :class:`~poolkit.pipeline.suites.Suite`. ``options`` are the suite-wide options
    (:data:`~poolkit.pipeline.suites.SUITE_OPTIONS`: ``model``, ``poolers``, ``seeds``,
    ``folds``, ``protocol``, ``finetune``, ``metric``, ``baseline``, cache
    options, ...), over the file's ``[defaults]``. Each task's run directory is
    ``out/<task>``; the verdict's files (suite.csv, ranks.csv, across_pairs.csv,
    task_pairs.csv, suite.json) are written into ``out`` (default
    ``poolkit-runs/suite-<name>-<hash>``). A task that fails is in ``missing``
    with its reason, and the verdict covers the others.
    """
    chosen = suite if isinstance(suite, Suite) else read_suite(suite)
    return run_suite(chosen, options, out=out, log=log)


def load(run_dir, set=None, *, cache_dir=None, device=None, force=False,
         trust_remote_code=False, log=None):
    """The final model of one feature set of a finished run, for labelling new texts: a
    :class:`~poolkit.winner.final.Classifier` with ``predict(texts)`` (label names) and
    ``predict_proba(texts)`` (columns in ``classes_`` order, the run's labels.json).

    ``set`` is a feature set id (``mean@6``) or a pooler with one finished set; default
    the run's best by its primary metric. Its final head (trained on every labelled
    item, for the median best epoch of the run's heads) is trained on first use and
    kept in ``run_dir/heads``. ``force``: use a pooler whose plugin changed since the
    run (with a warning) instead of refusing it. A run whose model ran its own code is
    loaded only with ``trust_remote_code=True``.
    """
    return load_final(run_dir, set, cache_dir=cache_dir, device=device, force=force,
                      trust_remote_code=trust_remote_code, log=log or (lambda message: None))
