"""Energy counters: the GPU's from NVML, the CPU packages' from RAPL, where this machine lets us read them."""

from __future__ import annotations

import glob
from pathlib import Path

import torch


class EnergyMeter:
    """Joules since construction, per source (``gpu``, ``cpu``); a source that cannot be read is absent.

    NVML's total-energy counter needs ``nvidia-ml-py`` (the ``bench`` extra) and a Volta or newer
    GPU; RAPL needs read access to ``/sys/class/powercap/intel-rapl:*/energy_uj``, often root only.
    """

    def __init__(self, device: torch.device) -> None:
        self._nvml = _nvml_handle(device)
        self._rapl = [Path(p) for p in sorted(glob.glob("/sys/class/powercap/intel-rapl:[0-9]*/energy_uj")) if _readable(Path(p))]
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        values = {}
        if self._nvml is not None:
            import pynvml

            values["gpu"] = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml) / 1e3  # mJ → J
        if self._rapl:
            values["cpu"] = sum(int(p.read_text()) for p in self._rapl) / 1e6  # µJ → J (wraps after days)
        return values

    def joules(self) -> dict[str, float]:
        now = self._read()
        return {source: now[source] - self._start[source] for source in now}


def _nvml_handle(device: torch.device):
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return handle
    except Exception:  # no nvidia-ml-py, no driver support: the table says n/a
        return None


def _readable(path: Path) -> bool:
    try:
        int(path.read_text())
        return True
    except (OSError, ValueError):
        return False
