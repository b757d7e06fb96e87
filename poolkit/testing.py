"""A conformance kit for pooler plugins: does a pooler keep the pooler contract?

Call :func:`check_pooler` from a plugin's own tests::

    from poolkit.testing import check_pooler

    def test_my_pooler():
        check_pooler(MyPooler())

It pools random token states (seeded, CPU, no model needed) and raises
:class:`PoolerContractError` listing every check the pooler fails, one line each.
The checks (their names start the lines of the message):

- ``setup`` (with ``encoder``): ``pooler.setup(encoder)`` runs.
- ``name``, ``output_dim``, ``layers``: a non-empty ``name``; ``output_dim(H)``
  a positive int; ``layers`` ``None`` or a non-empty tuple of ints.
- ``module`` (trainable poolers): ``module(H)`` is a ``torch.nn.Module`` with
  parameters.
- ``output``: a floating ``torch.Tensor`` ``(batch, output_dim(H))``, no NaN/inf.
- ``padding invariance``: a text pooled alone equals it pooled in a batch of
  longer texts with extra all-padding columns.
- ``batch invariance``: permuting the batch permutes the output rows; other
  texts in the batch do not change a text's vector.
- ``read-only inputs``: ``hidden`` and ``mask`` are bitwise unchanged and not
  written to (their ``_version`` counters do not move).
- ``padding values``: huge values (±1e4) in the padded positions, fp32 and fp16,
  change nothing.
- ``fp16``: fp16 states of long texts (320 tokens) with an outlier dimension
  (values near 240; trained transformers have a few large-valued dimensions)
  give a finite output of the right shape: an fp16 sum over the tokens
  overflows there.
- ``bool mask``: a ``bool`` mask gives what the ``int64`` mask poolkit passes gives.
- ``backward`` (trainable poolers): a backward pass gives every parameter a
  finite gradient and leaves the inputs alone.

Poolers of pairs of texts (``segments = True``) get ``pool(hidden, mask,
segments)`` in every check, each text's second half as its second text.
Multi-layer poolers (``layers`` a tuple) get ``hidden`` as a tuple of
``len(layers)`` tensors in every check. Trainable poolers are checked through
``module(H).forward`` (eval mode, no grad, except for ``backward``).
"""

from poolkit.encoding.tokenization import segments
from poolkit.errors import one_line

FP32_TOLERANCE = dict(rtol=1e-5, atol=1e-5)
FP16_TOLERANCE = dict(rtol=2e-3, atol=2e-3)
HUGE = 1e4  # padding garbage: finite in fp16 too (max 65504)


class PoolerContractError(AssertionError):
    """A pooler broke the pooler contract; the message has one line per failed check."""


class _Unusable(Exception):
    """The pooler's output cannot be compared (not a floating tensor)."""


def check_pooler(pooler, hidden_size: int = 32, *, encoder=None, seed: int = 0) -> None:
    """Run every contract check on ``pooler``; raise :class:`PoolerContractError` on failures.

    ``hidden_size`` is the width ``H`` of the random token states. With
    ``encoder`` (what ``Pooler.setup`` receives, e.g. from
    ``poolkit.encoder.load_encoder``), ``pooler.setup(encoder)`` is called first
    and ``H`` is ``encoder.hidden_size``. ``seed`` seeds the random states (and
    the parameters of a trainable pooler's module). All checks run; the message
    starts with the pooler's name and lists each failed one::

        my_pooler: 2 pooler contract checks failed
          padding invariance: text 1 (4 tokens) pooled in a padded batch differs ...
          padding values: fp32: ±10000 in the padding changed the output ...
    """

    problems: list[str] = []

    def check(title, function, *args):
        try:
            problem = function(*args)
        except _Unusable as exc:
            problem = str(exc)
        except Exception as exc:
            problem = f"raised {one_line(exc)}"
        if problem:
            problems.append(f"{title}: {problem}")

    if encoder is not None:
        check("setup", pooler.setup, encoder)
        hidden_size = encoder.hidden_size
    check("name", _check_name, pooler)
    check("output_dim", _check_output_dim, pooler, hidden_size)
    check("layers", _check_layers, pooler)

    layers = pooler.layers
    ctx = _Context(
        pool=None, hidden_size=hidden_size, seed=seed,
        dim=_declared_dim(pooler, hidden_size),
        n_layers=len(layers) if isinstance(layers, tuple) and layers else None,
    )
    module = None
    if pooler.trainable:
        module = _trainable_module(pooler, hidden_size, seed, problems, check)
        if module is None:
            return _raise(pooler, problems)  # nothing left to pool with
    ctx.pool = _pool_function(pooler, module)
    for title, function in _POOLING_CHECKS:
        check(title, function, ctx)
    if module is not None:
        check("backward", _check_backward, ctx, module, pooler)
    _raise(pooler, problems)


