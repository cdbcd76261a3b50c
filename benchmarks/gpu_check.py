"""GPU check (issue 10, part 2): one command, a time budget, one Markdown report.

Given a CUDA device, measures within ``--budget-minutes`` (8 by default) and writes
``--out`` (``docs/gpu.md`` by default):

(a) loader: hundred's packed loader against torchvision ``ImageFolder`` + PIL + ``DataLoader``
    at 64 px, images/s (``benchmarks/loader.py``);
(b) training: ResNet-18 at 64 px, hundred's loop (``Trainer`` + ``BatchLoader``) against the PIL
    ``DataLoader`` loop, images/s and the share of step time spent waiting for data
    (``benchmarks/train_step.py``);
(c) replay vs WA on synth100 (32 px, 500 images per class, resnet32, B0-Inc10, 2000
    exemplars, 70 epochs per task): average incremental and last accuracy, mean ± std over
    the seeds that fit, and whether WA >= replay held;
(d) the wall time of a whole 10-task B0-Inc10 run on ImageNet-100-shaped data (synth100,
    100 classes x 1,300 images at 64 px, ResNet-18).

The budget is enforced: the parts run in the order (a), (b), (d), (c); (a), (b) and (d) each
have a cap (8 %, 12 % and 15 % of the budget; in-process parts are interrupted by a timer,
runs in worker processes are stopped), and (c) gets what is left, less 8 s kept for writing
the report. (c) first times a probe (both methods, seed 0, one epoch per task, side by side)
and from it chooses what fits in 90 % of its time: 70 epochs per task and as many seeds (up
to ``--seeds``) as fit if k seeds side by side were k times as slow; or, when 70 epochs do not
fit, as many epochs as do, written down as a requirement not met with the budget it would
need. Extra seeds are stopped early if seed 0 is projected to miss the deadline; at the
deadline everything still running is stopped and reported as cut. The report is rewritten
after every part, so a check stopped from outside still leaves what it finished; parts that
were cut or skipped say so.

    python benchmarks/gpu_check.py --device cuda --budget-minutes 8 --out docs/gpu.md
    python benchmarks/gpu_check.py --toy --device cpu --out /tmp/gpu.md   # toy sizes (the test)

Whole runs ((c) and (d)) execute in worker processes of this script (``--worker -``, started
while (d) generates its data and reused from one run to the next), each through the public
API: ``build_config`` then ``get_track("incremental").run``; they are stopped by ending their
worker's process group. Nothing here changes the package: the numbers are what
``hundred run`` would do with the same settings.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "docs" / "gpu.md"
RESERVE_S = 8.0  # kept back at the end for killing stragglers and writing the report
PLAN_SAFETY = 0.9  # plan (c) to use at most this share of the time it has
CAPS = {"a": 0.08, "b": 0.12, "d": 0.15}  # shares of the whole budget; (c) gets the rest


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses; FULL is the issue's, TOY shrinks each for the test."""

    # (a) loader
    jpeg_classes: int
    jpeg_per_class: int
    jpeg_size: tuple[int, int]
    loader_res: int
    loader_epochs: int
    loader_batch: int
    loader_workers: int | None  # DataLoader workers (None: every core)
    # (b) training step
    step_cases: tuple[str, ...]
    step_classes: int
    step_steps: int
    step_warmup: int
    step_batch: int
    # (c) replay vs WA
    c_classes: int
    c_train: int
    c_val: int
    c_res: int
    c_model: str
    c_scenario: str
    c_memory: int
    c_epochs: int
    c_probe_epochs: int
    c_batch: int
    c_seeds: int
    # (d) a whole ImageNet-100-shaped run
    d_classes: int
    d_train: int
    d_val: int
    d_res: int
    d_model: str
    d_method: str
    d_scenario: str
    d_memory: int
    d_epochs: int
    d_batch: int


FULL = Sizes(
    jpeg_classes=32, jpeg_per_class=128, jpeg_size=(500, 375), loader_res=64, loader_epochs=3,
    loader_batch=128, loader_workers=None,
    step_cases=("resnet18_lowres@64", "resnet18@64"), step_classes=100, step_steps=200,
    step_warmup=20, step_batch=128,
    c_classes=100, c_train=500, c_val=100, c_res=32, c_model="resnet32", c_scenario="B0-Inc10",
    c_memory=2000, c_epochs=70, c_probe_epochs=1, c_batch=128, c_seeds=3,
    d_classes=100, d_train=1300, d_val=50, d_res=64, d_model="resnet18_lowres", d_method="wa",
    d_scenario="B0-Inc10", d_memory=2000, d_epochs=1, d_batch=128,
)

TOY = Sizes(
    jpeg_classes=2, jpeg_per_class=8, jpeg_size=(64, 48), loader_res=16, loader_epochs=1,
    loader_batch=8, loader_workers=1,
    step_cases=("resnet20@16",), step_classes=4, step_steps=2, step_warmup=1, step_batch=8,
    c_classes=4, c_train=8, c_val=4, c_res=8, c_model="resnet32", c_scenario="B0-Inc2",
    c_memory=4, c_epochs=2, c_probe_epochs=1, c_batch=4, c_seeds=1,
    d_classes=4, d_train=12, d_val=4, d_res=8, d_model="resnet20", d_method="wa",
    d_scenario="B0-Inc2", d_memory=4, d_epochs=1, d_batch=8,
)

# The training recipe of (c): configs/incremental/wa-cifar100.yaml (the WA paper's: SGD lr 0.1,
# momentum 0.9, weight decay 2e-4, batch 128, lr x0.1 at 100, 150 and 200 of 250 epochs),
# with the milestones at the same fractions of the epochs actually run; fp32 as the papers.
C_MILESTONE_FRACTIONS = (0.4, 0.6, 0.8)


def step_milestones(epochs: int) -> list[int]:
    """The WA recipe's milestones (100, 150, 200 of 250 epochs) scaled to ``epochs``."""
    return sorted({round(epochs * f) for f in C_MILESTONE_FRACTIONS} & set(range(1, epochs)))


def c_overrides(sizes: Sizes, data_dir: Path, root: Path, method: str, seed: int, epochs: int,
                device: str, extra: list[str] = ()) -> list[str]:
    milestones = ", ".join(str(m) for m in step_milestones(epochs))
    return [
        "track=incremental", f"method={method}", f"seed={seed}", f"name={method}-s{seed}-e{epochs}",
        f"root={root}", "quiet=true", f"data.source={data_dir}", f"data.batch_size={sizes.c_batch}",
        "data.augment=crop-flip", f"model.name={sizes.c_model}",
        f"incremental.scenario={sizes.c_scenario}", f"incremental.memory={sizes.c_memory}",
        "optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.9", "optim.weight_decay=2e-4",
        "schedule.name=step", f"schedule.milestones=[{milestones}]", "schedule.gamma=0.1",
        f"train.epochs={epochs}", "train.amp='off'", f"train.checkpoint_every={epochs}",
        f"train.device={device}", *extra,
    ]


