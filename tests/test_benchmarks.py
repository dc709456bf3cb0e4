"""Every benchmark in --quick mode: its JSON has the expected structure and finite numbers."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402


def run_quick(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> dict[str, Any]:
    module = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", "--quick", "--out", str(tmp_path), *extra])
    module.main()
    data = json.loads((tmp_path / f"{name}.json").read_text())
    assert data["benchmark"] == name and "--quick" in data["command"]
    assert data["table"].startswith("|") and (tmp_path / f"{name}.md").read_text().count("|") > 4
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    return data


def test_lr_grid_and_tune() -> None:
    assert common.lr_grid(1.0, 2, 1) == [0.25, 0.5, 1.0, 2.0]
    best_lr, best, scores = common.tune(lambda lr: {"final": (lr - 0.5) ** 2 if lr < 2 else float("nan")}, [0.25, 0.5, 1.0, 2.0])
    assert best_lr == 0.5 and best["final"] == 0.0 and scores[2.0] == float("inf")


def test_matrix_quadratic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = run_quick("matrix_quadratic", tmp_path, monkeypatch)
    assert set(data["results"]) == {"diagonal κ=1e4", "orthogonal κ=1e4", "hadamard κ=1e4"}
    import matrix_quadratic

    for setting in data["results"].values():
        assert set(setting) == set(matrix_quadratic.METHODS)
        for method, r in setting.items():
            assert math.isfinite(r["final_relative_loss"])
            assert r["final_relative_loss"] == min(r["grid"].values())  # the tuned lr is the grid's best
            if "polyak" not in method:  # Polyak SANIA may not beat L(W₀) in 20 steps on the 3-value grid (docs/benchmarks.md)
                assert r["final_relative_loss"] < 1, method  # the best lr makes progress
            assert str(r["best_lr"]) in r["grid"] or r["best_lr"] in map(float, r["grid"])


def test_matrix_quadratic_hadamard_is_orthogonal() -> None:

    import matrix_quadratic

    H = matrix_quadratic.hadamard(16)
    assert torch.allclose(H @ H.T, torch.eye(16, dtype=H.dtype), atol=1e-12)
    with pytest.raises(ValueError, match="power of 2"):
        matrix_quadratic.hadamard(12)


def test_scale_invariance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = run_quick("scale_invariance", tmp_path, monkeypatch)
    res = data["results"]
    assert {"adamw", "adam_sania", "muon", "muadam", "muadam_sania", "adam_sania+polyak", "muadam_sania+polyak"} <= set(res)
    assert common.is_finite_tree({m: [r["max_curve_gap"], r["first_layer_mismatch"], r["loss_scale_mismatch"]] for m, r in res.items()})
    # Theorem 2: D = V^½ with ε = 0 is invariant to feature scaling, D = V^¼ and no D are not.
    for invariant in ("adam_sania", "muadam_sania", "adam_sania+polyak", "muadam_sania+polyak"):
        assert res[invariant]["first_layer_mismatch"] < 1e-8, invariant
    for variant in ("adamw", "muadam", "muon"):
        assert res[variant]["first_layer_mismatch"] > 1e-4, variant
    # Loss × 0.01: Polyak SANIA and MuAdam in sharp mode (degree 0) are invariant, constant-step SANIA is not.
    for invariant in ("adam_sania+polyak", "muadam_sania+polyak", "muadam:sharp"):
        assert res[invariant]["loss_scale_mismatch"] < 1e-8, invariant
    for variant in ("adam_sania", "muadam_sania", "muadam"):
        assert res[variant]["loss_scale_mismatch"] > 1e-2, variant


def test_matrix_completion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = run_quick("matrix_completion", tmp_path, monkeypatch)
    rank = data["config"]["model_rank"]
    for r in data["results"].values():
        log = r["log"]
        assert common.is_finite_tree(log)
        assert log["train_rmse"][-1] < log["train_rmse"][0]
        for key in ("erank_P", "erank_Q", "srank_P", "srank_Q"):
            assert all(1.0 - 1e-6 <= v <= rank + 1e-6 for v in log[key]), key


def test_rank_measures() -> None:

    import matrix_completion as mc

    F = torch.diag(torch.tensor([3.0, 1.0, 0.0]))
    assert mc.stable_rank(F) == pytest.approx(10 / 9)
    assert mc.effective_rank(torch.eye(4)) == pytest.approx(4.0)


def test_char_gpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    words = ["to", "be", "or", "not", "that", "is", "the", "question"]
    text = "\n".join(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(10)) for i in range(200))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    data = run_quick("char_gpt", tmp_path, monkeypatch, "--data", str(corpus))
    vocab = data["config"]["model"]["vocab_size"]
    assert vocab == len(set(text))
    home = tmp_path / "home"
    (home / ".cache" / "modnorm").mkdir(parents=True)
    (home / ".cache" / "modnorm" / "tinyshakespeare.txt").write_text(text)
    monkeypatch.setenv("HOME", str(home))
    assert run_quick("char_gpt", tmp_path, monkeypatch, "--methods", "muadam")["config"]["model"]["vocab_size"] == vocab  # the default --data
    import char_gpt

    assert set(data["results"]) == set(char_gpt.DEFAULT_METHODS) == set(char_gpt.METHODS) - {"adamw"}
    for r in data["results"].values():
        assert math.isfinite(r["final_val_loss"]) and r["final_val_loss"] < math.log(vocab) + 1.0
        assert common.is_finite_tree(r["train_curve"])
    low = run_quick("char_gpt", tmp_path, monkeypatch, "--data", str(corpus), "--methods", "adamw,muon,torch:adamw", "--state-dtype", "bfloat16")
    assert low["config"]["state_dtype"] == "bfloat16" and low["config"]["state_rounding"] == "stochastic"
    assert low["results"]["adamw"]["hyperparameters"]["state_dtype"] == "bfloat16"
    assert "state_dtype" not in low["results"]["torch:adamw"]["hyperparameters"]  # torch's optimizers keep theirs
    assert all(math.isfinite(r["final_val_loss"]) for r in low["results"].values())


def test_state_dtype_step_quick(tmp_path: Path) -> None:
    import state_dtype_step
    from optimizer_step import gpt_step_arguments

    args = gpt_step_arguments("t", ["--width", "32", "--layers", "1", "--vocab", "16", "--warmup", "1", "--repeats", "1"])
    results = state_dtype_step.measure(args)["results"]
    assert set(results) == {f"{p} / {s}" for p in state_dtype_step.PRESETS for s in state_dtype_step.SETTINGS}
    for preset in state_dtype_step.PRESETS:  # 16-bit state: half the bytes
        assert results[f"{preset} / bfloat16 stochastic"]["state_bytes"] * 2 == results[f"{preset} / float32"]["state_bytes"] > 0
        assert results[f"{preset} / float32"]["vs_float32"] == 1.0


def test_char_gpt_gpt2_arch_and_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' GPT-2 trains under every kind of optimizer, and the interleaved timing hands
    the loss to a step-size stage that needs it (step_size="polyak" was refused there)."""
    pytest.importorskip("transformers")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join("to be or not to be that is the question" for _ in range(100)))
    methods = "torch:adamw,torch:muon,muon,muadam_sania+polyak"
    data = run_quick("char_gpt", tmp_path, monkeypatch, "--data", str(corpus), "--arch", "gpt2", "--methods", methods)
    assert data["config"]["arch"] == "gpt2" and set(data["results"]) == set(methods.split(","))
    for r in data["results"].values():
        assert math.isfinite(r["final_val_loss"]) and r["final_val_loss"] < math.log(data["config"]["model"]["vocab_size"]) + 1.0
    timed = run_quick("char_gpt", tmp_path, monkeypatch, "--data", str(corpus), "--timing", "1", "--methods", "muadam_sania+polyak,torch:muon")
    assert all(r["median_ms_per_iter"] > 0 and r["rounds"] == 1 for r in timed["results"].values())