def _pool_function(pooler, module):
    """``pool(hidden, mask)``: the pooler's, or its trainable module's without gradients."""
    import torch

    def pool(hidden, mask):
        if module is None:
            return pooler.pool(hidden, mask, *_pair_segments(pooler, mask))
        with torch.no_grad():
            return module(hidden, mask, *_pair_segments(pooler, mask))

    return pool


def _trainable_module(pooler, hidden_size: int, seed: int, problems: list, check):
    """A trainable pooler's module, seeded (the caller's RNG untouched) and in eval mode;
    ``None`` when it is not a module (said in ``problems``)."""
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = pooler.module(hidden_size)
    except Exception as exc:
        problems.append(f"module: raised {one_line(exc)}")
        return None
    check("module", _check_module, module)
    if not isinstance(module, torch.nn.Module):
        return None
    module.eval()
    return module


def _raise(pooler, problems):
    if not problems:
        return
    name = pooler.name if isinstance(pooler.name, str) and pooler.name else type(pooler).__name__
    count = f"{len(problems)} pooler contract check{'s' if len(problems) > 1 else ''} failed"
    raise PoolerContractError("\n".join([f"{name}: {count}", *(f"  {p}" for p in problems)]))


class _Context:
    def __init__(self, pool, hidden_size, seed, dim, n_layers):
        self.pool = pool  # (hidden, mask) -> output
        self.hidden_size = hidden_size
        self.seed = seed
        self.dim = dim  # None when output_dim() is broken
        self.n_layers = n_layers  # None: one layer, hidden is a tensor


# -- the checks: each returns a problem (one line) or None -------------------------


def _check_name(pooler):
    if not isinstance(pooler.name, str) or not pooler.name.strip():
        return f"got {pooler.name!r}; set a non-empty str class attribute `name`"
    return None


def _check_output_dim(pooler, hidden_size):
    dim = pooler.output_dim(hidden_size)
    if _declared_dim(pooler, hidden_size) is None:
        return f"output_dim({hidden_size}) returned {dim!r}; expected a positive int"
    return None


def _check_layers(pooler):
    layers = pooler.layers
    if layers is None:
        return None
    if (not isinstance(layers, tuple) or not layers
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)):
        return f"got {layers!r}; expected None or a non-empty tuple of layer indices (ints)"
    return None


def _check_module(module):
    import torch

    if not isinstance(module, torch.nn.Module):
        return f"module() returned {type(module).__name__}, not a torch.nn.Module"
    if not list(module.parameters()):
        return "module() has no parameters; a trainable pooler needs at least one"
    return None


def _check_output(ctx):
    texts = _texts(ctx, [5, 1, 9, 3])
    return _bad_output(ctx, _pool(ctx, *_batch(ctx, texts, width=9)), len(texts))


def _check_padding_invariance(ctx):
    texts = _texts(ctx, [1, 4, 9])
    batched = _pool(ctx, *_batch(ctx, texts, width=9 + 3))  # + all-padding columns
    for i, text in enumerate(texts):
        alone = _pool(ctx, *_batch(ctx, [text], width=text.shape[1]))
        diff = _difference(batched[i], alone[0], FP32_TOLERANCE)
        if diff:
            tokens = f"{text.shape[1]} token{'s' if text.shape[1] > 1 else ''}"
            return (f"text {i} ({tokens}) pooled in a padded batch differs "
                    f"from it pooled alone ({diff}); mask the padding and use the real "
                    f"token count")
    return None