def d_overrides(sizes: Sizes, data_dir: Path, root: Path, device: str) -> list[str]:
    return [
        "track=incremental", f"method={sizes.d_method}", "seed=0", f"name={sizes.d_method}-in100",
        f"root={root}", "quiet=true", f"data.source={data_dir}", f"data.batch_size={sizes.d_batch}",
        "data.augment=rrc-flip", f"model.name={sizes.d_model}",
        f"incremental.scenario={sizes.d_scenario}", f"incremental.memory={sizes.d_memory}",
        "optim.name=sgd", "optim.lr=0.1", "optim.weight_decay=5e-4", "schedule.name=cosine",
        f"train.epochs={sizes.d_epochs}", f"train.checkpoint_every={sizes.d_epochs}",
        f"train.device={device}",
    ]


# ----------------------------------------------------------------------------- time


class TimeUp(BaseException):
    """Raised by the part timer (a BaseException, so no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the body with :class:`TimeUp` after ``seconds`` (main thread only)."""
    if seconds <= 0:
        raise TimeUp()

    def fire(signum: int, frame: Any) -> None:
        raise TimeUp()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Clock:
    def __init__(self, seconds: float) -> None:
        self.total, self.start = seconds, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds left before the reserve kept for the report."""
        return self.total - RESERVE_S - self.elapsed()


# ----------------------------------------------------------------------------- report


@dataclass
class Section:
    key: str
    title: str
    status: str = "not run"
    body: list[str] = field(default_factory=list)
    seconds: float | None = None
    cap: float | None = None


class Report:
    def __init__(self, out: Path, header: list[str], sections: list[Section]) -> None:
        self.out, self.header, self.sections = out, header, sections
        self.footer: list[str] = []

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)

    def text(self) -> str:
        lines = list(self.header)
        for s in self.sections:
            lines += ["", f"## ({s.key}) {s.title}", "", f"Status: **{s.status}**"
                      + (f" ({fmt_s(s.seconds)})" if s.seconds is not None else "") + "."]
            if s.body:
                lines += [""] + s.body
        lines += ["", "## Budget", "",
                  "| part | cap | used | status |", "|---|---|---|---|"]
        for s in self.sections:
            cap = "the rest" if s.cap is None else fmt_s(s.cap)
            used = "–" if s.seconds is None else fmt_s(s.seconds)
            lines.append(f"| ({s.key}) {s.title} | {cap} | {used} | {s.status} |")
        lines += self.footer
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text(self.text())
        os.replace(partial, self.out)


def fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s"


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_stat(values: list[float]) -> str:
    from hundred.report.aggregate import Stat

    stat = Stat.of(values)
    if stat.mean is None:
        return "–"
    return f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if stat.std is not None else "")


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(row) + " |" for row in rows])


# ----------------------------------------------------------------------------- machine


def _run_text(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_header(device: Any, args: argparse.Namespace, argv: list[str]) -> list[str]:
    import numpy
    import timm
    import torch
    import torchvision

    import hundred
    from hundred.engine.rundir import git_commit

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
        driver = _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if driver:
            gpu += f", driver {driver.splitlines()[0]}"
    else:
        gpu = "none (CPU run)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "–"
    commit = args.commit or git_commit() or "unknown (no git metadata; pass --commit)"
    command = "python benchmarks/gpu_check.py " + " ".join(shlex.quote(a) for a in argv)
    rows = [
        ["date (UTC)", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")],
        ["git commit", f"`{commit}`"],
        ["device", f"`{device}`"],
        ["GPU", gpu],
        ["torch", f"{torch.__version__} (CUDA {torch.version.cuda or '–'}, cuDNN {cudnn})"],
        ["torchvision / timm / numpy", f"{torchvision.__version__} / {timm.__version__} / "
                                       f"{numpy.__version__}"],
        ["hundred", hundred.__version__],
        ["python", f"{platform.python_version()} on {platform.platform()}"],
        ["CPU", f"{cpu or platform.processor() or 'unknown'}, {os.cpu_count()} cores"],
        ["RAM", f"{ram:.0f} GiB" if ram else "unknown"],
        ["budget", f"{args.budget_minutes:g} min" + (" (toy sizes)" if args.toy else "")],
        ["command", f"`{command}`"],
    ]
    title = "# GPU check" + (" (toy sizes: a test of the code paths, not a measurement)"
                             if args.toy else "")
    return [title, "", "Written by `benchmarks/gpu_check.py` (issue 10, part 2). Back to "
            "[speed.md](speed.md).", "", *table(["machine", ""], rows)]


# ----------------------------------------------------------------------------- helpers


def load_benchmark(name: str) -> Any:
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    module_name = f"_hundred_benchmark_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def synth(classes: int, train: int, val: int, res: int) -> Any:
    from hundred.data.sources import open_source

    return open_source("synth100", classes=classes, train_per_class=train, val_per_class=val,
                       res=res)


def pack_synth(out: Path, classes: int, train: int, val: int, res: int) -> tuple[float, float]:
    """Generate synth100 and pack it to ``out``; returns (generate seconds, pack seconds)."""
    from hundred.data.pack import pack

    started = time.perf_counter()
    dataset = synth(classes, train, val, res)
    generated = time.perf_counter()
    pack(dataset, out=out, res=res, quiet=True, force=True)
    return generated - started, time.perf_counter() - generated


def task_work(sizes_of_tasks: list[int], per_class: int, memory: int) -> list[int]:
    """Training images per epoch of each task (task data plus a full memory)."""
    work, seen = [], 0
    for size in sizes_of_tasks:
        work.append(size * per_class + (min(memory, seen * per_class) if seen else 0))
        seen += size
    return work


# ----------------------------------------------------------------------------- subprocess runs


@dataclass
class Run:
    """One whole run, executed by a worker process of :class:`Pool`."""

    label: str
    method: str
    seed: int
    epochs: int
    overrides: list[str]
    run_dir: Path
    log: Path
    worker: "Worker | None" = None
    fresh_worker: bool = False  # its worker started for it (wall includes python/torch/CUDA)
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    killed: str | None = None  # why it was stopped

    @property
    def status_file(self) -> Path:
        return self.log.with_suffix(".status.json")

    @property
    def wall(self) -> float | None:
        return None if self.ended is None else self.ended - self.started

    def summary(self) -> dict[str, Any] | None:
        path = self.run_dir / "summary.json"
        return json.loads(path.read_text()) if path.is_file() and self.returncode == 0 else None

    def epoch_records(self) -> list[list[dict[str, Any]]]:
        """Per task begun, the trainer's per-epoch records (``seconds``, ``images_per_s`` ...).
        Read while the run writes them: a line still being written is left out."""
        tasks = sorted((self.run_dir / "tasks").glob("task-*")) if self.run_dir.is_dir() else []
        records = []
        for task in tasks:
            lines = []
            with contextlib.suppress(OSError):
                for line in (task / "metrics.jsonl").read_text().splitlines():
                    with contextlib.suppress(ValueError):
                        lines.append(json.loads(line))
            records.append(lines)
        return records

    def done_tasks(self) -> list[dict[str, Any]]:
        """The records of the finished tasks (``done.json``, written atomically)."""
        tasks = sorted((self.run_dir / "tasks").glob("task-*/done.json")) \
            if self.run_dir.is_dir() else []
        done = []
        for path in tasks:
            with contextlib.suppress(OSError, ValueError):
                done.append(json.loads(path.read_text()))
        return done

    def train_seconds(self) -> float:
        return sum(r["seconds"] for task in self.epoch_records() for r in task)

    def tail(self, lines: int = 8) -> str:
        text = ""
        for path in (self.log, self.worker.log if self.worker else None):
            with contextlib.suppress(OSError, AttributeError):
                text = path.read_text(errors="replace").strip() or text
        return "\n".join(text.splitlines()[-lines:])


def new_run(label: str, method: str, seed: int, epochs: int, overrides: list[str],
            workdir: Path) -> Run:
    from hundred.config import build_config

    config = build_config(overrides=overrides)  # a bad override fails here, not in a worker
    run_dir = Path(config.root) / config.track / config.method / str(config.name)
    return Run(label, method, seed, epochs, overrides, run_dir, workdir / "logs" / f"{label}.log")


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    run: Run | None = None

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def ready_file(self) -> Path:
        return self.log.with_suffix(".ready")

    def startup_seconds(self) -> float | None:
        """From spawning to ready for a first run (python, torch, hundred, CUDA context)."""
        with contextlib.suppress(OSError, ValueError):
            return float(self.ready_file.read_text())
        return None


class Pool:
    """Worker processes of this script (``--worker -``) that execute whole runs one after
    another, each run in a process of its own group: python, torch and CUDA start once per
    worker, and a run that must stop is stopped by ending its worker."""

    def __init__(self, workdir: Path, device: str = "cpu",
                 command: list[str] | None = None) -> None:
        self.workdir, self.device, self.command = workdir, device, command
        self.workers: list[Worker] = []
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def prespawn(self, count: int, threads: int) -> None:
        """Start workers now, so that they import torch while other work goes on."""
        idle = sum(1 for w in self.workers if w.run is None and w.alive)
        for _ in range(count - idle):
            self._spawn(threads)

    def _spawn(self, threads: int) -> Worker:
        log = self.workdir / "logs" / f"worker-{len(self.workers)}.log"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   PYTHONUNBUFFERED="1", HUNDRED_GPU_CHECK_SPAWNED=repr(time.time()))
        command = self.command or [
            sys.executable, str(Path(__file__).resolve()), "--worker", "-", "--device",
            self.device, "--ready", str(log.with_suffix(".ready"))]
        with open(log, "w") as handle:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=handle,
                                    stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
                                    text=True, start_new_session=True)
        worker = Worker(proc, log)
        self.workers.append(worker)
        return worker

    def launch(self, runs: list[Run], threads: int) -> None:
        """Start ``runs`` now, side by side, each on an idle worker or a new one."""
        for run in runs:
            worker = next((w for w in self.workers if w.run is None and w.alive), None)
            run.fresh_worker = worker is None
            worker = worker or self._spawn(threads)
            run.status_file.unlink(missing_ok=True)
            spec = {"overrides": run.overrides, "threads": threads, "log": str(run.log),
                    "status": str(run.status_file)}
            worker.run, run.worker, run.started = run, worker, time.monotonic()
            with contextlib.suppress(OSError):  # a dead worker: poll() reports the run failed
                worker.proc.stdin.write(json.dumps(spec) + "\n")
                worker.proc.stdin.flush()

    def poll(self, run: Run) -> bool:
        """Whether ``run`` has ended (and if so, its return code is set)."""
        if run.ended is not None:
            return True
        if run.status_file.is_file():
            run.returncode = int(json.loads(run.status_file.read_text())["rc"])
        elif run.worker is not None and not run.worker.alive:
            run.returncode = run.worker.proc.returncode or -1
        else:
            return False
        run.ended = time.monotonic()
        if run.worker is not None:
            run.worker.run = None
        return True

    def stop(self, run: Run, why: str) -> None:
        """Stop ``run`` by ending its worker (a process group this script started)."""
        if self.poll(run) or run.worker is None:
            return
        _end_group(run.worker.proc)
        run.killed, run.ended = why, time.monotonic()
        run.returncode = run.worker.proc.returncode
        run.worker.run = None

    def close(self) -> None:
        """End every worker: idle ones get the end of their input, then all are stopped."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.proc.stdin.close()
        for worker in self.workers:
            try:
                worker.proc.wait(timeout=2 if worker.run is None else 0.1)
            except subprocess.TimeoutExpired:
                _end_group(worker.proc)


