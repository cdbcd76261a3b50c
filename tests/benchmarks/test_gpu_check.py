"""benchmarks/gpu_check.py at toy sizes on the CPU: the code paths the H200 check runs."""

import importlib.util
import re
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def sections(text):
    """``{"a": body, ...}`` of the report's four parts."""
    parts = re.split(r"^## \(([abcd])\) ", text, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def table_numbers(body):
    """Numbers in the Markdown table rows of ``body``."""
    rows = [line for line in body.splitlines() if line.startswith("|") and "---" not in line]
    return [float(n.replace(",", "")) for row in rows
            for n in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", row)]


def test_toy_run_writes_every_section(gpu_check, tmp_path):
    out = tmp_path / "gpu.md"
    started = time.perf_counter()
    assert gpu_check.main(["--toy", "--device", "cpu", "--out", str(out),
                           "--workdir", str(tmp_path / "work")]) == 0
    elapsed = time.perf_counter() - started
    text = out.read_text()

    # the machine header
    for field in ("date (UTC)", "git commit", "device", "GPU", "torch", "CPU", "budget", "command"):
        assert f"| {field} |" in text, field
    assert "toy sizes" in text.splitlines()[0]

    found = sections(text)
    assert sorted(found) == ["a", "b", "c", "d"]
    for key, body in found.items():
        assert "Status: **done**" in body, (key, body[:2000])
        assert table_numbers(body), key

    # (a) three loaders with ratios against the baseline; (b) both loops and the data share
    assert "1.00×" in found["a"] and "packed loader" in found["a"]
    assert "PIL DataLoader loop" in found["b"] and "hundred (Trainer + BatchLoader)" in found["b"]
    assert re.search(r"\d+\.\d %", found["b"])  # data share of step time
    # (c) the probe, the plan, both methods, the verdict (one seed at toy sizes)
    assert "Plan." in found["c"] and "Chosen: 2 epochs per task, 1 seed(s)" in found["c"]
    assert re.search(r"\| probe \| replay \| 1 \| 1 \(0\) \| \d+\.\d\d \| \d+\.\d\d \|", found["c"])
    for method in ("replay", "wa"):
        assert re.search(rf"\| main \| {method} \| 2 \| 1 \(0\) \| \d+\.\d\d \| \d+\.\d\d \|",
                         found["c"]), method
    assert re.search(r"WA >= replay (held|did not hold)\*\* at 2 epochs per task", found["c"])
    # (d) a whole run's wall time and the projection
    assert "whole run, wall" in found["d"] and "projected whole run at 2 epochs" in found["d"]
    assert "## Budget" in text and "Total:" in text
    print(f"toy gpu_check: {elapsed:.1f} s")


def test_no_time_left_still_writes_the_report(gpu_check, tmp_path):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--toy", "--device", "cpu", "--budget-minutes", "0.1", "--out",
                           str(out), "--workdir", str(tmp_path / "work")]) == 0
    found = sections(out.read_text())
    assert sorted(found) == ["a", "b", "c", "d"]
    assert all("Status: **skipped: no time left**" in body for body in found.values())


def test_time_limit_interrupts(gpu_check):
    with pytest.raises(gpu_check.TimeUp):
        with gpu_check.time_limit(0.2):
            time.sleep(5)


def sleeper_pool(gpu_check, tmp_path):
    """A pool whose workers never finish a run (they sleep), to test stopping."""
    return gpu_check.Pool(tmp_path, command=[sys.executable, "-c", "import time; time.sleep(60)"])


def fake_run(gpu_check, tmp_path, method, seed):
    return gpu_check.Run(f"{method}{seed}", method, seed, 1, [], tmp_path / f"{method}{seed}",
                         tmp_path / "logs" / f"{method}{seed}.log")