def _check_batch_invariance(ctx):
    texts = _texts(ctx, [3, 7, 2, 7])
    out = _pool(ctx, *_batch(ctx, texts, width=8))
    order = [2, 0, 3, 1]
    permuted = _pool(ctx, *_batch(ctx, [texts[i] for i in order], width=8))
    diff = _difference(permuted, out[order], FP32_TOLERANCE)
    if diff:
        return f"permuting the batch did not just permute the output rows ({diff})"
    others = _texts(ctx, [5, 8, 1], seed_offset=1)
    mixed = _pool(ctx, *_batch(ctx, [texts[0], *others], width=8))
    diff = _difference(mixed[0], out[0], FP32_TOLERANCE)
    if diff:
        return f"a text's vector changed with the other texts in its batch ({diff})"
    return None


def _check_read_only(ctx):
    hidden, mask = _batch(ctx, _texts(ctx, [2, 6, 4]), width=7)
    tensors = [*hidden, mask]
    before = [(t.clone(), t._version) for t in tensors]
    _pool(ctx, hidden, mask)
    for t, (copy, version) in zip(tensors, before):
        what = "mask" if t is mask else "hidden"
        if not _equal(t, copy):
            return f"pooling changed the values of {what}; never write into the inputs"
        if t._version != version:
            return f"pooling wrote into {what} in place; never write into the inputs"
    return None


def _check_padding_values(ctx):
    import torch

    texts = _texts(ctx, [2, 6, 3])
    for dtype, tolerance in ((torch.float32, FP32_TOLERANCE), (torch.float16, FP16_TOLERANCE)):
        clean = _pool(ctx, *_batch(ctx, texts, width=8, padding=0.0, dtype=dtype))
        dirty = _pool(ctx, *_batch(ctx, texts, width=8, padding=HUGE, dtype=dtype))
        if torch.isfinite(clean.float()).all() and not torch.isfinite(dirty.float()).all():
            return f"{_dtype_name(dtype)}: ±{HUGE:g} in the padding gave NaN/inf"
        diff = _difference(dirty, clean, tolerance)
        if diff:
            return (f"{_dtype_name(dtype)}: ±{HUGE:g} in the padding changed the output "
                    f"({diff}); padding leaks into the result")
    return None


def _check_fp16(ctx):
    import torch

    texts = _texts(ctx, [320, 200, 1], scale=3.0)
    for text in texts:
        text[..., 0] += 240.0  # an outlier dimension: a sum over 320 tokens is > 65504
    hidden, mask = _batch(ctx, texts, width=322, dtype=torch.float16)
    problem = _bad_output(ctx, _pool(ctx, hidden, mask), len(texts))
    if problem:
        return f"fp16 states of 320 tokens with an outlier dimension: {problem}"
    return None


def _check_bool_mask(ctx):
    hidden, mask = _batch(ctx, _texts(ctx, [4, 1, 6]), width=7)
    diff = _difference(_pool(ctx, hidden, mask.bool()), _pool(ctx, hidden, mask),
                       FP32_TOLERANCE)
    if diff:
        return f"a bool mask gave another result than the int64 mask ({diff})"
    return None


def _check_backward(ctx, module, module_owner=None):
    import torch

    if not any(p.requires_grad for p in module.parameters()):
        return None  # reported by `module`
    hidden, mask = _batch(ctx, _texts(ctx, [3, 8, 1]), width=9)
    inputs = _input(ctx, hidden)
    tensors = [*hidden, mask]
    before = [(t.clone(), t._version) for t in tensors]
    module.train()
    try:
        module.zero_grad(set_to_none=True)
        out = module(inputs, mask, *_pair_segments(module_owner, mask))
        if not isinstance(out, torch.Tensor):
            return f"forward returned {type(out).__name__}, not a torch.Tensor"
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(ctx.seed))
        (out.float() * weights).sum().backward()
    finally:
        module.eval()
    for name, parameter in module.named_parameters():
        if parameter.requires_grad and parameter.grad is None:
            return f"parameter {name!r} got no gradient"
        if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
            return f"parameter {name!r} got a NaN/inf gradient"
    for t, (copy, version) in zip(tensors, before):
        if t.requires_grad or t.grad is not None:
            return "forward made the inputs require or hold gradients"
        if not _equal(t, copy) or t._version != version:
            return "forward wrote into its inputs"
    return None


