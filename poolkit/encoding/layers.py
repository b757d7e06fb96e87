"""``--layers``: which hidden states to pool, in Hugging Face's numbering."""

from poolkit.errors import PoolkitError


def parse_layers(spec, num_layers: int) -> list[int]:
    """Absolute hidden-state indices (0 = embeddings output, ``num_layers`` =
    last) from a spec like ``-1``, ``-2``, ``-4..-1``, ``0,3,6``, ``all``.

    Negative indices count from the last layer, as in Python: ``-1`` is
    ``num_layers``. ``all`` is every index 0..num_layers.
    """
    top = num_layers
    if spec is None:
        return [top]
    items = [str(spec)] if isinstance(spec, (int, str)) else [str(x) for x in spec]
    parts = [part.strip() for item in items for part in item.split(",") if part.strip()]

    def index(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise PoolkitError(f"--layers: '{text}' is not a layer number") from None
        absolute = value + top + 1 if value < 0 else value
        if not 0 <= absolute <= top:
            raise PoolkitError(f"--layers: layer {value} does not exist; this model has "
                               f"hidden states 0..{top} (or -{top + 1}..-1)")
        return absolute

    layers = set()
    for part in parts or [""]:
        if part == "all":
            layers.update(range(top + 1))
        elif ".." in part:
            low, high = (index(x) for x in part.split("..", 1))
            if low > high:
                raise PoolkitError(f"--layers: empty range '{part}'")
            layers.update(range(low, high + 1))
        else:
            layers.add(index(part))
    return sorted(layers)
