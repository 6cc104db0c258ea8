"""Where training runs and in which precision: CUDA, else Apple MPS, else CPU; bf16 where it is fast."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

from vaelib.exceptions import ConfigError

__all__ = ["resolve_device", "bf16_is_fast", "autocast_dtype", "cpu_flags", "machine_info", "set_threads"]

# CPU flags with native bf16 dot products; without them oneDNN emulates bf16 and it runs slower than
# fp32 (figures in docs/benchmarks.md).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return frozenset()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA if present, else MPS, else CPU. An explicit device that is missing is an error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but torch sees no CUDA device")
    if name == "mps" and not has_mps:
        raise ConfigError("train.device='mps' but torch sees no MPS device")
    if name not in ("cuda", "mps", "cpu"):
        raise ConfigError(f"train.device: {name!r} is not one of auto, cuda, mps, cpu")
    return torch.device(name)


def bf16_is_fast(device: torch.device) -> bool:
    """True on CUDA with bf16 support and on CPUs with AMX-BF16 or AVX512-BF16 (and oneDNN)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(cpu_flags() & set(BF16_CPU_FLAGS))
    return False


def autocast_dtype(device: torch.device, *, enabled: bool) -> torch.dtype:
    """bf16 when ``enabled`` and the hardware runs it fast, else float32."""
    return torch.bfloat16 if enabled and bf16_is_fast(device) else torch.float32


def set_threads(num_threads: int) -> int:
    """Set torch's CPU threads (0: every core) and return the number set."""
    n = num_threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


ISA_LIMIT_VARS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def machine_info() -> dict:
    """CPU model, cores, bf16 flags, torch version and GPU name, for benchmark records."""
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_cpu_flags": sorted(cpu_flags() & set(BF16_CPU_FLAGS)),
        "avx512f": "avx512f" in cpu_flags(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        # what torch was allowed to use, which may be less than the CPU has (an AVX2 run on an AVX-512 CPU)
        "isa_limits": {k: os.environ[k] for k in ISA_LIMIT_VARS if k in os.environ},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