def _end_group(proc: subprocess.Popen) -> None:
    """TERM, then KILL, the process group of ``proc`` (started with start_new_session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_all(pool: Pool, runs: list[Run], deadline: float,
             check: Callable[[list[Run]], None] | None = None) -> None:
    """Wait until every run ended or ``deadline`` (monotonic) passed; then stop the rest.
    ``check`` is called every poll to stop runs early (e.g. extra seeds that do not fit)."""
    try:
        while True:
            live = [run for run in runs if not pool.poll(run)]
            if not live:
                return
            if time.monotonic() >= deadline:
                for run in live:
                    pool.stop(run, "cut for time")
                return
            if check is not None:
                check(runs)
            time.sleep(0.25)
    except BaseException:
        for run in runs:
            pool.stop(run, "interrupted")
        raise


def stop_extra_seed(pool: Pool, runs: list[Run], deadline: float,
                    projected_end: Callable[[Run], float | None]) -> int | None:
    """While a run of seed 0 is projected to end after ``deadline``, stop both runs of the
    highest other seed still running (they share the device with it); returns that seed."""
    extra = sorted({r.seed for r in runs if r.seed > 0 and not pool.poll(r)})
    if not extra:
        return None
    ends = [projected_end(r) for r in runs if r.seed == 0 and not pool.poll(r)]
    if not any(end is not None and end > deadline for end in ends):
        return None
    for run in runs:
        if run.seed == extra[-1]:
            pool.stop(run, "stopped early so that seed 0 finishes in time")
    return extra[-1]


def worker(source: str, device: str | None, ready: Path | None = None) -> int:
    """The worker side of :class:`Pool`: for each JSON line of ``source`` (``-``: stdin), one
    whole run through the public API, ``build_config`` then the track's ``run`` (which writes
    ``summary.json`` into its run directory); then its status file, ``{"rc": 0 or 1}``.
    Before the first, it imports what runs need and opens the CUDA context, and writes the
    seconds since it was spawned to ``ready``."""
    import torch

    for name in ("timm", "hundred.tracks.incremental.scenario"):  # what every run imports
        importlib.import_module(name)
    from hundred.config import build_config
    from hundred.registry import get_track

    parent = os.getppid()

    def orphaned() -> None:  # the check was killed: do not train on for nobody
        while True:
            time.sleep(1)
            if os.getppid() != parent:
                os._exit(1)

    import threading

    threading.Thread(target=orphaned, daemon=True).start()
    if device and device.startswith("cuda"):
        torch.zeros(1, device=device)
    spawned = os.environ.get("HUNDRED_GPU_CHECK_SPAWNED")
    if ready is not None and spawned:
        ready.write_text(f"{time.time() - float(spawned):.3f}")
    lines = sys.stdin if source == "-" else open(source)
    for line in lines:
        if not line.strip():
            continue
        spec = json.loads(line)
        torch.set_num_threads(int(spec["threads"]))
        rc = 0
        with open(spec["log"], "w") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            try:
                config = build_config(overrides=spec["overrides"])
                get_track(config.track).run(config)
            except Exception:
                traceback.print_exc()
                rc = 1
        status = Path(spec["status"])
        partial = status.with_name(status.name + ".partial")
        partial.write_text(json.dumps({"rc": rc}))
        os.replace(partial, status)
    return 0


# ----------------------------------------------------------------------------- (a) loader


def part_a(ctx: "Context", section: Section) -> None:
    import torch

    bench = load_benchmark("loader")
    s, device = ctx.sizes, ctx.device
    root = ctx.workdir / "jpeg"
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    train_images = bench.make_jpeg_tree(root, s.jpeg_classes, s.jpeg_per_class, s.jpeg_size,
                                        workers=min(16, os.cpu_count() or 1))
    generated = time.perf_counter() - started
    total_images = sum(1 for _ in root.rglob("*.jpg"))
    res, pack_res = s.loader_res, s.loader_res + s.loader_res // 8
    workers = s.loader_workers or os.cpu_count() or 1
    pack_rate = bench.pack_rate(root, ctx.workdir / f"packed{pack_res}", pack_res, True,
                                total_images)
    baseline = bench.imagefolder_rate(root, res, s.loader_batch, workers, s.loader_epochs, device)
    resident, was_resident = bench.packed_rate(ctx.workdir / f"packed{pack_res}", res,
                                               s.loader_batch, s.loader_epochs, device, None)
    streamed, _ = bench.packed_rate(ctx.workdir / f"packed{pack_res}", res, s.loader_batch,
                                    s.loader_epochs, device, False)
    mode = f"resident on `{device}`" if was_resident else "streamed"
    w, h = s.jpeg_size
    section.body += [
        f"Settings: {train_images:,} training JPEGs of {w}×{h} ({s.jpeg_classes} classes × "
        f"{s.jpeg_per_class}; generated in {fmt_s(generated)}), random-resized-crop + flip to "
        f"{res} px, batch {s.loader_batch}, one warm-up epoch then {s.loader_epochs} timed "
        f"epochs, batches moved to `{device}` (as `python benchmarks/loader.py --res {res} "
        f"--device {device.type} --epochs {s.loader_epochs} --workers {workers}`). torch threads "
        f"{torch.get_num_threads()}.",
        "",
        *table(["loader", "images/s", "vs ImageFolder"], [
            [f"ImageFolder + PIL + DataLoader ({workers} workers), the baseline",
             fmt_rate(baseline), "1.00×"],
            [f"hundred packed loader ({mode})", fmt_rate(resident), f"{resident / baseline:.2f}×"],
            ["hundred packed loader (streamed from the memory map)", fmt_rate(streamed),
             f"{streamed / baseline:.2f}×"],
        ]),
        "",
        f"Packing the tree once at {pack_res} px (JPEG draft mode, {os.cpu_count()} processes): "
        f"{fmt_rate(pack_rate)} images/s.",
    ]
    ctx.results["a"] = {"baseline": baseline, "resident": resident, "streamed": streamed,
                        "pack": pack_rate}


# ----------------------------------------------------------------------------- (b) training


def part_b(ctx: "Context", section: Section) -> None:
    import torch

    from hundred.models import create

    bench = load_benchmark("train_step")
    s, device = ctx.sizes, ctx.device
    on_cuda = device.type == "cuda"
    per_class = max(8, (s.step_steps + s.step_warmup) * s.step_batch // s.step_classes + 1)
    section.body += [
        f"Settings: synth100 ({s.step_classes} classes × {per_class} training images), batch "
        f"{s.step_batch}, SGD, cross-entropy, random-resized-crop + flip (crop + flip at 32 px and "
        f"below). The PIL loop (`benchmarks/train_step.py`'s reference: PIL transforms in a "
        f"`Dataset`, `DataLoader` with {os.cpu_count()} workers, pinned memory) runs "
        f"{s.step_warmup} warm-up and {s.step_steps} timed steps; hundred's loop (`Trainer` + "
        f"`BatchLoader`, data resident on the device, augmentation batched there) runs one "
        f"warm-up pass and about {s.step_steps} timed steps. hundred trains in bf16 autocast "
        f"with channels_last on CUDA (its default), so the PIL loop is timed both that way (the "
        f"baseline for the ratio) and in fp32 (as most seed repositories run it)."
        if on_cuda else
        f"Settings: as on CUDA, in fp32 on `{device}` (bf16 and channels_last apply on CUDA only).",
        "",
        "Data share: the same number of steps again with `torch.cuda.synchronize()` before and "
        "after fetching each batch (and moving it to the device); share = time waiting for "
        "the batch / total step time over those steps (the timed steps above run unsynchronised).",
        "",
    ]
    rows: list[list[str]] = []
    start = len(section.body)  # the table, rewritten after each measurement
    data_cache: dict[int, Any] = {}
    results = ctx.results.setdefault("b", {})
    for case in s.step_cases:
        name, res = case.split("@")
        res = int(res)
        if res not in data_cache:
            data_cache[res] = synth(s.step_classes, per_class, 1, res).arrays("train")
        split = data_cache[res]
        measures: list[tuple[str, str, Callable[..., dict]]] = []
        if on_cuda:
            measures.append(("PIL DataLoader loop", "bf16, channels_last",
                             lambda *a: bench.reference_measure(
                                 *a, bf16=True, channels_last=True, data_share=True)))
        measures.append(("PIL DataLoader loop", "fp32",
                         lambda *a: bench.reference_measure(*a, data_share=True)))
        measures.append(("hundred (Trainer + BatchLoader)", "bf16, channels_last" if on_cuda
                         else "fp32", lambda *a: bench.hundred_measure(*a, data_share=True)))
        baseline = None
        for loop, precision, measure in measures:
            torch.manual_seed(0)
            model = create(name, s.step_classes, img_size=res)
            result = measure(model, split.images, split.labels, res, s.step_batch, s.step_steps,
                             s.step_warmup, device)
            rate = result["images_per_s"]
            baseline = baseline or rate
            results[f"{case} {loop} {precision}"] = result
            share = result["data_share"]
            rows.append([f"{name} @ {res}", loop, precision, fmt_rate(rate),
                         f"{rate / baseline:.2f}×",
                         "–" if share is None else f"{100 * share:.1f} %"])
            del model
            if on_cuda:
                torch.cuda.empty_cache()
            section.body[start:] = table(["model @ px", "loop", "precision", "images/s",
                                          "vs the model's first row", "data share of step time"],
                                         rows)


# ----------------------------------------------------------------------------- (d) whole run


def epoch_split(records: list[list[dict[str, Any]]]) -> tuple[float, float, float]:
    """(training seconds, first epochs' seconds, mean seconds of one later epoch, all tasks)."""
    train = sum(r["seconds"] for task in records for r in task)
    first = sum(task[0]["seconds"] for task in records if task)
    later = sum((sum(r["seconds"] for r in task[1:]) / len(task[1:])) if len(task) > 1
                else task[0]["seconds"] for task in records if task)
    return train, first, later


def part_d(ctx: "Context", section: Section, deadline: float) -> None:
    from hundred.tracks.incremental.scenario import task_sizes

    s = ctx.sizes
    data_dir = ctx.workdir / f"synth100-{s.d_res}px-{s.d_train}"
    generate_s, pack_s = pack_synth(data_dir, s.d_classes, s.d_train, s.d_val, s.d_res)
    overrides = d_overrides(s, data_dir, ctx.workdir / "runs-d", str(ctx.device))
    run = new_run("d", s.d_method, 0, s.d_epochs, overrides, ctx.workdir)
    sizes_of_tasks = task_sizes(s.d_scenario, s.d_classes)
    work = task_work(sizes_of_tasks, s.d_train, s.d_memory)
    section.body += [
        f"Settings: synth100 generated at {s.d_res} px with {s.d_classes} classes × "
        f"{s.d_train:,} training and {s.d_val} validation images (ImageNet-100's shape; "
        f"{fmt_s(generate_s)} to generate, {fmt_s(pack_s)} to pack, neither counted below), "
        f"`{s.d_method}` with `{s.d_model}`, {s.d_scenario} ({len(sizes_of_tasks)} tasks), "
        f"{s.d_memory} exemplars (herding), batch {s.d_batch}, {s.d_epochs} epoch(s) per task, "
        f"hundred's defaults otherwise (bf16 autocast and channels_last on CUDA). One run in a "
        f"worker process, alone on the device:",
        "",
        "```",
        f"# DATA = hundred.data.pack.pack(synth100 with classes={s.d_classes}, "
        f"train_per_class={s.d_train}, val_per_class={s.d_val}, res={s.d_res}, seed=0)",
        "build_config(overrides=" + json.dumps(
            [o.replace(str(data_dir), "DATA").replace(str(ctx.workdir / "runs-d"), "ROOT")
             for o in overrides]) + ")",
        "```",
    ]
    ctx.pool.launch([run], threads=ctx.threads(1))
    wait_all(ctx.pool, [run], deadline)
    records = run.epoch_records()
    summary = run.summary()
    if summary is None:
        done = len(run.done_tasks())
        section.status = ("cut for time" if run.killed else f"failed (exit {run.returncode})")
        section.body += ["", f"The run did not finish ({run.killed or 'error'}): {done} of "
                         f"{len(sizes_of_tasks)} tasks done after {fmt_s(run.wall or 0)}."]
        if any(records):
            trained = sum(len(task) * work[i] for i, task in enumerate(records))
            seconds = sum(r["seconds"] for task in records for r in task)
            section.body += ["", f"Epochs finished by then: {sum(map(len, records))}, "
                             f"{fmt_s(seconds)} of training at {fmt_rate(trained / seconds)} "
                             f"images/s (tasks {len(records)} of {len(work)} begun)."]
        if not run.killed:
            section.body += ["", "```", run.tail(), "```"]
        return
    train, first, later = epoch_split(records)
    overhead = summary["wall_seconds"] - train
    target = ctx.c_target_epochs
    projected = overhead + first + (target - 1) * later
    images = sum(work) * s.d_epochs
    epoch_label = ("one epoch of every task" if s.d_epochs == 1
                   else "one epoch of every task (mean of the epochs after the first)")
    section.body += [
        "",
        *table(["measured", ""], [
            ["whole run, wall (`wall_seconds` of the summary)", fmt_s(summary["wall_seconds"])],
            ["the same as the worker process saw it (run submitted → summary written)",
             fmt_s(run.wall)],
            ["starting a worker process (python, torch, hundred, CUDA context), paid once per "
             "process" + (", before the run" if not run.fresh_worker else ", within the row above"),
             fmt_s(run.worker.startup_seconds()) if run.worker.startup_seconds() else "–"],
            ["training epochs (all tasks)",
             f"{fmt_s(train)} ({fmt_rate(images / train)} images/s)"],
            ["everything else: data loading, evaluation, herding, checkpoints",
             fmt_s(overhead)],
            [epoch_label, fmt_s(later)],
            [f"projected whole run at {target} epochs per task", fmt_s(projected)],
        ]),
        "",
        f"The projection: the measured run plus {target - s.d_epochs} more epochs per task at "
        f"the measured speed (the same method and model as measured; other methods differ by "
        f"their extra forward passes). Accuracy after {s.d_epochs} epoch(s) per "
        f"task (not a result): average incremental "
        f"{summary['avg_incremental_accuracy']:.2f} %, last {summary['last_accuracy']:.2f} %.",
    ]
    ctx.results["d"] = {"wall": summary["wall_seconds"], "process_wall": run.wall,
                        "train": train, "later_epoch": later, "projected": projected,
                        "generate": generate_s, "pack": pack_s}


# ----------------------------------------------------------------------------- (c) replay vs WA


def predict_wall(per_epoch: dict[str, float], overhead: dict[str, float], epochs: int,
                 seeds: int) -> float:
    """Wall time of the slowest method's run, from the probe: its fixed cost plus ``epochs``
    epochs of every task, assuming the worst case that k seeds side by side make every epoch
    k times as slow (a device already busy with one seed)."""
    return max(overhead[m] + epochs * per_epoch[m] * seeds for m in per_epoch)


def plan_c(per_epoch: dict[str, float], overhead: dict[str, float], usable: float, target: int,
           max_seeds: int) -> tuple[int, int]:
    """(epochs per task, seeds) for (c): ``target`` epochs and the most seeds that fit in
    ``usable`` seconds; if ``target`` epochs do not fit even for one seed, the most epochs
    that do (possibly < 1: nothing fits), one seed."""
    if predict_wall(per_epoch, overhead, target, 1) <= usable:
        return target, max(k for k in range(1, max_seeds + 1)
                           if k == 1 or predict_wall(per_epoch, overhead, target, k) <= usable)
    epochs = math.floor(min((usable - overhead[m]) / per_epoch[m] for m in per_epoch))
    return min(epochs, target - 1), 1


def part_c(ctx: "Context", section: Section, deadline: float) -> None:
    from hundred.tracks.incremental.scenario import task_sizes

    s = ctx.sizes
    data_dir = ctx.workdir / f"synth100-{s.c_res}px-{s.c_train}"
    generate_s, pack_s = pack_synth(data_dir, s.c_classes, s.c_train, s.c_val, s.c_res)
    device = str(ctx.device)
    methods = ("replay", "wa")
    sizes_of_tasks = task_sizes(s.c_scenario, s.c_classes)
    work = task_work(sizes_of_tasks, s.c_train, s.c_memory)
    target = ctx.c_target_epochs
    example = c_overrides(s, Path("DATA"), Path("ROOT"), "wa", 0, target, device, ctx.c_extra)
    section.body += [
        f"Settings: synth100 ({s.c_classes} classes, {s.c_train} training and {s.c_val} "
        f"validation images per class, {s.c_res} px, generated in {fmt_s(generate_s)} and packed "
        f"once in {fmt_s(pack_s)}; every run reads the packed copy), `{s.c_model}`, "
        f"{s.c_scenario} (class order seed 1993), {s.c_memory} exemplars (herding), the WA "
        f"paper's recipe of `configs/incremental/wa-cifar100.yaml` for both methods: SGD lr 0.1, "
        f"momentum 0.9, weight decay 2e-4, batch {s.c_batch}, crop + flip, lr × 0.1 at 40 %, "
        f"60 % and 80 % of the epochs (the paper's 100, 150, 200 of 250), fp32 "
        f"(`train.amp=off`). Target: {target} epochs per task"
        + (" (the issue asks for at least 70)." if not ctx.toy else
           " (toy; the issue asks for at least 70)."),
        "",
        "Each run executes in a worker process of its own (workers are reused from one phase to "
        "the next); replay and WA of a seed run side by side on the device. The target-epoch run "
        "of WA, seed 0:",
        "",
        "```",
        f"# DATA = hundred.data.pack.pack(synth100 with classes={s.c_classes}, "
        f"train_per_class={s.c_train}, val_per_class={s.c_val}, res={s.c_res}, seed=0)",
        "build_config(overrides=" + json.dumps(example) + ")",
        "```",
    ]

    # 1. probe: both methods, seed 0, at the probe's epochs, side by side
    probe_root = ctx.workdir / "runs-c-probe"
    probe = [new_run(f"c-probe-{m}", m, 0, s.c_probe_epochs,
                     c_overrides(s, data_dir, probe_root, m, 0, s.c_probe_epochs, device,
                                 ctx.c_extra),
                     ctx.workdir) for m in methods]
    ctx.pool.launch(probe, threads=ctx.threads(len(probe)))
    wait_all(ctx.pool, probe, deadline)
    if any(run.summary() is None for run in probe):
        bad = next(run for run in probe if run.summary() is None)
        section.status = "cut for time" if bad.killed else f"failed (exit {bad.returncode})"
        section.body += ["", f"The probe ({bad.label}) did not finish "
                         f"({bad.killed or 'error'}); nothing more was run."]
        if not bad.killed:
            section.body += ["", "```", bad.tail(), "```"]
        ctx.results["c"] = {"probe": [], "main": []}
        return
    # One epoch of every task, at the speed of the tasks after the first (the first task's
    # first steps also pay for CUDA and cuDNN start-up, which would be multiplied by the
    # epochs); the rest of the probe's wall time is fixed cost (start, data, evaluation,
    # herding), paid once per run whatever the epochs.
    per_epoch, overhead = {}, {}
    for run in probe:
        records = run.epoch_records()
        later = [r for task in records[1:] for r in task] or [r for t in records for r in t]
        seconds = sum(r["seconds"] for r in later)
        rate = sum(r["images_per_s"] * r["seconds"] for r in later) / seconds
        per_epoch[run.method] = sum(work) / rate
        overhead[run.method] = max(0.0, run.wall - per_epoch[run.method] * run.epochs)

    def predicted(epochs: int, seeds: int) -> float:
        return predict_wall(per_epoch, overhead, epochs, seeds)

    available = deadline - time.monotonic()
    usable = PLAN_SAFETY * available
    epochs, seeds = plan_c(per_epoch, overhead, usable, target, ctx.c_seeds)
    met = epochs >= target
    plan_rows = [
        [m, fmt_s(probe_run.wall), fmt_s(per_epoch[m]), fmt_s(overhead[m]),
         fmt_s(overhead[m] + target * per_epoch[m])]
        for m, probe_run in zip(methods, probe)
    ]
    section.body += [
        "",
        f"Plan. A probe ran both methods, seed 0, {s.c_probe_epochs} epoch(s) per task, side by "
        f"side:",
        "",
        *table(["method", "probe wall", "one epoch of every task", "everything else",
                f"predicted at {target} epochs"], plan_rows),
        "",
        f"Time left for (c) after the probe: {fmt_s(available)}; the plan uses at most "
        f"{PLAN_SAFETY:.0%} of it and assumes that k seeds side by side are k times as slow.",
    ]
    main_runs: list[Run] = []
    if epochs <= s.c_probe_epochs:
        section.status = "cut for time"
        section.body += ["", f"**Requirement not met:** not even {s.c_probe_epochs + 1} epochs "
                         f"per task fit the time left, so only the probe's result is reported "
                         f"(a {target}-epoch run needs about "
                         f"{fmt_s(predicted(target, 1))}, with replay and WA side by side)."]
    else:
        if met:
            section.body += ["", f"Chosen: {epochs} epochs per task, {seeds} seed(s) "
                             f"({', '.join(str(k) for k in range(seeds))})"
                             + (f"; {ctx.c_seeds} were asked for, fewer fit the time."
                                if seeds < ctx.c_seeds else ".")]
        else:
            needed_minutes = math.ceil((ctx.clock.elapsed() + RESERVE_S
                                        + predicted(target, 1) / PLAN_SAFETY) / 60)
            section.body += ["", f"**Requirement not met: {epochs} epochs per task instead of "
                             f"{target}.** The {target}-epoch runs would need about "
                             f"{fmt_s(predicted(target, 1))} (replay and WA side by side, one "
                             f"seed), more than the {fmt_s(usable)} planned; run with "
                             f"`--budget-minutes {needed_minutes}` "
                             f"or more for the full requirement. One seed (0)."]
        main_root = ctx.workdir / "runs-c"
        main_runs = [new_run(f"c-{m}-s{k}", m, k, epochs,
                             c_overrides(s, data_dir, main_root, m, k, epochs, device,
                                         ctx.c_extra), ctx.workdir)
                     for k in range(seeds) for m in methods]
        stopped_seeds: list[int] = []

        def projected_end(run: Run) -> float | None:
            records = run.epoch_records()
            flat = [r for task in records for r in task]
            if len(flat) < 2:
                return None
            done = sum(len(task) * work[i] for i, task in enumerate(records))
            rate = sum(r["images_per_s"] for r in flat[-3:]) / len(flat[-3:])
            tasks_left = len(work) - len(run.done_tasks())
            return (time.monotonic() + (sum(work) * epochs - done) / rate
                    + tasks_left * overhead[run.method] / len(work))

        def check(runs: list[Run]) -> None:
            try:
                stopped = stop_extra_seed(ctx.pool, runs, deadline, projected_end)
            except Exception:  # a projection that fails must not stop the runs
                return
            if stopped is not None:
                stopped_seeds.append(stopped)

        ctx.pool.launch(main_runs, threads=ctx.threads(len(main_runs)))
        wait_all(ctx.pool, main_runs, deadline, check if seeds > 1 else None)
        if stopped_seeds:
            section.body += ["", f"Seed(s) {', '.join(map(str, sorted(stopped_seeds)))} were "
                             f"stopped early: seed 0 was projected to miss the deadline."]
        unfinished = [r for r in main_runs if r.summary() is None]
        if any(r.seed == 0 for r in unfinished):
            section.status = "cut for time" if all(r.killed for r in unfinished) else "failed"
        elif not met:
            section.status = "done, below the required epochs"

    # results
    def row(label: str, runs: list[Run]) -> list[str]:
        summaries = [r.summary() for r in runs]
        finished = [x for x in summaries if x is not None]
        seeds_done = ", ".join(str(r.seed) for r, x in zip(runs, summaries) if x is not None)
        return [label, runs[0].method, str(runs[0].epochs),
                f"{len(finished)} ({seeds_done or '–'})",
                fmt_stat([x["avg_incremental_accuracy"] for x in finished]),
                fmt_stat([x["last_accuracy"] for x in finished]),
                fmt_s(max(r.wall for r, x in zip(runs, summaries) if x is not None))
                if finished else "–"]

    rows = [row("probe", [r]) for r in probe]
    for m in methods:
        runs = [r for r in main_runs if r.method == m]
        if runs:
            rows.append(row("main", runs))
    section.body += [
        "",
        "Results (headline numbers: the linear head; mean ± sample std over the seeds that "
        "finished):",
        "",
        *table(["runs", "method", "epochs per task", "seeds", "avg incremental acc (%)",
                "last acc (%)", "wall (slowest)"], rows),
    ]
    per_seed = [[r.method, str(r.seed), str(r.epochs),
                 f"{x['avg_incremental_accuracy']:.2f}", f"{x['last_accuracy']:.2f}",
                 fmt_s(r.wall)]
                for r in main_runs for x in [r.summary()] if x is not None]
    if len(per_seed) > len(methods):
        section.body += ["", *table(["method", "seed", "epochs per task", "avg incremental acc",
                                     "last acc", "wall"], per_seed)]
    cut = [r for r in main_runs if r.summary() is None]
    for r in cut:
        steps = [f"{t['linear']['top1']:.1f}" for t in r.done_tasks()]
        why = r.killed or f"failed (exit {r.returncode})"
        section.body += ["", f"{r.method} seed {r.seed}: {why}"
                         f" after {len(steps)} of {len(work)} tasks"
                         + (f" (top-1 after each: {', '.join(steps)})" if steps else "") + "."]
        if not r.killed:
            section.body += ["", "```", r.tail(), "```"]

    # the ordering
    # seeds where both methods finished, so that the two means cover the same seeds
    paired = sorted(set.intersection(*({r.seed for r in main_runs if r.method == m
                                         and r.summary() is not None} for m in methods)))
    finished = {m: [r.summary() for r in main_runs if r.method == m and r.seed in paired]
                for m in methods}
    source, label = finished, f"{epochs if main_runs else s.c_probe_epochs} epochs per task"
    if not all(finished.values()):
        source = {m: [r.summary() for r in probe if r.method == m] for m in methods}
        label = f"the probe's {s.c_probe_epochs} epoch(s) per task"
    from hundred.report.aggregate import Stat

    avg = {m: Stat.of([x["avg_incremental_accuracy"] for x in source[m]]).mean for m in methods}
    last = {m: Stat.of([x["last_accuracy"] for x in source[m]]).mean for m in methods}
    holds_avg, holds_last = avg["wa"] >= avg["replay"], last["wa"] >= last["replay"]
    sentence = (f"**WA >= replay {'held' if holds_avg else 'did not hold'}** at {label} on average "
                f"incremental accuracy (WA {avg['wa']:.2f} vs replay {avg['replay']:.2f}) and "
                f"{'held' if holds_last else 'did not hold'} on last accuracy (WA "
                f"{last['wa']:.2f} vs replay {last['replay']:.2f}), over "
                f"{len(source['wa'])} seed(s).")
    if source is finished and met:
        sentence += (f" This is the papers' budget ({target} epochs per task)." if not ctx.toy
                     else " (Toy sizes: this says nothing about the papers' claim.)")
    else:
        sentence += (f" This is below the {target} epochs per task the comparison requires, so "
                     f"it neither confirms nor refutes the papers' order.")
    section.body += ["", sentence]
    wa_run = (finished["wa"] or source["wa"])[0]
    values = [f"{log['gamma']:.3f}" for log in wa_run["method_logs"] if "gamma" in log]
    if values:
        section.body += ["", f"WA's aligning factor γ after tasks 2–{len(work)} (the "
                         f"{'main' if finished['wa'] else 'probe'} run of seed {wa_run['seed']}): "
                         f"{', '.join(values)}."]
    ctx.results["c"] = {
        "epochs": epochs, "seeds": seeds if main_runs else 0, "met": met and bool(main_runs),
        "probe": [r.summary() for r in probe],
        "main": [r.summary() for r in main_runs if r.summary() is not None],
        "wa_ge_replay_avg": holds_avg, "wa_ge_replay_last": holds_last,
    }


# ----------------------------------------------------------------------------- main


@dataclass
class Context:
    sizes: Sizes
    device: Any
    workdir: Path
    clock: Clock
    toy: bool
    c_seeds: int
    c_target_epochs: int
    c_extra: list[str] = field(default_factory=list)
    pool: Pool | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def threads(self, processes: int) -> int:
        """CPU threads per subprocess: the cores shared out (one each at toy sizes, which run
        on shared test machines)."""
        return 1 if self.toy else max(1, (os.cpu_count() or 1) // processes)


TITLES = {
    "a": "Loader: packed vs ImageFolder + PIL DataLoader at 64 px",
    "b": "Training: ResNet-18 at 64 px, hundred's loop vs the PIL DataLoader loop",
    "c": "Replay vs WA on synth100 (32 px, resnet32, B0-Inc10, 2000 exemplars)",
    "d": "A whole B0-Inc10 run on ImageNet-100-shaped data (100 × 1,300 images at 64 px)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda if "
                        "available)")
    parser.add_argument("--budget-minutes", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--toy", action="store_true", help="tiny sizes (the test suite's)")
    parser.add_argument("--parts", default="abcd", help="which parts to run, e.g. 'cd'")
    parser.add_argument("--seeds", type=int, default=None, help="most seeds for (c) (default 3; "
                        "toy 1)")
    parser.add_argument("--epochs", type=int, default=None, help="target epochs per task for "
                        "(c), and (d)'s projection (default 70; toy 2)")
    parser.add_argument("--c-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for every (c) run, e.g. "
                        "model.compile=true (repeatable; printed in the report)")
    parser.add_argument("--commit", default=None, help="the git commit to print when the "
                        "checkout has no git metadata")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: temp, "
                        "deleted at the end)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ready", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.device, args.ready)
    clock = Clock(args.budget_minutes * 60)
    import torch

    sections = [Section(key, TITLES[key]) for key in "abcd"]
    for key in "abcd":
        if key not in args.parts:
            sections["abcd".index(key)].status = "not requested"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = Report(args.out, [], sections)
    if device.type == "cuda" and not torch.cuda.is_available():
        report.header = ["# GPU check", "", f"`--device {device}` but CUDA is not available "
                         f"here (torch {torch.__version__}); nothing was measured."]
        for s in sections:
            s.status = "skipped: no CUDA"
        report.write()
        print(f"wrote {args.out}: CUDA not available", file=sys.stderr)
        return 1
    report.header = machine_header(device, args, argv)
    report.write()
    sizes = TOY if args.toy else FULL
    if args.seeds is not None:
        sizes = replace(sizes, c_seeds=args.seeds)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hundred-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(sizes, device, workdir, clock, args.toy, sizes.c_seeds,
                  args.epochs or sizes.c_epochs, list(args.c_set), Pool(workdir, str(device)))
    threads = torch.get_num_threads()
    if args.toy:
        torch.set_num_threads(1)  # toy sizes run on shared test machines

    def terminate(signum: int, frame: Any) -> None:  # `timeout` and friends: stop cleanly
        raise SystemExit(128 + signum)

    previous_term = signal.signal(signal.SIGTERM, terminate)
    try:
        for key in "abdc":  # (c) last: it takes whatever time is left
            section = report.section(key)
            if key not in args.parts:
                continue
            cap = None if key == "c" else CAPS[key] * clock.total
            section.cap = cap
            limit = clock.left() if cap is None else min(cap, clock.left())
            if limit < 5:
                section.status = "skipped: no time left"
                report.write()
                continue
            if key in "dc":  # the workers import torch while (d) generates its data
                ctx.pool.prespawn(2 if "c" in args.parts else 1, ctx.threads(1))
            print(f"gpu_check: ({key}) {section.title}, up to {fmt_s(limit)}", file=sys.stderr)
            started = time.monotonic()
            section.status = "running (this file was written before it finished)"
            report.write()
            try:
                if key in "ab":
                    with time_limit(limit):
                        (part_a if key == "a" else part_b)(ctx, section)
                else:
                    (part_d if key == "d" else part_c)(ctx, section, started + limit)
                if section.status.startswith("running"):
                    section.status = "done"
            except TimeUp:
                section.status = "cut for time"
                section.body += ["", f"Cut at its cap of {fmt_s(limit)}; what is above finished."]
            except Exception as error:  # one broken part must not cost the others
                section.status = f"failed: {type(error).__name__}"
                section.body += ["", "```", traceback.format_exc(limit=-4).strip()[-2500:], "```"]
            finally:
                section.seconds = time.monotonic() - started
                report.write()
    finally:
        report.footer = ["", f"Total: {fmt_s(clock.elapsed())} of the {fmt_s(clock.total)} "
                         "budget."]
        report.write()
        ctx.pool.close()
        signal.signal(signal.SIGTERM, previous_term)
        torch.set_num_threads(threads)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {args.out} in {fmt_s(clock.elapsed())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
