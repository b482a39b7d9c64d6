"""What machine a result came from: float paths differ between CPU models, so every run's summary.json names it."""
from __future__ import annotations

import os
import platform
from datetime import date
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, the GPU (if torch sees one), and the date: the `machine` entry of summary.json."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "date": date.today().isoformat()}
