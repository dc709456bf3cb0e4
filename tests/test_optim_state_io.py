"""Checkpoints: a refused load changes nothing; another preset's state is refused naming both."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import modnorm
from modnorm import CheckpointMismatchError, load_checkpoint, save_checkpoint


def build(preset, width=6, **hp):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))
    return model, modnorm.optimizer(model, preset, **hp)


def train(model, opt, steps):
    torch.manual_seed(1)
    x = torch.randn(8, 4)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}


def same(model, opt, snap):
    params, state = snap
    now = {id(p): s for p, s in opt.state.items()}
    return (all(torch.equal(p, q) for p, q in zip(model.parameters(), params)) and now.keys() == state.keys()
            and all(torch.equal(now[i][k], state[i][k]) for i in state for k in state[i]))


@pytest.fixture
def adamw_checkpoint(tmp_path):
    model, opt = build("adamw")
    train(model, opt, 2)
    save_checkpoint(tmp_path, model, opt)
    return tmp_path, model, opt


def test_refused_load_leaves_no_phantom_step(adamw_checkpoint):
    path, *_ = adamw_checkpoint
    model, opt = build("muadam")
    snap = snapshot(model, opt)
    with pytest.raises(CheckpointMismatchError, match="'adamw'.*'muadam'"):
        load_checkpoint(path, model, opt)
    assert same(model, opt, snap)
    fresh_model, fresh = build("muadam")
    assert all(torch.equal(a, b) for a, b in zip(train(model, opt, 5), train(fresh_model, fresh, 5)))


def test_shape_mismatch_is_an_ordinary_error_and_changes_nothing(adamw_checkpoint):
    path, *_ = adamw_checkpoint
    model, opt = build("adamw", width=7)
    train(model, opt, 1)
    snap = snapshot(model, opt)
    with pytest.raises(CheckpointMismatchError, match=r"0\.weight: checkpoint \(6, 4\), here \(7, 4\)"):
        load_checkpoint(path, model, opt)  # an Exception (DCP's CheckpointException is a BaseException)
    assert same(model, opt, snap)


def test_existing_gradients_do_not_break_a_valid_load(adamw_checkpoint):
    path, saved_model, saved_opt = adamw_checkpoint
    model, opt = build("adamw")
    model(torch.randn(2, 4)).sum().backward()  # .grad present before the load
    load_checkpoint(path, model, opt)
    assert all(torch.equal(a, b) for a, b in zip(train(model, opt, 3), train(saved_model, saved_opt, 3)))


def test_save_before_the_first_step_takes_no_step(tmp_path):
    model, opt = build("adamw")
    before = [p.detach().clone() for p in model.parameters()]
    save_checkpoint(tmp_path, model, opt)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(int(s["step"]) == 0 for s in opt.state.values())
    fresh_model, fresh = build("adamw")
    assert all(torch.equal(a, b) for a, b in zip(train(model, opt, 3), train(fresh_model, fresh, 3)))


@pytest.mark.parametrize("source", ["adamw", "muon"])
def test_load_state_dict_of_another_preset_names_both(source):
    model, opt = build(source)
    train(model, opt, 1)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    target_model, target = build("muadam", lr=0.02, weight_decay=0.0)
    snap = snapshot(target_model, target)
    groups = [dict(g) for g in target.param_groups]
    with pytest.raises(CheckpointMismatchError, match=f"preset '{source}'.*'muadam'"):
        target.load_state_dict(sd)
    sd.pop("modnorm_preset")  # a dict without the name: recognized by its hyperparameters (muon's), or by its state keys
    with pytest.raises(CheckpointMismatchError, match="'muadam'"):
        target.load_state_dict(sd)
    assert same(target_model, target, snap) and [dict(g) for g in target.param_groups] == groups


def test_load_state_dict_round_trip_is_exact():
    model, opt = build("muadam")
    train(model, opt, 2)
    sd = opt.state_dict()
    assert sd["modnorm_preset"] == "muadam"
    model2, opt2 = build("muadam")
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(train(model, opt, 3), train(model2, opt2, 3)))


def test_float64_scalars_of_float32_parameters_resume_bitwise():
    # schedule-free's averaging weights are float64 CPU scalars: torch's load casts state to the
    # parameter's dtype, which rounded them to float32 and changed the resumed trajectory
    model, opt = build("adamw_schedulefree", lr=0.01)
    train(model, opt, 3)
    sd = opt.state_dict()
    model2, opt2 = build("adamw_schedulefree", lr=0.01)
    model2.load_state_dict(model.state_dict())
    opt2.load_state_dict(sd)
    assert all(s["sf_weight_sum"].dtype == torch.float64 for s in opt2.state.values())
    assert all(torch.equal(a, b) for a, b in zip(train(model, opt, 3), train(model2, opt2, 3)))


def test_shampoo_state_saved_with_the_earlier_half_roots_loads_as_full_inverse_roots():
    """Earlier versions saved L_inv = (A + εI)^(-p/2) (R_inv for B); loading such a state gives
    A_inv_root = L_inv² — the state this version keeps — and the same next step (float64)."""
    import copy


    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    opt = modnorm.optimizer(model, "shampoo", lr=0.01, root_dtype="float64")
    x = torch.randn(8, 6, dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    saved = opt.state_dict()
    legacy = copy.deepcopy(saved)
    converted = 0
    for st in legacy["state"].values():
        for new, old in (("A_inv_root", "L_inv"), ("B_inv_root", "R_inv")):
            if new in st:
                lam, Q = torch.linalg.eigh(st.pop(new).double())
                st[old] = (Q * lam.clamp_min(0).sqrt()) @ Q.mT  # the principal square root, as saved before
                converted += 1
    assert converted >= 2
    before = copy.deepcopy(legacy)

    twin = copy.deepcopy(model)
    resumed = modnorm.optimizer(twin, "shampoo", lr=0.01, root_dtype="float64")
    resumed.load_state_dict(legacy)
    assert {k for st in legacy["state"].values() for k in st} == {k for st in before["state"].values() for k in st}  # not modified
    for p, q in zip(model.parameters(), twin.parameters()):
        for key in ("A_inv_root", "B_inv_root"):
            if key in opt.state[p]:
                assert "L_inv" not in resumed.state[q] and "R_inv" not in resumed.state[q]
                torch.testing.assert_close(resumed.state[q][key], opt.state[p][key], rtol=1e-10, atol=1e-12)
    for o, m in ((opt, model), (resumed, twin)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