def test_char_gpt_requires_a_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/modnorm/tinyshakespeare.txt
    with pytest.raises(SystemExit, match=r"no corpus at .*home/.cache/modnorm/tinyshakespeare.txt .*curl -o .*--data PATH"):
        run_quick("char_gpt", tmp_path, monkeypatch)
    with pytest.raises(SystemExit, match="not a file"):
        run_quick("char_gpt", tmp_path, monkeypatch, "--data", str(tmp_path / "missing.txt"))


def test_lr_transfer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = run_quick("lr_transfer", tmp_path, monkeypatch)
    for r in data["results"].values():
        bests = []
        for w in data["config"]["widths"]:
            entry = r["per_width"][str(w)]
            assert entry["best_lr"] in r["lr_grid"] and math.isfinite(entry["best_loss"])
            bests.append(entry["best_lr"])
        # the grid is centre × 2^k: the shift is the number of ×2 steps between the extreme optima
        assert r["optimal_lr_shift_grid_steps"] == round(math.log2(max(bests) / min(bests)))


def test_zoo_2d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = run_quick("zoo_2d", tmp_path, monkeypatch)
    import zoo_2d

    assert set(data["results"]) == set(zoo_2d.METHODS)
    # the functions are the textbook ones: their known minima are zeros

    for fn, point in (("rosenbrock", (1.0, 1.0)), ("himmelblau", (3.0, 2.0)), ("saddle", (0.0, 0.0))):
        assert zoo_2d.FUNCTIONS[fn](torch.tensor(point)) == 0
    assert data["results"]["adam"]["rosenbrock"]["mean_final"] < 100  # the tuned lr made progress from f ≈ 100s


