"""Where code runs: the device, torchrun's ranks (DDP), mixed precision, and a Ctrl+C that stops cleanly.

Training, `infer` and `evaluate` all pick their device here, so `--device` means the same everywhere.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import platform
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from roi_consistency.errors import UserError


def pick_device(flag: str = "auto", local_rank: int = 0) -> torch.device:
    """--device auto|cpu|cuda: auto takes CUDA when it is there."""
    if flag == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    if flag in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    bf16: bool = False

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        """bf16 autocast where it is on; one code path either way."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def setup_runtime(device: str = "auto", bf16: bool | None = None) -> Runtime:
    """Read torchrun's environment; start the process group when there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any fp32 matmul left outside autocast
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, local_rank, bf16=dev.type == "cuda" if bf16 is None else bf16)


def environment(device: torch.device, processes: int = 1) -> dict:
    """What a checkpoint was trained on, or an evaluation run on, in plain types (weights_only loads them).
    The same command and seed train other weights on another kind of CPU (its kernels round differently;
    EXPERIMENTS.md round 10), so two runs' figures compare only where these match. The CPU's vector
    extensions tell apart kinds that /proc/cpuinfo names alike ("AMD EPYC", with or without AVX512-BF16)."""
    name, features = (torch.cuda.get_device_name(device), ()) if device.type == "cuda" else _this_cpu()
    return {"device": device.type, "name": name, "features": list(features), "processes": processes,
            "threads": torch.get_num_threads(), "torch": str(torch.__version__), "python": platform.python_version()}


def environment_line(env: dict | None) -> str:
    """One line for a report or a model card: "AMD EPYC with AVX2, AVX-512 (2 threads, torch 2.14.1)"."""
    if not env:
        return "(not recorded)"
    ext = f" with {', '.join(env['features'])}" if env.get("features") else ""
    procs = f"{env['processes']} processes, " if env.get("processes", 1) > 1 else ""
    return f"{env['name']}{ext} ({procs}{env['threads']} threads, torch {env['torch']})"


@functools.lru_cache(maxsize=1)
def _this_cpu() -> tuple[str, tuple[str, ...]]:
    """This machine's CPU name and extensions: /proc/cpuinfo read once per process, not at every save."""
    info = _cpuinfo()
    return cpu_name(info), tuple(cpu_features(info))


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name(cpuinfo: str | None = None) -> str:
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# the x86 extensions that decide which kernels oneDNN runs, as /proc/cpuinfo's flags spell them
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [label for flag, label in CPU_FEATURES.items() if flag in flags]
    return []


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl+C; what Slurm and most schedulers send before SIGKILL


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """For loader workers: Ctrl+C (and a scheduler's SIGTERM) reach every process in the group, and only
    the main process should act on them (finish the step it is on and write a checkpoint)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def workers_reaped_on_error():
    """A run that fails leaves its loader workers waiting, and they ignore the SIGTERM that torch (and, at
    exit, multiprocessing) use to end them (ignore_stop_signals), so exit would wait forever: kill the
    workers this block started."""
    before = set(multiprocessing.active_children())
    try:
        yield
    except BaseException:
        if sys.platform != "win32":
            # torch's SIGCHLD handler would report the kill as a worker failure, raising mid-cleanup
            old = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for p in set(multiprocessing.active_children()) - before:
                if p.daemon:
                    p.kill()
                    p.join()
            signal.signal(signal.SIGCHLD, old if old is not None else signal.SIG_DFL)
        raise


class StopFlag:
    """The first SIGINT or SIGTERM asks the loop to stop at the next step boundary and save; a second one
    aborts. `signum` is the signal that asked, so the process can exit 128 + signum (130, 143)."""

    def __init__(self):
        self.set, self.signum, self._old = False, None, {}

    def __enter__(self):
        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, _frame):
        if self.set:
            raise KeyboardInterrupt
        self.set, self.signum = True, signum
        try:  # stderr may be a pipe whose reader (tee) died with the same Ctrl+C
            print(f"\nstopping ({signal.Signals(signum).name}): saving a checkpoint at the next step (again to "
                  "abort)", file=sys.stderr)
        except OSError:
            pass

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
