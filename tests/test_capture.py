"""Composition captured from a real forward: agreement with torch.fx, transformers' models, wrappers, warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import modnorm
from modnorm.layers import defaults as D

from test_auto import BasicBlock, Branchy, TransformerBlock


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("make, x", [
    (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), BasicBlock(8),
                           BasicBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)), torch.randn(2, 3, 6, 6)),
    (lambda: TransformerBlock(8, 2), torch.randn(2, 5, 8)),
    (lambda: nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 3)), torch.randn(4, 5)),
])
def test_capture_agrees_with_torch_fx(make, x) -> None:
    model = make()
    traced = _quiet(modnorm.budgets, model)
    bn = {n: b.clone() for n, b in model.named_buffers()}
    captured = _quiet(modnorm.budgets, model, example_inputs=x)
    assert captured.keys() == traced.keys()
    for k in traced:
        assert captured[k] == pytest.approx(traced[k], rel=1e-12), k
    assert all(torch.equal(b, bn[n]) for n, b in model.named_buffers())  # BatchNorm statistics untouched
    assert model.training  # the training flag is restored


class SelfAttention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, 1, batch_first=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.attn(h, h, h, need_weights=False)[0]


def test_self_attention_counts_its_input_once() -> None:
    # in_proj (ν 1) → attention map (ν 1) → out_proj (ν 1): the layer has sensitivity 1, not 3
    model = SelfAttention(4)
    assert modnorm.network.structure(model).sensitivity == pytest.approx(1.0)
    assert modnorm.network.structure(model, example_inputs=torch.randn(2, 3, 4)).sensitivity == pytest.approx(1.0)


class Untraceable(nn.Module):
    """Data-dependent control flow and a concatenation: torch.fx fails, a real forward does not."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, d, bias=False), nn.Linear(2 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        if h.sum() > -1:  # always true
            h = torch.cat([h, x], dim=-1)
        return x + self.b(h)


def test_capture_recovers_what_fx_cannot() -> None:
    model = nn.Sequential(nn.Linear(3, 4, bias=False), Untraceable(4), nn.Linear(4, 2, bias=False))
    with pytest.warns(UserWarning, match="could not be recovered"):
        modnorm.budgets(model)
    b = _quiet(modnorm.budgets, model, example_inputs=torch.randn(5, 3))
    # hand derivation: cat(h, x) joins (a-branch, x), ν 1 + 1, over 2 parts: ν 1 on b's input. The residual sum
    # (L = 1) is x/2 + branch/2, of mass (0 + 2)/2 = 1 and ν (1 + 1)/2 = 1. μ = 1 + 1 + 1 = 3: both outer layers
    # get 1/3; the block's 1/3 is doubled by the 1/2 on the branch and split between a and b (1/3 each), and a's
    # share is doubled again by the 1/2 of the concatenation after it: 2/3.
    assert b == pytest.approx({"0.weight": 1 / 3, "1.a.weight": 2 / 3, "1.b.weight": 1 / 3, "2.weight": 1 / 3})


def test_one_warning_names_every_unrecovered_module_and_the_fallback() -> None:
    model = nn.Sequential(nn.Linear(4, 4, bias=False), Branchy(), Branchy())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        modnorm.budgets(model)
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "1 (Branchy)" in msg and "2 (Branchy)" in msg and "1/N" in msg and "example_inputs=" in msg


def test_bad_example_inputs_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="example_inputs: the model's forward raised RuntimeError"):
        modnorm.budgets(nn.Linear(3, 2), example_inputs=torch.randn(2, 5))
    with pytest.raises(TypeError, match="example_inputs must be"):
        modnorm.budgets(nn.Linear(3, 2), example_inputs=3.0)