def test_mlp_zoo_and_lr_spike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = run_quick("mlp_zoo", tmp_path, monkeypatch)
    import mlp_zoo

    assert list(data["results"]) == mlp_zoo.QUICK
    n_test = len(mlp_zoo.load_mnist1d(0, 300)[3])  # the quick run's test split
    for r in data["results"].values():
        for sched in ("cosine", "step", "wsd"):
            correct = r[sched]["test_acc"] * n_test  # an accuracy over the whole test split: k / n_test
            assert abs(correct - round(correct)) < 1e-4 and 0 <= round(correct) <= n_test
    assert data["results"]["adam"]["cosine"]["test_acc"] > 0.1  # better than chance (10 classes)
    spike = run_quick("lr_spike", tmp_path, monkeypatch)
    assert len(spike["results"]) == 4 and all(math.isfinite(r["final"]) for r in spike["results"].values())


def test_cifar_loader_reads_python_batches(tmp_path: Path) -> None:
    import pickle

    import numpy as np

    import mlp_zoo

    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 20), ("data_batch_2", 12), ("test_batch", 8)):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}, f)
    x, y, xt, yt = mlp_zoo.load_cifar10(str(tmp_path), dim=16)
    assert x.shape == (32, 16) and xt.shape == (8, 16) and y.shape == (32,) and int(y.max()) < 10
    raw = torch.cat([torch.tensor(pickle.load(open(tmp_path / f"data_batch_{i}", "rb"))[b"data"]) for i in (1, 2)]).float() / 255
    z = (raw - raw.mean(0)) / (raw.std(0) + 1e-6)
    assert torch.all(x.norm(dim=1) <= z.norm(dim=1) + 1e-3)  # an orthonormal projection never lengthens a row
def test_lr_transfer_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    data = run_quick("lr_transfer_arch", tmp_path, monkeypatch, "--budgets", "both")
    assert data["config"]["budgets"] == "both"
    for kind in ("gpt2", "cnn"):
        res = data["results"][kind]
        for method in ("muon", "muadam"):
            assert set(res[method]) == {"budgets=false", "budgets=true"}
            for r in res[method].values():
                assert set(r["per_config"]) == set(res["configs"]) and len(res["configs"]) == 3
                for c in r["per_config"].values():
                    assert c["best_lr"] in r["lr_grid"] and math.isfinite(c["loss"])
                base, deeper, wider = (r["per_config"][c]["best_lr"] for c in res["configs"])
                assert r["depth_shift"] == round(math.log2(deeper / base)) and r["width_shift"] == round(math.log2(wider / base))
        assert len(res["step_time_vs_adamw"]) == 4
        for ratios in res["step_time_vs_adamw"].values():
            assert all(v > 0 and math.isfinite(v) for v in ratios.values())
    rows = [r for r in data["table"].splitlines() if r.startswith("| gpt2") or r.startswith("| cnn")]
    assert sorted(r.split("|")[3].strip() for r in rows if "step" not in r and "w=" not in r) == ["false"] * 4 + ["true"] * 4


