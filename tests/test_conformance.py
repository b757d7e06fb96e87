"""The plugin conformance kit, ``poolkit.testing.check_pooler``.

It passes on every pooler poolkit ships and fails, naming the right check, on
poolers broken in the ways plugins get pooling wrong.
"""

import pytest
import torch
from conftest import ALL_POOLERS, BUILTIN_POOLERS, plugin_pooler

from poolkit import Pooler
from poolkit.pooling.manager import collect_poolers, get_plugin_manager
from poolkit.testing import PoolerContractError, check_pooler

#: The plugins shipped after the first four.
NEW_PLUGINS = tuple(name for name in ALL_POOLERS if name not in BUILTIN_POOLERS)


@pytest.mark.parametrize("name", BUILTIN_POOLERS)
def test_builtins_pass(name, tiny_encoder):
    pooler = collect_poolers(get_plugin_manager())[name][0]
    check_pooler(pooler, encoder=tiny_encoder)


@pytest.mark.parametrize("module_name", NEW_PLUGINS)
def test_new_plugins_pass(module_name):
    pooler = plugin_pooler(module_name)
    assert pooler.name == module_name
    check_pooler(pooler)
    check_pooler(pooler, hidden_size=8, seed=1)


def test_the_kit_leaves_the_callers_random_state_alone():
    state = torch.random.get_rng_state()
    check_pooler(plugin_pooler("attention"))
    assert torch.equal(torch.random.get_rng_state(), state)


# -- deliberately broken poolers ------------------------------------------------------


def _masked_mean(hidden, mask):
    weights = mask.unsqueeze(-1).float()
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class WrongDim(Pooler):
    name = "wrong_dim"

    def output_dim(self, hidden_size):
        return 2 * hidden_size  # declares mean_max's width, returns mean's

    def pool(self, hidden, mask):
        return _masked_mean(hidden, mask)


class WritesIntoHidden(Pooler):
    name = "writes_into_hidden"

    def pool(self, hidden, mask):
        hidden.masked_fill_(~mask.bool().unsqueeze(-1), 0.0)  # same values after, if already 0
        return hidden.float().sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)


class BumpsHiddenInPlace(Pooler):
    """Writes without changing a value: only the version counter sees it."""

    name = "bumps_hidden"

    def pool(self, hidden, mask):
        hidden.mul_(1.0)
        return _masked_mean(hidden, mask)


class UnmaskedMean(Pooler):
    name = "unmasked_mean"

    def pool(self, hidden, mask):
        return hidden.mean(dim=1)


class LiteralMinusOneE9Max(Pooler):
    """sentence-transformers' max: masks with -1e9, which fp16 cannot hold."""

    name = "max_minus_1e9"

    def pool(self, hidden, mask):
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), -1e9).max(dim=1).values


class NaNOutput(Pooler):
    name = "nan_output"

    def pool(self, hidden, mask):
        return _masked_mean(hidden, mask) * float("nan")


class ReturnsNumpy(Pooler):
    name = "returns_numpy"

    def pool(self, hidden, mask):
        return _masked_mean(hidden, mask).numpy()


class Fp16Sum(Pooler):
    """A masked mean that sums in the input dtype: fine in fp32, inf in fp16."""

    name = "fp16_sum"

    def pool(self, hidden, mask):
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class FirstLayerUnmasked(Pooler):
    """Multi-layer: masks the last layer, forgets to mask the first."""

    name = "first_layer_unmasked"
    layers = (1, -1)

    def pool(self, hidden, mask):
        first, last = hidden
        return (first.float().mean(dim=1) + _masked_mean(last, mask)) / 2


class ParameterFreeModule(Pooler):
    name = "no_parameters"
    trainable = True

    def module(self, hidden_size):
        class MeanModule(torch.nn.Module):
            def forward(self, hidden, mask):
                return _masked_mean(hidden, mask)

        return MeanModule()


class InfiniteGradient(Pooler):
    """sqrt of a parameter that starts at 0: forward is fine, its gradient is inf."""

    name = "infinite_gradient"
    trainable = True

    def module(self, hidden_size):
        class SqrtScale(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.zeros(1))

            def forward(self, hidden, mask):
                return _masked_mean(hidden, mask) * (1 + self.scale.sqrt())

        return SqrtScale()


