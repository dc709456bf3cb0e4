"""Registries (scoped, copied, built explicitly), presets written as one function of parts, and
hyperparameter types that give both the validation and the range in the error message."""

from __future__ import annotations

import math
import typing
import pickle

import pydantic
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import modnorm
from modnorm.optim import PRECONDITIONERS, PRESETS, Recipe, Registry, UpdateRule, preset, register_preconditioner, register_preset
from modnorm.optim.catalog import builtin_preconditioners, builtin_presets, get_preconditioner
from modnorm.optim.config import ConfigError
from modnorm.optim.hparams import Beta, Betas, NonNeg, Positive, allowed, require_nonneg
from modnorm.optim.parts import coupled_decay, decoupled_decay, everywhere, heavy_ball, lion_momentum, lmo, rule, sharp
from modnorm.optim.kl_shampoo import KLShampoo
from modnorm.optim.matrix_preconditioners import Shampoo
from modnorm.optim.preconditioner import Identity


def test_registry_get_names_the_known_entries_and_the_hint():
    r = Registry("widget", {"a": 1, "b": 2}, hint="Add one with add_widget")
    assert r.get("a") == 1 and r["b"] == 2 and sorted(r) == ["a", "b"] and len(r) == 2 and r.get("zz", 7) == 7
    with pytest.raises(KeyError, match=r"unknown widget 'c'; registered: \['a', 'b'\]\. Add one with add_widget"):
        r.get("c")
    with pytest.raises(ValueError, match="non-empty string"):
        r.register("", 3)


def test_scoped_undoes_additions_and_replacements_even_after_an_error():
    r = Registry("widget", {"a": 1})
    with pytest.raises(RuntimeError), r.scoped():
        r.register("b", 2)
        r.register("a", 10)
        assert dict(r) == {"a": 10, "b": 2}
        raise RuntimeError
    assert dict(r) == {"a": 1}


def test_copy_is_independent():
    r = Registry("widget", {"a": 1})
    c = r.copy()
    c.register("b", 2)
    assert "b" not in r and dict(c) == {"a": 1, "b": 2}


def test_builtin_registries_are_built_fresh_and_equal_the_library_ones():
    fresh = builtin_presets()  # (the library's registries may hold what a user, e.g. a docs page, registered)
    assert set(fresh) <= set(PRESETS) and all(PRESETS[n] == p for n, p in fresh.items()) and fresh is not PRESETS
    assert {"sgd", "adamw", "muon", "lion", "rmsprop", "kfac", "sophia"} <= set(fresh)
    built = builtin_preconditioners()
    assert all(PRECONDITIONERS[n] is f for n, f in built.items()) and {"none", "adam", "shampoo", "kfac", "hessian"} <= set(built)
    assert "shampoo_one_sided" not in PRECONDITIONERS  # the preset configures "shampoo" (sides="left", power=0.5)


def test_scoped_preconditioner_is_usable_inside_and_gone_after():
    with PRECONDITIONERS.scoped():
        register_preconditioner("plain", Identity)
        assert isinstance(get_preconditioner("plain"), Identity)
    with pytest.raises(KeyError, match="unknown preconditioner 'plain'"):
        get_preconditioner("plain")


def my_sgd(momentum: Beta = 0.0, weight_decay: NonNeg = 0.0) -> Recipe:
    return everywhere(rule(sharp("frobenius"), heavy_ball(momentum), coupled_decay(weight_decay)))


def test_a_function_preset_steps_like_torch_sgd():
    """A preset written as one function of parts, registered in a scope, against torch.optim.SGD in float64."""
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    ref = w.detach().clone().requires_grad_()
    with PRESETS.scoped():
        register_preset("my_sgd", preset(my_sgd, lr=0.05))
        opt = modnorm.optimizer([w], "my_sgd", momentum=0.9, weight_decay=0.01)
        torch_opt = torch.optim.SGD([ref], lr=0.05, momentum=0.9, weight_decay=0.01)
        X = torch.randn(16, 4, dtype=torch.float64)
        for _ in range(4):
            for o, p in ((opt, w), (torch_opt, ref)):
                o.zero_grad()
                (torch.tanh(X @ p.T) ** 2).sum().backward()
                o.step()
        torch.testing.assert_close(w, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="unknown preset 'my_sgd'"):
        modnorm.optimizer([w], "my_sgd")


def test_the_function_signature_is_the_hyperparameter_model():
    p = preset(my_sgd, lr=0.05, source="test")
    fields = p.hyperparameters.model_fields
    assert {"momentum", "weight_decay", "lr", "maximize", "step_size"} <= set(fields)
    assert fields["lr"].default == 0.05 and fields["momentum"].default == 0.0
    assert p.hyperparameters is my_sgd.hyperparameters  # pickles by name
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(ConfigError, match=r"momentum.*allowed: 0 ≤ momentum < 1"):
        with PRESETS.scoped():
            register_preset("my_sgd", p)
            modnorm.optimizer([torch.zeros(2, requires_grad=True)], "my_sgd", momentum=1.5)


def test_a_hyperparameter_without_type_or_default_is_refused():
    def untyped(beta=0.9) -> Recipe:
        return everywhere(rule(lmo("sign")))

    def no_default(beta: Beta) -> Recipe:
        return everywhere(rule(lmo("sign")))

    for fn in (untyped, no_default):
        with pytest.raises(TypeError, match="needs a type and a default"):
            preset(fn)
    with pytest.raises(TypeError, match="no inherited hyperparameter"):
        preset(my_sgd, betas=(0.9, 0.9))