def test_lr_transfer_arch_output_multiplier_models_sizes_and_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    arch = importlib.import_module("lr_transfer_arch")
    task = arch.Task("gpt2", 0, 32)
    torch.manual_seed(0)
    plain = arch.gpt2(1, 64)
    torch.manual_seed(0)
    scaled = task.model(1, 64, output_multiplier=True)
    assert scaled.lm_head.factor == 0.5 and scaled.lm_head.module.weight is scaled.transformer.wte.weight
    with torch.no_grad():
        torch.testing.assert_close(scaled(input_ids=task.test[:2]).logits, 0.5 * plain(input_ids=task.test[:2]).logits)
    assert arch.Task("cnn", 0, 4).model(1, 8, output_multiplier=True)[-1].factor == 0.5
    data = run_quick("lr_transfer_arch", tmp_path, monkeypatch, "--methods", "muon_out", "--models", "gpt2",
                     "--sizes", "base", "wider", "--seeds", "2", "--no-timing")
    res = data["results"]
    assert set(res) == {"gpt2"} and data["config"]["seeds"] == [0, 1] and res["gpt2"]["step_time_vs_adamw"] == {}
    r = res["gpt2"]["muon_out"]["budgets=false"]
    assert set(r["per_config"]) == {"L=1 w=32", "L=1 w=64"} and r["depth_shift"] == "—"
    assert r["width_shift"] == round(math.log2(r["per_config"]["L=1 w=64"]["best_lr"] / r["per_config"]["L=1 w=32"]["best_lr"]))
    row = next(line for line in data["table"].splitlines() if line.startswith("| gpt2"))
    assert row.split("|")[5].strip() == "—" and row.split("|")[7].strip() == "—"


def test_optimizer_step_quick_reports_every_row(tmp_path: Path) -> None:
    optimizer_step = importlib.import_module("optimizer_step")
    out = tmp_path / "step.json"
    result = optimizer_step.main(["--quick", "--import-repeats", "0", "--out", str(out)])  # imports: seconds each
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    measures = {r["measure"]: r["value"] for r in result["rows"]}
    peers = {"po.AdaMuon", "po.SOAP+AdamW", "po.Shampoo+AdamW"}
    for m, _, peer, _ in optimizer_step.RATIOS:
        assert (m in measures) == (optimizer_step.po is not None or peer not in peers), m
    for name in optimizer_step.RESNET[1:]:
        assert f"ResNet-18 step / torch AdamW step: {name}" in measures
    assert "import modnorm / import torch" not in measures
    assert any(m.startswith("peak step memory") for m in measures)
    assert all(math.isfinite(v) and v > 0 for v in measures.values())
    assert result["config"]["cpu"] and result["config"]["n_params"] == 2 * 256 * 64 + 2 * 12 * 64 * 64
    assert "| measure | value | target |" in optimizer_step.format_tables(result)


def test_optimizer_step_only_times_the_named_entries() -> None:
    optimizer_step = importlib.import_module("optimizer_step")
    result = optimizer_step.main(["--quick", "--only", "modnorm.soap,modnorm.shampoo", "--import-repeats", "0"])
    assert [e["optimizer"] for e in result["entries"]] == ["modnorm.soap", "modnorm.shampoo"]
    assert not result["resnet_ms"] and not any(r["measure"].startswith("ResNet") for r in result["rows"])
    assert {r["measure"] for r in result["rows"]} == {f"peak step memory beyond state, × parameter bytes: modnorm.{n}" for n in ("soap", "shampoo")}
    with pytest.raises(SystemExit, match="unknown entries"):
        optimizer_step.main(["--quick", "--only", "modnorm.nope"])


def test_peak_step_bytes_sees_a_known_temporary() -> None:

    optimizer_step = importlib.import_module("optimizer_step")
    x = torch.zeros(1000, 1000)
    n = x.numel() * 4

    def step() -> None:  # two temporaries of n bytes alive at once, then freed
        a = x + 1
        b = a * 2
        del a, b

    peak = optimizer_step.peak_step_bytes(step)
    assert 2 * n <= peak < 2 * n + 4096


def test_peak_step_bytes_counts_the_replaced_state_as_freed() -> None:
    """A step that replaces its state (the old tensor freed) and then makes a temporary of the same
    size peaks at one tensor beyond the state, not two (the profiler sees frees only of blocks it saw
    allocated: a lead-in step under it makes the state the measured step frees)."""
    optimizer_step = importlib.import_module("optimizer_step")
    n = 1000 * 1000 * 4
    state = {"x": torch.zeros(1000, 1000)}

    def step() -> None:
        state["x"] = torch.ones(1000, 1000)  # the new state; the old one is freed
        tmp = state["x"] * 2
        del tmp

    peak = optimizer_step.peak_step_bytes(step)
    assert n <= peak < n + 4096