class UnmaskedTrainable(Pooler):
    name = "unmasked_trainable"
    trainable = True

    def module(self, hidden_size):
        class Scaled(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.ones(hidden_size))

            def forward(self, hidden, mask):
                return hidden.float().mean(dim=1) * self.scale

        return Scaled()


class NotAModule(Pooler):
    name = "not_a_module"
    trainable = True

    def module(self, hidden_size):
        return lambda hidden, mask: _masked_mean(hidden, mask)


@pytest.mark.parametrize("pooler, check, detail", [
    (WrongDim(), "output", "expected (4, 64)"),
    (WritesIntoHidden(), "read-only inputs", "changed the values of hidden"),
    (BumpsHiddenInPlace(), "read-only inputs", "wrote into hidden in place"),
    (UnmaskedMean(), "padding invariance", "differs from it pooled alone"),
    (UnmaskedMean(), "padding values", "changed the output"),
    (LiteralMinusOneE9Max(), "fp16", "cannot be converted to type c10::Half"),
    (LiteralMinusOneE9Max(), "padding values", "cannot be converted"),
    (NaNOutput(), "output", "NaN/inf"),
    (ReturnsNumpy(), "output", "numpy.ndarray, not a torch.Tensor"),
    (Fp16Sum(), "fp16", "NaN/inf"),
    (FirstLayerUnmasked(), "padding invariance", "differs from it pooled alone"),
    (ParameterFreeModule(), "module", "no parameters"),
    (InfiniteGradient(), "backward", "NaN/inf gradient"),
    (UnmaskedTrainable(), "padding invariance", "differs from it pooled alone"),
    (NotAModule(), "module", "not a torch.nn.Module"),
], ids=lambda value: value.name if isinstance(value, Pooler) else None)
def test_broken_pooler_trips_the_check_it_breaks(pooler, check, detail):
    with pytest.raises(PoolerContractError) as caught:
        check_pooler(pooler)
    message = str(caught.value)
    assert message.startswith(f"{pooler.name}: ")
    lines = {line.strip().split(":")[0]: line for line in message.splitlines()[1:]}
    assert check in lines, message
    assert detail in lines[check], message


def test_fp16_sum_passes_everything_but_fp16():
    """Each check is aimed: an fp32-correct pooler fails only where fp16 overflows."""
    with pytest.raises(PoolerContractError) as caught:
        check_pooler(Fp16Sum())
    assert str(caught.value).splitlines() == [
        "fp16_sum: 1 pooler contract check failed",
        "  fp16: fp16 states of 320 tokens with an outlier dimension: returned NaN/inf",
    ]


def test_every_failed_check_is_listed_one_per_line():
    class BrokenEverywhere(Pooler):
        name = ""  # no name: the message names the class

        def output_dim(self, hidden_size):
            return 0

        def pool(self, hidden, mask):
            hidden.add_(0.0)
            return hidden.mean(dim=1)

    with pytest.raises(PoolerContractError) as caught:
        check_pooler(BrokenEverywhere())
    first, *problems = str(caught.value).splitlines()
    assert first.startswith("BrokenEverywhere: ")
    checks = [line.strip().split(":")[0] for line in problems]
    assert checks[:2] == ["name", "output_dim"]
    assert {"padding invariance", "read-only inputs", "padding values"} <= set(checks)
    assert first == f"BrokenEverywhere: {len(problems)} pooler contract checks failed"


def test_a_contract_error_is_an_assertion_error():
    """So pytest shows it as a test failure, and plain ``assert``-style tooling catches it."""
    assert issubclass(PoolerContractError, AssertionError)


def test_multi_layer_poolers_get_a_tuple_of_layers():
    seen = []

    class Recording(Pooler):
        name = "recording"
        layers = (0, 2, -1)

        def pool(self, hidden, mask):
            seen.append((type(hidden), len(hidden), hidden[0].shape == hidden[2].shape))
            return _masked_mean(hidden[2], mask)

    check_pooler(Recording())
    assert seen and set(seen) == {(tuple, 3, True)}