def test_deadline_stops_a_run(gpu_check, tmp_path):
    pool = sleeper_pool(gpu_check, tmp_path)
    run = fake_run(gpu_check, tmp_path, "replay", 0)
    pool.launch([run], threads=1)
    gpu_check.wait_all(pool, [run], deadline=time.monotonic() + 0.5)
    assert run.killed == "cut for time" and run.returncode != 0 and run.wall < 10
    assert run.summary() is None and not run.worker.alive
    pool.close()


def test_extra_seeds_make_way_for_seed_0(gpu_check, tmp_path):
    pool = sleeper_pool(gpu_check, tmp_path)
    runs = [fake_run(gpu_check, tmp_path, m, k) for k in range(3) for m in ("replay", "wa")]
    pool.launch(runs, threads=1)
    assert len(pool.workers) == 6
    deadline = time.monotonic() + 100
    try:
        on_time = {0: deadline - 1}  # seed 0 on time, the others unknown: nothing stops
        assert gpu_check.stop_extra_seed(pool, runs, deadline, lambda r: on_time.get(r.seed)) \
            is None
        late = deadline + 1
        assert gpu_check.stop_extra_seed(pool, runs, deadline, lambda r: late) == 2
        assert [r.seed for r in runs if r.killed] == [2, 2]
        assert all(r.ended is None for r in runs if r.seed < 2)
        assert gpu_check.stop_extra_seed(pool, runs, deadline, lambda r: None) is None
    finally:
        for r in runs:
            pool.stop(r, "test over")
        pool.close()
    assert not any(w.alive for w in pool.workers)


def test_schedule_and_statistics(gpu_check):
    assert gpu_check.step_milestones(70) == [28, 42, 56]
    assert gpu_check.step_milestones(250) == [100, 150, 200]
    assert gpu_check.step_milestones(2) == [1] and gpu_check.step_milestones(1) == []
    assert gpu_check.fmt_stat([1.0, 3.0]) == "2.00 ± 1.41"
    assert gpu_check.fmt_stat([5.0]) == "5.00"
    # 10 tasks of 10 classes x 500 images, 2000 exemplars once the first task is done
    assert gpu_check.task_work([10] * 10, 500, 2000) == [5000] + [7000] * 9



def test_plan_for_c(gpu_check):
    per_epoch, overhead = {"replay": 4.0, "wa": 5.0}, {"replay": 10.0, "wa": 12.0}
    # 70 epochs: replay 290 s, wa 362 s per seed; 3 seeds (worst case) 1062 s
    assert gpu_check.plan_c(per_epoch, overhead, 2000.0, 70, 3) == (70, 3)
    assert gpu_check.plan_c(per_epoch, overhead, 800.0, 70, 3) == (70, 2)
    assert gpu_check.plan_c(per_epoch, overhead, 362.0, 70, 3) == (70, 1)
    # 70 do not fit: as many epochs as do, for the slower method, one seed
    assert gpu_check.plan_c(per_epoch, overhead, 300.0, 70, 3) == (57, 1)
    assert gpu_check.plan_c(per_epoch, overhead, 14.0, 70, 3)[0] < 1


def test_full_size_configs_validate(gpu_check, tmp_path):
    from hundred.config import build_config

    full = gpu_check.FULL
    config = build_config(overrides=gpu_check.c_overrides(full, tmp_path, tmp_path, "wa", 0, 70,
                                                          "cuda"))
    assert (config.train.epochs, config.schedule.milestones) == (70, [28, 42, 56])
    assert (config.model.name, config.incremental.scenario, config.incremental.memory,
            config.data.batch_size, config.train.amp) == ("resnet32", "B0-Inc10", 2000, 128, "off")
    config = build_config(overrides=gpu_check.d_overrides(full, tmp_path, tmp_path, "cuda"))
    assert (config.model.name, config.incremental.scenario) == ("resnet18_lowres", "B0-Inc10")
    assert (full.d_classes, full.d_train, full.d_res) == (100, 1300, 64)
    assert (full.c_classes, full.c_train, full.c_res, full.c_epochs) == (100, 500, 32, 70)