def test_gpu_benchmark_skips_cleanly_without_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    gpu = importlib.import_module("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert "no CUDA device" in gpu.main(["--out", str(out)])["skipped"]
    assert "skipped" in json.loads(out.read_text())
    assert gpu.ns_flops(2, 3, 1) == 4 * 2 * 2 * 3 + 2 * 2**3 and gpu.ns_flops(3, 2, 2) == 2 * gpu.ns_flops(2, 3, 1)


def test_gpu_benchmark_runs_on_the_cpu_when_asked(tmp_path: Path) -> None:
    """``--device cpu --quick``: every row, the step times and each step's peak memory (profiler events)."""
    gpu = importlib.import_module("gpu")
    res = gpu.main(["--device", "cpu", "--quick", "--repeats", "2", "--out", str(tmp_path / "gpu.json")])
    assert set(res["peak_step_x_params"]) == {"torch.Muon+AdamW", "modnorm.muon", "modnorm.muadam"}
    assert all(0.0 < v < 10.0 for v in res["peak_step_x_params"].values())
    assert set(res["steps_ms"]) == {"fwd+bwd", *res["peak_step_x_params"]} and all(v > 0 for v in res["steps_ms"].values())
    assert json.loads((tmp_path / "gpu.json").read_text())["peak_step_x_params"] == res["peak_step_x_params"]


def test_lr_sweep_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import char_gpt

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join("to be or not to be that is the question " * 3 for _ in range(100)))
    script = str(BENCH / "char_gpt.py")
    data = run_quick("lr_sweep", tmp_path, monkeypatch, "--script", script, "--methods", "torch:adamw,torch:muon,muon", "--", "--data", str(corpus))
    res = data["results"]
    assert {len(r["lr_grid"]) for r in res.values()} == {2}  # equal grid size for every method
    for method, r in res.items():
        lr0 = char_gpt.METHODS[method]["lr"]
        grid = {float(k): v for k, v in r["lr_grid"].items()}
        assert sorted(grid) == pytest.approx([lr0, 2 * lr0])
        assert r["best"]["lr"] == min(grid, key=grid.__getitem__)  # the pick is the grid's argmin
        assert [f["seed"] for f in r["full"]] == [0, 1] and r["mean"] == pytest.approx(sum(f["score"] for f in r["full"]) / 2)
        assert all(math.isfinite(f["score"]) for f in r["full"])
    assert res["torch:adamw"]["route_key"] is None and res["torch:adamw"]["route_grid"] == {}
    assert res["torch:muon"]["route_key"] == "adamw_lr" and len(res["torch:muon"]["route_grid"]) == 2
    assert res["muon"]["route_key"] == "adamw_lr_ratio" and len(res["muon"]["route_grid"]) == 2
    # While the lr moves, a ratio-type route is rescaled so the route's own lr stays at its default.
    default_route = char_gpt.METHODS["muon"]["lr"] * char_gpt.METHODS["muon"]["adamw_lr_ratio"]
    runs = [json.loads(f.read_text())["results"]["muon"]["hyperparameters"] for f in sorted((tmp_path / "runs").glob("*/char_gpt.json"))
            if "muon" in json.loads(f.read_text())["results"]]
    firsts = [hp for hp in runs if hp["lr"] * hp["adamw_lr_ratio"] == pytest.approx(default_route)]
    assert len(firsts) >= 2 and len({hp["lr"] for hp in firsts}) == 2
    # Step 4: the ms / iter come from one interleaved timing run of every method at its best setting.
    timed = json.loads((tmp_path / "timing" / "char_gpt.json").read_text())["results"]
    for method, r in res.items():
        assert r["timed_interleaved"] and timed[method]["rounds"] == 2
        assert r["seconds_per_iter"] * 1000 == pytest.approx(timed[method]["median_ms_per_iter"]) and r["seconds_per_iter"] > 0
        assert timed[method]["hyperparameters"]["lr"] == r["best"]["lr"]
    # A finished sweep re-renders from its JSON (table with the equal-time column, plot).
    again = run_quick("lr_sweep", tmp_path / "again", monkeypatch, "--from-json", str(tmp_path / "lr_sweep.json"))
    assert again["results"].keys() == res.keys()
    table = (tmp_path / "again" / "lr_sweep.md").read_text()
    assert "Muon+AdamW (torch)'s time" in table and (tmp_path / "again" / "lr_sweep.png").is_file()
    # --resume reuses every finished run (same arguments); a run whose result is missing, or whose
    # folder holds another setting's result, runs again in a new folder.
    run_files = sorted((tmp_path / "runs").glob("*/char_gpt.json"))
    stamps = {f: f.stat().st_mtime_ns for f in run_files}
    run_files[-1].unlink()
    first = json.loads(run_files[0].read_text())
    run_files[0].write_text(json.dumps({**first, "command": first["command"].replace("--seed 0", "--seed 7")}))
    stamps[run_files[0]] = run_files[0].stat().st_mtime_ns
    argv = ["--resume", "--script", script, "--methods", "torch:adamw,torch:muon,muon", "--", "--data", str(corpus)]
    resumed = run_quick("lr_sweep", tmp_path, monkeypatch, *argv)
    assert {m: r["mean"] for m, r in resumed["results"].items()} == pytest.approx({m: r["mean"] for m, r in res.items()})
    assert all(f.stat().st_mtime_ns == stamps[f] for f in run_files[:-1])
    assert len(sorted((tmp_path / "runs").glob("*/char_gpt.json"))) == len(run_files) + 1  # two runs again, in new folders
    # --extend-edges: the quick grid's best is always at an edge, so one point is added beyond it
    extended = run_quick("lr_sweep", tmp_path, monkeypatch, "--extend-edges", "1", *argv)["results"]
    for method, r in extended.items():
        grid = sorted(float(k) for k in r["lr_grid"])
        lr0 = char_gpt.METHODS[method]["lr"]
        assert len(grid) == 3 and (grid == pytest.approx([lr0 / 2, lr0, 2 * lr0]) or grid == pytest.approx([lr0, 2 * lr0, 4 * lr0]))
        first_best = min((lr0, 2 * lr0), key=lambda v: r["lr_grid"][next(k for k in r["lr_grid"] if float(k) == pytest.approx(v))])
        assert (first_best == lr0) == (grid[0] == pytest.approx(lr0 / 2))  # extended beyond the edge that won