def test_rule_refuses_a_field_set_by_two_parts_and_lion_reads_as_its_parts():
    with pytest.raises(TypeError, match=r"\['weight_decay'\] set by two parts"):
        rule(sharp("frobenius"), decoupled_decay(0.1), coupled_decay(0.1))
    lion = rule(lmo("sign"), lion_momentum(0.9, 0.99), decoupled_decay(0.1))
    assert lion == UpdateRule(norm="sign", mode="lmo", momentum="lion", direction_beta=0.9, beta=0.99, weight_decay=0.1)


def test_the_lion_and_rmsprop_presets_are_single_functions():
    from modnorm.optim import zoo_presets

    assert PRESETS["lion"].build.function is zoo_presets.lion and PRESETS["rmsprop"].build.function is zoo_presets.rmsprop


def _typed(**fields):
    return pydantic.create_model("M", **fields)


@pytest.mark.parametrize("annotation,default,text", [
    (Beta, 0.5, "0 ≤ x < 1"),
    (NonNeg, 0.0, "x ≥ 0"),
    (Positive, 1.0, "x > 0"),
    (Betas, (0.9, 0.99), "x = (β1, β2) with 0 ≤ β < 1"),
    (Beta | None, None, "0 ≤ x < 1 or None"),
])
def test_allowed_text_follows_from_the_type(annotation, default, text):
    assert allowed(_typed(x=(annotation, default)), "x") == text


def test_allowed_text_of_the_presets():
    muon = PRESETS["muon"].hyperparameters
    assert allowed(muon, "adjust_lr_fn") == "adjust_lr_fn one of 'original', 'match_rms_adamw', 'rms' or None"
    assert allowed(muon, "lr") == "finite lr ≥ 0 (float or 1-element floating tensor)"
    assert allowed(muon, "ns_steps") == "1 ≤ ns_steps < 100" and allowed(muon, "nesterov") is None


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_require_nonneg_accepts_exactly_the_finite_nonnegative_numbers(x):
    ok = math.isfinite(x) and x >= 0
    if ok:
        assert require_nonneg(x, "v") == x
        assert require_nonneg(torch.tensor(x, dtype=torch.float64), "v") is not None
    else:
        with pytest.raises(ValueError, match="v must be a finite number ≥ 0"):
            require_nonneg(x, "v")
    if x == math.inf:
        assert require_nonneg(x, "v", finite=False) == x


def test_require_nonneg_refuses_bools_strings_and_tensors_of_several_entries():
    for bad in (True, "1", torch.ones(2), torch.tensor(1)):
        with pytest.raises(ValueError, match="v must be"):
            require_nonneg(bad, "v")


def test_rule_is_a_deprecated_alias_of_update_rule():
    with pytest.warns(DeprecationWarning, match="use modnorm.optim.UpdateRule"):
        old = modnorm.optim.Rule(norm="sign", momentum="ema", beta=0.9)
    assert isinstance(old, UpdateRule) and old.model_dump() == UpdateRule(norm="sign", momentum="ema", beta=0.9).model_dump()
    w = torch.zeros(3, requires_grad=True)
    modnorm.optimizer([w], Recipe(default=old))  # accepted where an UpdateRule is


@pytest.mark.parametrize("build,name,text", [
    (lambda: modnorm.optim.SecondMoment(beta2=1.0), "beta2", "0 ≤ beta2 < 1"),
    (lambda: modnorm.optim.SecondMoment(eps=-1e-8), "eps", "eps ≥ 0"),
    (lambda: modnorm.optim.SecondMoment(inner=0.0), "inner", "inner > 0"),
    (lambda: Shampoo(beta2=1.5), "beta2", "0 ≤ beta2 < 1 or None"),
    (lambda: Shampoo(precondition_frequency=True), "precondition_frequency", "precondition_frequency ≥ 1"),
    (lambda: KLShampoo(init=0.0), "init", "init > 0"),
])
def test_preconditioner_arguments_are_checked_against_the_same_types(build, name, text):
    with pytest.raises(ValueError, match=f"{name} must satisfy {text}, got"):
        build()


def test_a_scoped_step_size_stage_scales_the_step_and_is_gone_after():
    """A stage registered in a scope: γ = ½ after the directions, so sgd moves like torch.optim.SGD at lr/2."""
    from modnorm.optim.catalog import STEP_SIZES, register_step_size
    from modnorm.optim.step_size import StepSizeStage

    class Half(StepSizeStage):
        def factor(self, loss, directions):
            return 0.5

    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    ref = w.detach().clone().requires_grad_()
    with STEP_SIZES.scoped(), PRESETS.scoped():
        register_step_size("half", lambda group: Half(), ())

        def half_sgd(step_size: typing.Literal["half"] = "half") -> Recipe:
            return my_sgd(momentum=0.0)

        register_preset("half_sgd", preset(half_sgd))
        opt = modnorm.optimizer([w], "half_sgd", lr=0.1)
        torch_opt = torch.optim.SGD([ref], lr=0.05)
        for o, p in ((opt, w), (torch_opt, ref)):
            o.zero_grad()
            (p**3).sum().backward()
            o.step()
        torch.testing.assert_close(w, ref, rtol=1e-14, atol=1e-14)
    assert "half" not in STEP_SIZES and "half_sgd" not in PRESETS
