"""The efficiency benchmarks' measurement worker and table builders (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from timm.layers import use_fused_attn

from vimtune.bench import allocator, exp_floor, measure, methods, prompt, resolution, runner, scan
from vimtune.bench.runner import write_results

MACHINE = {"cpu": "test CPU", "cores": 2, "memory_gib": 1.0, "torch": "x", "threads": 2, "bf16_matmul_isa": set()}


def _row(model: str, res: int, speed: float, mib: float, dtype: str = "float32", batch: int = 1) -> dict[str, Any]:
    return {"model": model, "resolution": res, "batch": batch, "dtype": dtype, "images_per_s": speed,
            "peak_extra_bytes": mib * 2**20}


def test_resolution_table_ratios_and_crossover() -> None:
    rows = [
        _row("vim", 224, 10.0, 100), _row("deit", 224, 20.0, 50), _row("deit_eager", 224, 18.0, 60),
        _row("vim", 1024, 2.0, 200), _row("deit", 1024, 1.0, 250), _row("deit_eager", 1024, 0.5, 800),
        _row("vim", 1024, 3.0, 150, dtype="bfloat16"), _row("deit", 1024, 1.5, 120, dtype="bfloat16"),
    ]
    table = resolution.to_markdown(rows, MACHINE, "vimtune bench resolution")
    line_1024 = next(line for line in table.splitlines() if line.startswith("| float32 | 1 | 1024 |"))
    cells = [c.strip() for c in line_1024.strip("|").split("|")]
    assert cells[5] == "2.00x"  # Vim/DeiT speed
    assert cells[8] == "0.80x"  # Vim/DeiT memory
    assert cells[11] == "4.00x" and cells[12] == "0.25x"  # against eager attention
    bf16 = next(line for line in table.splitlines() if line.startswith("| bfloat16 | 1 | 1024 |"))
    assert bf16.rstrip().endswith("| - | - | - | - |")  # eager DeiT is measured at float32 only
    assert "Vim faster than DeiT from 1024 px, lighter from 1024 px" in table
    assert "Vim faster than DeiT eager from 1024 px, lighter from 1024 px" in table


def test_resolution_memory_comes_from_a_live_memory_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed from the timed process; peak memory from a one-pass process with glibc returning freed blocks."""
    calls = []

    def fake_run(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        calls.append((spec, env))
        live = env == resolution.LIVE_MEMORY_ENV
        return {"seconds": 0.2, "images_per_s": 1.0 if live else 5.0, "peak_extra_bytes": 100 if live else 300}

    monkeypatch.setattr(resolution, "run_measurement", fake_run)
    rows = resolution.measure_all([224], [1], ["bfloat16"], repeats=3, threads=2, max_batch_pixels=0)
    assert [r["model"] for r in rows] == ["vim", "deit"]
    assert all(r["images_per_s"] == 5.0 and r["peak_extra_bytes"] == 100 and r["timed_peak_extra_bytes"] == 300
               for r in rows)
    assert [env for _, env in calls] == [None, None, resolution.LIVE_MEMORY_ENV, resolution.LIVE_MEMORY_ENV]
    timed, live = calls[0][0], calls[2][0]
    assert timed["repeats"] == 3 and live["repeats"] == 1 and live["warmup"] == 0


def test_resolution_rounds_keep_each_models_fastest_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """With rounds, the models are timed in turn every round; a slow round of one model does not count."""
    calls = []
    times = iter([0.9, 0.2, 0.3, 0.8])  # round 1: vim slow, deit fast; round 2: vim fast, deit slow

    def fake_run(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        calls.append((spec["model"], env))
        if env:
            return {"peak_extra_bytes": 100}
        seconds = next(times)
        return {"seconds": seconds, "images_per_s": 1 / seconds, "peak_extra_bytes": 300}

    monkeypatch.setattr(resolution, "run_measurement", fake_run)
    rows = resolution.measure_all([224], [1], ["bfloat16"], repeats=1, threads=2, max_batch_pixels=0, rounds=2)
    assert [(r["model"], r["seconds"], r["seconds_rounds"]) for r in rows] == [
        ("vim", 0.3, [0.9, 0.3]), ("deit", 0.2, [0.2, 0.8])]
    assert [env is None for _, env in calls] == [True, True, True, True, False, False]


def test_resolution_row_is_an_error_when_the_memory_process_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        return {"error": "exit 137: killed"} if env else {"seconds": 0.2, "images_per_s": 5.0, "peak_extra_bytes": 300}

    monkeypatch.setattr(resolution, "run_measurement", fake_run)
    rows = resolution.measure_all([224], [1], ["float32"], repeats=1, threads=2, max_batch_pixels=0)
    assert all(r["error"] == "exit 137: killed" for r in rows)


def test_resolution_crossover_reports_none_when_vim_never_wins() -> None:
    rows = [_row("vim", 224, 1.0, 300), _row("deit", 224, 2.0, 100)]
    assert "at none of the measured resolutions" in resolution.crossover_sentence(rows)


def test_methods_table_is_relative_to_full_and_backbone() -> None:
    mib = 2**20
    rows = [
        {"method": "backbone (no method)", "infer": {"seconds": 0.5}},
        {"method": "full", "train": {"seconds": 4.0, "peak_extra_bytes": 1000 * mib},
         "train_live_memory": {"peak_extra_bytes": 800 * mib}, "infer": {"seconds": 0.5}},
        {"method": "svp", "train": {"seconds": 3.0, "peak_extra_bytes": 900 * mib},
         "train_live_memory": {"peak_extra_bytes": 400 * mib}, "infer": {"seconds": 0.6}},
        {"method": "lora", "train": {"error": "exit 1: boom"}, "train_live_memory": {"error": "exit 1: boom"},
         "infer": {"seconds": 0.5}},
    ]
    table = methods.to_markdown(rows, MACHINE, "vimtune bench methods", batch=32)
    assert "| svp | 3.00 | 0.75x | 400 | 0.50x | 900 | 0.90x | 0.600 | 1.20x |" in table
    assert "| lora | error | - | - | - | - | - | 0.500 | 1.00x |" in table
    assert "| backbone (no method) | - | - | - | - | - | - | 0.500 | 1.00x |" in table


def test_methods_rounds_visit_every_method_in_turn_and_keep_the_fastest(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str | None, str]] = []
    train_seconds = iter([5.0, 4.0, 3.0, 4.5])  # round 0: full, svp; round 1: full, svp

    def fake_measurement(spec: dict, env: dict | None = None) -> dict:
        calls.append((spec.get("method"), spec["mode"] if env is None else "live"))
        if spec["mode"] == "train" and env is None:
            return {"seconds": next(train_seconds), "peak_extra_bytes": 1}
        return {"seconds": 1.0, "peak_extra_bytes": 1}

    monkeypatch.setattr(methods, "run_measurement", fake_measurement)
    rows = methods.measure_methods("m", 32, 4, ["full", "svp"], repeats=1, rounds=2, infer_batch=1,
                                   infer_repeats=1, num_classes=3)
    assert calls[:4] == [("full", "train"), ("svp", "train"), ("full", "train"), ("svp", "train")]
    by_name = {r["method"]: r for r in rows}
    assert by_name["full"]["train"]["seconds"] == 3.0 and by_name["svp"]["train"]["seconds"] == 4.0
    assert [r["seconds"] for r in by_name["svp"]["train_rounds"]] == [4.0, 4.5]
    assert "train" not in by_name["backbone (no method)"] and by_name["backbone (no method)"]["infer"]


def test_measure_builds_eager_attention_when_asked() -> None:
    spec = {"model": "deit_tiny_patch16_224", "model_kwargs": {"img_size": 32, "num_classes": 3}, "fused_attn": False}
    attention = [m for m in measure.build(spec).modules() if hasattr(m, "fused_attn")]
    assert attention and not any(m.fused_attn for m in attention)
    default = [m for m in measure.build(spec | {"fused_attn": None}).modules() if hasattr(m, "fused_attn")]
    assert default and all(m.fused_attn == use_fused_attn() for m in default)  # timm's own default, left alone


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_measure_reports_consistent_numbers(mode: str) -> None:
    spec = {"model": "vim_nano_patch4_32", "model_kwargs": {"num_classes": 4}, "method": "svp", "mode": mode,
            "batch": 2, "img_size": 32, "repeats": 2, "warmup": 1, "threads": 1}
    threads = torch.get_num_threads()
    try:
        result = measure.measure(spec)
    finally:
        torch.set_num_threads(threads)
    assert len(result["seconds_all"]) == 2 and result["seconds"] == min(result["seconds_all"]) > 0
    assert len(result["cpu_seconds_all"]) == 2 and result["cpu_seconds"] == min(result["cpu_seconds_all"]) > 0
    assert result["images_per_s"] == pytest.approx(2 / result["seconds"])
    assert result["peak_rss_bytes"] >= result["peak_extra_bytes"] >= 0
    assert result["minor_faults_per_step"] >= 0 and 0 <= result["kernel_cpu_share"] <= 1


def test_prompt_bench_times_both_implementations_in_turns_and_reports_the_speed_up() -> None:
    results = prompt.measure(batch=2, tokens=5, dim=4, repeats=3)
    assert set(results) == {"plain ops", "fused (PromptUpdate)"}
    for result in results.values():
        assert len(result["seconds_all"]) == 3 and result["seconds"] == min(result["seconds_all"]) > 0
    table = prompt.to_markdown({"plain ops": {"seconds": 0.04}, "fused (PromptUpdate)": {"seconds": 0.02}},
                               MACHINE, "vimtune bench prompt", (32, 197, 384))
    assert "| plain ops | 40.00 | 1.00x |" in table and "| fused (PromptUpdate) | 20.00 | 2.00x |" in table


def test_write_results_writes_both_files_named_by_cpu_with_sets_as_sorted_lists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    machine = MACHINE | {"cpu": "Intel(R) Xeon(R) Platinum 8480+", "isa": ["avx2", "avx512", "avx512_bf16", "amx_bf16"],
                         "bf16_matmul_isa": {"amx_bf16", "avx512_bf16"}}
    stem = write_results(tmp_path / "sub" / "bench", "| table |\n", machine, "vimtune bench x", rows=[1, 2])
    assert stem == tmp_path / "sub" / "bench.intel-xeon-platinum-8480-amx-bf16"
    assert (tmp_path / "sub" / "bench.intel-xeon-platinum-8480-amx-bf16.md").read_text() == "| table |\n"
    data = json.loads((tmp_path / "sub" / "bench.intel-xeon-platinum-8480-amx-bf16.json").read_text())
    assert data["machine"]["bf16_matmul_isa"] == ["amx_bf16", "avx512_bf16"]
    assert data["command"] == "vimtune bench x" and data["rows"] == [1, 2]
    assert "| table |" in capsys.readouterr().out
    # another CPU model writes beside it and leaves the first machine's files alone
    other = MACHINE | {"cpu": "AMD EPYC 9654 96-Core Processor", "isa": ["avx2", "avx512", "avx512_bf16"]}
    write_results(tmp_path / "sub" / "bench", "| other |\n", other, "vimtune bench x", rows=[3])
    assert (tmp_path / "sub" / "bench.amd-epyc-9654-avx512-bf16.md").read_text() == "| other |\n"
    assert (tmp_path / "sub" / "bench.intel-xeon-platinum-8480-amx-bf16.md").read_text() == "| table |\n"


def test_machine_line_names_the_cpu_model_its_numbers_and_isa() -> None:
    machine = MACHINE | {"cpu": "AMD EPYC", "cpu_id": "cpu family 25 model 1 stepping 1", "isa": ["avx2"]}
    line = runner.machine_line(machine)
    assert line.startswith("AMD EPYC (cpu family 25 model 1 stepping 1), ISA avx2, 2 cores")
    assert runner.cpu_slug(machine) == "amd-epyc-family25-model1-avx2"
    assert runner.cpu_slug(machine | {"cpu_id": ""}) == "amd-epyc-avx2"  # results from before the numbers
    assert runner.cpu_slug(MACHINE | {"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz", "isa": []}) == "intel-xeon-baseline"


def test_cpus_that_report_only_the_vendor_name_get_their_family_and_model_in_the_file_name() -> None:
    zen4 = MACHINE | {"cpu": "AMD EPYC", "cpu_id": "cpu family 25 model 17 stepping 1",
                      "isa": ["avx2", "avx512", "avx512_bf16"]}
    zen5 = zen4 | {"cpu_id": "cpu family 26 model 2 stepping 1"}
    assert runner.cpu_slug(zen4) == "amd-epyc-family25-model17-avx512-bf16"
    assert runner.cpu_slug(zen5) == "amd-epyc-family26-model2-avx512-bf16"
    named = zen4 | {"cpu": "AMD EPYC 9654 96-Core Processor"}  # a model number in the name is enough
    assert runner.cpu_slug(named) == "amd-epyc-9654-avx512-bf16"


def test_committed_results_are_named_by_the_cpu_they_were_measured_on() -> None:
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    measured = [path for path in results.glob("*.json") if not path.name.startswith("transfer")]
    assert measured, "no committed speed results"
    for path in measured:
        machine = json.loads(path.read_text())["machine"]
        assert path.name.split(".")[1] == runner.cpu_slug(machine), path.name


def test_allocator_bench_alternates_settings_and_tabulates_the_fastest_round(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        calls.append(env[allocator.SWITCH])
        kept = env[allocator.SWITCH] == "1"
        seconds = (1.0 if kept else 2.0) + 0.1 * (len(calls) > 2)  # the second round is slower
        steps = [seconds, seconds * 1.5, seconds * 3]  # the round's best, median and slowest step
        return {"seconds": seconds, "seconds_all": steps, "minor_faults_per_step": 10.0 if kept else 5000.0,
                "kernel_cpu_share": 0.02 if kept else 0.4, "peak_extra_bytes": (120 if kept else 100) * 2**20}

    monkeypatch.setattr(allocator, "run_measurement", fake_run)
    rows = allocator.measure_all({"w": {"model": "m"}}, rounds=2)
    assert calls == ["0", "1", "1", "0"]  # the settings take turns
    table = allocator.to_markdown(rows, MACHINE, "vimtune bench allocator", rounds=2)
    # the slowest round's median step: the second round's (2.1 s best, 3.15 s median; kept: 1.1, 1.65)
    assert "| w | 2.000 | 1.000 | 2.00x | 3.150 | 1.650 | 5,000 | 10 | 40% | 2% | 100 | 120 |" in table


def test_allocator_bench_marks_a_failed_workload() -> None:
    rows = [{"workload": "w", "glibc defaults": [{"error": "exit 1"}], "freed blocks kept": [{"error": "exit 1"}]}]
    assert "| w | error | error |" in allocator.to_markdown(rows, MACHINE, "vimtune bench allocator", rounds=1)


def test_exp_floor_runs_one_exp_per_state_update_and_records_the_fastest_call(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []

    def exp2(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        sizes.append(x.numel())
        return torch.exp2(x, out=out)

    small = exp_floor.ExpFloor((2, 4, 8, 16), exp2)
    small()
    assert sizes == [2 * 4 * 8 * 16] and small.calls == 1
    assert torch.equal(small.out, torch.exp2(small.x))
    sizes.clear()
    floor = exp_floor.ExpFloor((8, 384, 197, 16), exp2)
    floor()
    buffer = exp_floor.EXP_BUFFER
    assert set(sizes) == {buffer} and len(sizes) == floor.calls == -(-8 * 384 * 197 * 16 // buffer)
    timed = exp_floor.ExpFloor((8, 384, 197, 16), torch.exp2)
    times = iter([0.0, 3.0, 3.0, 4.0] + [10.0 * i for i in range(2 * timed.calls)])  # calls of 3 s, 1 s, then 10 s
    monkeypatch.setattr(exp_floor.time, "perf_counter", lambda: next(times))
    timed()
    assert timed.best_call_seconds == timed.calls * 1.0


def test_scan_bench_floors_compute_exp_and_exp2() -> None:
    """The floor named "exp floor" runs torch.exp and "exp2 floor" torch.exp2 (they differ on its values)."""
    for name, function in (("exp floor", torch.exp), ("exp2 floor", torch.exp2)):
        floor = exp_floor.ExpFloor((1, 2, 3, 4), scan.EXP_FLOORS[name])
        floor()
        assert torch.equal(floor.out, function(floor.x)), name


def test_scan_bench_times_the_models_time_major_kernel_on_time_major_inputs() -> None:
    from vimtune.ops.mixer_cpu import mixer_kernels_available

    if not mixer_kernels_available():
        pytest.skip("vimtune's C++ mixer kernels did not build here")
    plain, time_major = scan.make_inputs((2, 24, 7, 4), grad=True), scan.make_inputs((2, 24, 7, 4), grad=True,
                                                                                      time_major=True)
    for name, value in plain.items():
        assert torch.equal(time_major[name], value) and time_major[name].is_leaf, name
    assert time_major["u"].stride() == (7 * 24, 1, 24) and time_major["B"].stride() == (7 * 4, 1, 4)
    assert scan.check_accuracy(scan.backends(["mixer"]), (2, 24, 7, 4))["mixer"] < 1e-5
    rows = scan.run_scan_benchmark(["reference", "mixer"], ["tiny"], repeats=1, budget_s=0.05,
                                   memory_backends=("mixer",))
    timed = {(r["mode"], r["backend"]): r for r in rows}
    assert set(timed) == {(mode, name) for mode in scan.MODES for name in ("reference", "mixer", *scan.EXP_FLOORS)}
    assert all(timed[mode, "mixer"]["seconds"] > 0 for mode in scan.MODES)
    assert timed["fwd+bwd", "mixer"]["memory"]["input_bytes"] == 4 * (3 * 16 * 20 + 2 * 4 * 20 + 16 * 4 + 2 * 16)


def test_scan_table_gives_every_backend_as_a_multiple_of_each_exp_floor() -> None:
    def row(backend: str, mode: str, seconds: float) -> dict[str, Any]:
        return {"shape": "tiny-224", "mode": mode, "backend": backend, "seconds": seconds,
                "updates_per_s": 8 * 384 * 197 * 16 / seconds}

    rows = [row("exp floor", "forward", 0.010), row("exp2 floor", "forward", 0.003), row("reference", "forward", 0.200),
            row("cpu", "forward", 0.015), row("exp floor", "fwd+bwd", 0.020), row("exp2 floor", "fwd+bwd", 0.005),
            row("reference", "fwd+bwd", 0.500), row("cpu", "fwd+bwd", 0.090)]
    table = scan.to_markdown(rows, MACHINE | {"isa": ["avx2"]}, "vimtune bench scan", {}, "tiny-224")
    header = next(line for line in table.splitlines() if line.startswith("| shape"))
    assert header.endswith("| cpu Mupd/s | exp floor ms | exp2 floor ms | reference x exp | cpu x exp "
                           "| reference x exp2 | cpu x exp2 |")
    forward = next(line for line in table.splitlines() if "| forward |" in line)
    cells = [c.strip() for c in forward.strip("|").split("|")]
    assert cells[2:] == ["200.0", "15.0", "13.3", "646", "10.00", "3.00", "20.0", "1.5", "66.7", "5.0"]
    backward = next(line for line in table.splitlines() if "| fwd+bwd |" in line)
    assert backward.rstrip().endswith("| 20.00 | 5.00 | 25.0 | 4.5 | 100.0 | 18.0 |")


def test_conv_bench_table_gives_the_kernel_against_its_floor_and_the_reference() -> None:
    from vimtune.bench import conv

    rows = [{"shape": "tiny-224", "dtype": "float32", "mode": "forward", "kernel": 0.0005, "floor": 0.0002,
             "reference": 0.004}]
    table = conv.to_markdown(rows, MACHINE, "vimtune bench conv")
    assert "| tiny-224 (8, 197, 384) | float32 | forward | 0.50 | 0.20 | 2.5 | 4.00 | 8.0 |" in table


def test_step_bench_ratio_follows_the_chosen_clock() -> None:
    from vimtune.bench import step

    def row(dtype: str, model: str, wall: float, cpu: float) -> dict:
        return {"dtype": dtype, "model": model, "method": "m", "step": {"seconds": wall, "cpu_seconds": cpu}}

    rows = [row("float32", "vim", 6.0, 4.0), row("float32", "deit", 3.0, 1.0)]
    assert "| float32 | vim | m | 6.00 | 4.00 | 2.00x |" in step.to_markdown(rows, MACHINE, "c", "wall", 32, 224)
    assert "| float32 | vim | m | 6.00 | 4.00 | 4.00x |" in step.to_markdown(rows, MACHINE, "c", "cpu", 32, 224)


def test_step_bench_compares_within_each_cpu_matmul_choice() -> None:
    from vimtune.bench import step

    def row(matmul: str, model: str, wall: float) -> dict:
        return {"dtype": "float32", "cpu_matmul": matmul, "model": model, "method": "m",
                "step": {"seconds": wall, "cpu_seconds": wall}}

    rows = [row("torch", "vim", 6.0), row("torch", "deit", 3.0), row("onednn", "vim", 3.0), row("onednn", "deit", 2.0)]
    table = step.to_markdown(rows, MACHINE, "c", "wall", 8, 224, mode="infer")
    assert "| float32, torch linears | vim | m | 6.00 | 6.00 | 2.00x |" in table
    assert "| float32, onednn linears | vim | m | 3.00 | 3.00 | 1.50x |" in table
    assert "computed by torch's default (MKL) or by oneDNN" in table


def test_step_bench_rejects_a_malformed_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from vimtune.bench import step

    with pytest.raises(SystemExit):
        step.main(["--settings", "vim_small_patch16_224:"])
    assert "is not MODEL or MODEL:METHOD" in capsys.readouterr().err


def test_step_bench_breakdown_gives_the_ratio_without_the_kernels() -> None:
    from vimtune.bench import step

    def row(model: str, method: str, total: float, kernels: float) -> dict:
        split = {"matmul": total - kernels - 0.5, "kernels": kernels, "attention": 0.0, "other": 0.5, "total": total}
        return {"dtype": "float32", "model": model, "method": method,
                "step": {"seconds": total, "cpu_seconds": total, "breakdown": split}}

    rows = [row("vim", "svp", 6.0, 3.0), row("deit", "- (plain model)", 2.0, 0.0)]
    table = step.to_markdown(rows, MACHINE, "c", "wall", 8, 224, mode="infer")
    assert "One inference pass" in table
    assert "| float32 | vim | svp | 6.00 | 6.00 | 3.00x | 6.00 | 2.50 | 3.00 | 0.00 | 0.50 |" in table
    assert "vimtune's scan and conv kernels take 3.00 s; without them it would take 3.00 s, **1.50x**" in table


def test_profile_breakdown_puts_each_operator_in_its_group() -> None:
    """A real profiled call: a matmul, vimtune's conv kernel, fused attention and an exp land in their groups,
    and vimtune's RMSNorm kernel in ``other`` (where a DeiT's layer norm is)."""
    from vimtune.bench.breakdown import GROUPS, group_of, profile_breakdown
    from vimtune.ops.mixer_cpu import causal_conv1d_silu, mixer_kernels_available

    if not mixer_kernels_available():
        pytest.skip("vimtune's C++ mixer kernels did not build here")
    assert group_of("vimtune_norm_cpu::rms_norm_bwd") == group_of("vimtune_prompt_cpu::prompt_bwd") == "other"
    assert group_of("vimtune_scan_cpu::bwd") == group_of("vimtune_mixer_cpu::scan_fwd") == "kernels"
    x, weight, bias = torch.randn(2, 64, 32), torch.randn(32, 1, 4), torch.randn(32)
    q = torch.randn(1, 2, 64, 16)

    def step() -> None:
        for _ in range(5):
            torch.randn(128, 128) @ torch.randn(128, 128)
            causal_conv1d_silu(x, weight, bias)
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
            torch.exp(torch.randn(100_000))

    seconds = profile_breakdown(step)
    assert all(seconds[group] > 0 for group in GROUPS), seconds
    assert seconds["total"] == pytest.approx(sum(seconds[group] for group in GROUPS))
    assert set(seconds["kernel_ops"]) == {"vimtune_mixer_cpu::conv_fwd"}
    assert seconds["kernel_ops"]["vimtune_mixer_cpu::conv_fwd"] == pytest.approx(seconds["kernels"])
    no_kernels = profile_breakdown(lambda: torch.randn(64, 64) @ torch.randn(64, 64))
    assert no_kernels["kernels"] == 0 and no_kernels["attention"] == 0 and no_kernels["matmul"] > 0


def test_load_text_says_whether_other_work_shared_the_machine() -> None:
    quiet = runner.load_text({"threads": 2, "load_average_1min": [1.7, 1.8]})
    busy = runner.load_text({"threads": 1, "load_average_1min": [4.3, 4.6]})
    assert quiet == "1-min load average at start / end: 1.7 / 1.8 (no other work of note)"
    assert busy.endswith("(above the thread count: other work shared the machine)")