def test_lr_sweep_equal_time() -> None:
    """The loss at the reference's wall-clock, read off each validation curve by hand."""
    import lr_sweep

    def method(ms: float, curves: list[list[float]]) -> dict:
        return {"seconds_per_iter": ms / 1000, "full": [{"val_curve": {"iter": [100, 200, 300], "val_loss": c}} for c in curves]}

    results = {
        "torch:muon": method(10.0, [[3.0, 2.0, 1.0]]),  # budget: 300 iterations × 10 ms = 3 s
        "slow": method(20.0, [[4.0, 2.0, 1.0], [2.0, 1.0, 0.0]]),  # 150 iterations in 3 s: mean curve 3, 1.5 → 2.25
        "fast": method(5.0, [[2.0, 1.5, 1.25]]),  # finishes in 1.5 s: its final value, flagged
    }
    values = lr_sweep.equal_time(results, "torch:muon")
    assert values["torch:muon"] == (1.0, False)
    assert values["slow"][0] == pytest.approx(2.25) and not values["slow"][1]
    assert values["fast"] == (1.25, True)
    assert math.isnan(lr_sweep.equal_time({"ref": method(10.0, [[1.0, 1.0, 1.0]]), "x": method(100.0, [[1.0, 1.0, 1.0]])}, "ref")["x"][0])


def test_lr_sweep_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="--script"):
        run_quick("lr_sweep", tmp_path, monkeypatch, "--script", str(tmp_path / "nope.py"))
    with pytest.raises(SystemExit, match="unknown --methods"):
        run_quick("lr_sweep", tmp_path, monkeypatch, "--methods", "bogus")
    with pytest.raises(SystemExit, match="--from-json"):
        run_quick("lr_sweep", tmp_path, monkeypatch, "--from-json", str(tmp_path / "missing.json"))


def test_char_gpt_set_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import char_gpt

    assert char_gpt.parse_setting("muon.budgets=false") == ("muon", "budgets", False)
    assert char_gpt.parse_setting("torch:muon.adamw_betas=[0.9,0.95]") == ("torch:muon", "adamw_betas", (0.9, 0.95))
    assert char_gpt.parse_setting("muadam.scale=original") == ("muadam", "scale", "original")
    with pytest.raises(SystemExit, match="METHOD.KEY=VALUE"):
        char_gpt.parse_setting("nothing.lr=1")


def test_constant_lr_stability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import constant_lr_stability

    data = run_quick("constant_lr_stability", tmp_path, monkeypatch)
    assert set(data["results"]) == set(constant_lr_stability.SETTINGS)
    for r in data["results"].values():
        assert r["worst_over_start"] >= 1.0 and math.isfinite(r["final"]) and r["max_abs_weight"] > 0
