"""The Python API: ``pool`` for features, ``run`` for the whole comparison."""

from pathlib import Path

from poolkit.config import RunConfig
from poolkit.errors import PoolkitError
from poolkit.evaluation.metrics import PRIMARY
from poolkit.heads.base import FineTuneConfig, HeadConfig
from poolkit.pipeline import stages as pipeline
from poolkit.pipeline.stages import run_config
from poolkit.pipeline.suites import Suite, read_suite, run_suite
from poolkit.pooling.isolation import DEFAULT_TIMEOUT
from poolkit.winner.final import load as load_final

DEFAULT_POOLERS = ("cls", "bert_pooler", "mean", "max")


def pool(texts, poolers=DEFAULT_POOLERS, model=None, max_length=None, batch_size=None,
         device=None, *, cache_dir=None, plugins_dir=None, cache_dtype="fp16", precision="bf16",
         attn_implementation=None, prompt=None, trust_remote_code=False):
    """Pooled features ``{name: (len(texts), D) float32 array}`` in input order.

    ``poolers`` are registered names or :class:`Pooler` instances (fixed ones:
    a trainable pooler has no features before training); ``model`` a Hugging
    Face name or local path (``None``: the embedded default); ``batch_size``
    caps the texts per encoder batch. Single-layer poolers pool the last
    layer. A pooler that fails raises :class:`PoolkitError` naming it. Pairs of
    texts: ``texts`` a list of ``(text, text_pair)`` tuples. ``attn_implementation``,
    ``prompt`` and ``trust_remote_code`` as in :func:`run`.
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
                       trust_remote_code=trust_remote_code)
    config.validate()
    encoded = pipeline.encode(config, chosen.selected, texts, max_texts=batch_size)
    features = pipeline.pool(config, encoded)
    failures = {**encoded.failures, **features.failures}
    if failures:
        key, reason = next(iter(failures.items()))
        raise PoolkitError(f"pooler '{encoded.sets[key].pooler_name}' failed: {reason}")
    return {encoded.sets[key].pooler_name: array for key, array in features.arrays.items()}


def run(data=None, *, text_col="text", label_col="label", test_data=None, labels=None,
        model=None, poolers=None, seeds=None, folds=None, protocol="default", metric=None,
        baseline=None, out=None, plugins_dir=None, cache_dir=None, cache_mode="auto",
        cache_budget=None, max_length=None, device=None, cache_dtype="fp16", precision="bf16",
        split_seed=0,
        validation_size=0.1, test_size=0.1, head: HeadConfig | None = None, layers=None,
        finetune=False, max_train_texts=None, max_texts=None, label_pattern=None,
        text_pair_col=None, save_models=False, predictions=False, empty_texts="skip",
        encoding="utf-8",
        trust_remote_code=False, attn_implementation=None, prompt=None,
        pooler_timeout=DEFAULT_TIMEOUT, progress=False, log=None):
    """Run the whole comparison; return a :class:`~poolkit.pipeline.stages.RunResult`.

    Its ``results`` has a row per pooler × layer × seed and a column per
    metric; ``summary`` the intervals and significance groups; ``pairs`` the
    paired tests between feature sets; ``failures`` ``{pooler@layer: reason}``;
    ``labels`` the label names in head-output order; ``settings`` and
    ``recipe``. The arguments are those of :class:`~poolkit.config.RunConfig`
    (``folds``: cross-fitting folds, default 5, 1 for one split; ``protocol``:
    ``"default"``, ``"senteval"``, ``"mteb"``; ``metric``: the primary metric;
    ``baseline``: compare every pooler with this one only;
    ``layers``: ``-1``, ``"-4..-1"``, ``"all"``, ...; ``finetune``: ``True`` or a
    :class:`~poolkit.heads.base.FineTuneConfig` adds every pooler fine-tuned with the
    encoder (``encoder`` column ``finetuned``), ``save_models`` keeps their weights;
    ``max_train_texts`` caps each fold's training texts, ``max_texts`` the data
    (a stratified subset before any split); ``label_pattern`` derives each label
    from its cell (a regular expression: its first group, rows without a match
    left out); ``text_pair_col`` makes each item a pair of texts (this column the
    second, tokenized as the model's tokenizer joins pairs); with ``out`` the run
    directory is written there, ``predictions=True`` adds each test item's
    predictions; ``pooler_timeout`` bounds each call into a plugin, in
    seconds; ``cache_mode`` ``"tokens"``, ``"pooled"`` or ``"auto"`` and
    ``cache_budget``: what the cache keeps, as ``--cache-mode`` and
    ``--cache-budget``; ``attn_implementation``: ``"sdpa"``, ``"eager"``,
    ``"flash_attention_2"`` or ``None``/``"auto"`` (transformers' choice); ``prompt``: a
    prompt the model's sentence-transformers folder names, or a text, prepended to
    every text). Ctrl-C stops the run with :class:`~poolkit.errors.Interrupted`
    once what finished is saved; the same call then resumes.
    """
    config = RunConfig(
        data=data, text_col=text_col, label_col=label_col, test_data=test_data,
        labels=tuple(labels) if labels is not None else None,
        model=model if model is None or isinstance(model, (str, Path)) else tuple(model),
        poolers=tuple(poolers) if poolers is not None else None, plugins_dir=plugins_dir,
        seeds=seeds if seeds is None or isinstance(seeds, int) else tuple(seeds), folds=folds,
        protocol=protocol, metric=metric or PRIMARY, baseline=baseline, layers=layers,
        max_length=max_length, device=device, cache_dtype=cache_dtype, precision=precision,
        split_seed=split_seed, validation_size=validation_size, test_size=test_size,
        head=head or HeadConfig(), empty_texts=empty_texts, encoding=encoding,
        finetune=FineTuneConfig() if finetune is True else (finetune or None),
        max_train_texts=max_train_texts, max_texts=max_texts, label_pattern=label_pattern,
        text_pair_col=text_pair_col, save_models=save_models,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        prompt=prompt, out=out, cache_dir=cache_dir, cache_mode=cache_mode,
        cache_budget=cache_budget, predictions=predictions, pooler_timeout=pooler_timeout,
        progress=progress)
    return run_config(config, log=log)


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


def load(run_dir, set=None, *, cache_dir=None, device=None, force=False, log=None):
    """The final model of one feature set of a finished run, for labelling new texts: a
    :class:`~poolkit.winner.final.Classifier` with ``predict(texts)`` (label names) and
    ``predict_proba(texts)`` (columns in ``classes_`` order, the run's labels.json).

    ``set`` is a feature set id (``mean@6``) or a pooler with one finished set; default
    the run's best by its primary metric. Its final head (trained on every labelled
    item, for the median best epoch of the run's heads) is trained on first use and
    kept in ``run_dir/heads``. ``force``: use a pooler whose plugin changed since the
    run (with a warning) instead of refusing it.
    """
    return load_final(run_dir, set, cache_dir=cache_dir, device=device, force=force,
                      log=log or (lambda message: None))