def test_compiled_and_data_parallel_models_are_looked_through() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    want = _quiet(modnorm.budgets, model)
    for wrapped in (torch.compile(model), nn.DataParallel(model)):
        assert _quiet(modnorm.budgets, wrapped) == want
        assert "_orig_mod" not in _quiet(modnorm.describe, wrapped) and "module." not in _quiet(modnorm.describe, wrapped)
        opt = _quiet(modnorm.optimizer, wrapped, "muon", budgets=True)
        assert {r["name"]: r["budget"] for r in opt.describe_rows()} == pytest.approx(want)


# -- transformers' models, built from configs (random weights, no downloads) --------------------

transformers = pytest.importorskip("transformers")


def _rules() -> modnorm.LayerRules:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.pytorch_utils import Conv1D

    rules = modnorm.LayerRules()  # layer coverage aside: here only the composition is under test
    rules.register(Conv1D, {"weight": D.hidden(), "bias": D.vector()})
    rules.register(LlamaRMSNorm, {"weight": D.vector()})
    return rules


def _hf(kind: str, layers: int) -> nn.Module:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=layers, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    if kind == "bert":
        return transformers.BertModel(transformers.BertConfig(num_hidden_layers=layers, hidden_size=16, num_attention_heads=2,
                                                              intermediate_size=32, vocab_size=40, max_position_embeddings=16))
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=16, num_attention_heads=2,
                                                                  num_key_value_heads=2, intermediate_size=32, vocab_size=40))


QUERY = {"gpt2": "transformer.h.0.attn.c_attn.weight", "bert": "encoder.layer.0.attention.self.query.weight",
         "llama": "model.layers.0.self_attn.q_proj.weight"}


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_transformers_models_are_captured_and_depth_does_not_freeze_layers(kind: str) -> None:
    budgets = {n: _quiet(modnorm.budgets, _hf(kind, n), rules=_rules()) for n in (2, 8)}
    for n, b in budgets.items():
        mats = [v for k, v in b.items() if k.endswith("weight") and "norm" not in k.lower() and "ln" not in k]
        assert max(mats) / min(mats) < 100, (n, max(mats), min(mats))
    # the first attention layer's step shrinks at most like 1/L from 2 to 8 layers (without the capture, torch.fx
    # fails on these models and the flat fallback gives 1/N: BERT's query 0.045, 0.014 at 2, 8 layers)
    assert budgets[8][QUERY[kind]] >= budgets[2][QUERY[kind]] / 4
    # explicit example inputs give the same as the model's dummy_inputs
    model = _hf(kind, 2)
    ids = torch.randint(0, 40, (2, 7))
    assert _quiet(modnorm.budgets, model, rules=_rules(), example_inputs={"input_ids": ids}) == pytest.approx(budgets[2])


def test_distributed_data_parallel_gives_no_warning_and_plain_names(tmp_path) -> None:
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group yet")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        want = _quiet(modnorm.budgets, model)
        ddp = nn.parallel.DistributedDataParallel(model)
        assert _quiet(modnorm.budgets, ddp) == want
        assert {r["name"] for r in _quiet(modnorm.optimizer, ddp, "muon").describe_rows()} == set(want)
    finally:
        dist.destroy_process_group()


def test_dummy_inputs_are_used_and_a_failing_set_falls_back_to_torch_fx() -> None:
    class WithDummy(nn.Module):
        def __init__(self, dummy: torch.Tensor) -> None:
            super().__init__()
            self.a, self.b, self.dummy = Untraceable(4), nn.Linear(4, 2, bias=False), dummy

        @property
        def dummy_inputs(self) -> dict[str, torch.Tensor]:
            return {"x": self.dummy}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    good = WithDummy(torch.randn(3, 4))
    assert _quiet(modnorm.budgets, good) == pytest.approx(modnorm.budgets(good, example_inputs={"x": torch.randn(2, 4)}))
    with pytest.warns(UserWarning, match="could not be recovered"):  # wrong shape: no error, torch.fx's fall-back
        modnorm.budgets(WithDummy(torch.randn(3, 5)))