# -- helpers ----------------------------------------------------------------------


def _pair_segments(pooler, mask) -> tuple:
    """``(segments,)`` for a pooler of pairs of texts (``segments = True``), else ``()``:
    each text's second half (from token ``ceil(n / 2)`` of its ``n``) is its second text."""
    if getattr(pooler, "segments", False) is not True:
        return ()
    lengths = mask.bool().sum(dim=1).numpy()
    return (segments((lengths + 1) // 2, lengths, mask.shape[1]),)


def _equal(a, b):
    import torch

    return torch.equal(a, b)


def _declared_dim(pooler, hidden_size):
    try:
        dim = pooler.output_dim(hidden_size)
    except Exception:
        return None
    if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0:
        return dim
    return None


def _texts(ctx, lengths, scale=1.0, seed_offset=0):
    """One fp32 ``(layers, length, H)`` tensor of random states per text."""
    import torch

    g = torch.Generator().manual_seed(ctx.seed * 1000 + seed_offset)
    layers = ctx.n_layers or 1
    return [torch.randn(layers, n, ctx.hidden_size, generator=g) * scale for n in lengths]


def _batch(ctx, texts, width, padding=None, dtype=None):
    """``(hidden, mask)``: ``hidden`` one ``(batch, width, H)`` tensor per layer.

    Padding holds random states (``padding=None``, like an encoder's output
    there), or ``±padding`` with random signs. ``mask`` is int64, as poolkit passes it.
    """
    import torch

    g = torch.Generator().manual_seed(ctx.seed + width)
    layers, _, size = texts[0].shape
    shape = (layers, len(texts), width, size)
    if padding is None:
        hidden = torch.randn(shape, generator=g)
    else:
        hidden = torch.where(torch.rand(shape, generator=g) < 0.5, -padding, padding)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    for row, text in enumerate(texts):
        hidden[:, row, : text.shape[1]] = text
        mask[row, : text.shape[1]] = 1
    hidden = hidden.to(dtype or torch.float32)
    return [layer.clone() for layer in hidden], mask


def _input(ctx, hidden):
    """What ``pool`` gets: one tensor, or a tuple of them for a multi-layer pooler."""
    return tuple(hidden) if ctx.n_layers else hidden[0]


def _pool(ctx, hidden, mask):
    import torch

    out = ctx.pool(_input(ctx, hidden), mask)
    if not isinstance(out, torch.Tensor):
        raise _Unusable(f"returned {type(out).__module__}.{type(out).__name__}, "
                        f"not a torch.Tensor")
    if not out.is_floating_point():
        raise _Unusable(f"returned dtype {out.dtype}, not a floating dtype")
    return out


def _bad_output(ctx, out, batch):
    import torch

    if out.ndim != 2 or out.shape[0] != batch or (ctx.dim and out.shape[1] != ctx.dim):
        return (f"returned shape {tuple(out.shape)}, expected ({batch}, {ctx.dim or 'D'}) "
                f"(output_dim({ctx.hidden_size}) = {ctx.dim})")
    if not torch.isfinite(out).all():
        return "returned NaN/inf"
    return None


def _difference(actual, expected, tolerance):
    """``None`` when close (NaN == NaN: reported by ``output``), else the max abs difference."""
    import torch

    if actual.shape != expected.shape:
        return f"shapes {tuple(actual.shape)} and {tuple(expected.shape)}"
    actual, expected = actual.float(), expected.float()
    if torch.allclose(actual, expected, equal_nan=True, **tolerance):
        return None
    return f"max abs difference {(actual - expected).abs().nan_to_num(float('inf')).max():.3g}"


def _dtype_name(dtype):
    return str(dtype).replace("torch.float", "fp")


#: The checks every pooler's pooling goes through, in order, each given the context.
_POOLING_CHECKS = (
    ("output", _check_output),
    ("padding invariance", _check_padding_invariance),
    ("batch invariance", _check_batch_invariance),
    ("read-only inputs", _check_read_only),
    ("padding values", _check_padding_values),
    ("fp16", _check_fp16),
    ("bool mask", _check_bool_mask),
)
