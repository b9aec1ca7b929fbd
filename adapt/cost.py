"""What a run costs (Green AI): wall time, device hours, energy (kWh) and emissions (kg CO2-eq), measured by
codecarbon's ``OfflineEmissionsTracker``: no network, no API, no ``emissions.csv``; codecarbon is imported only when
a tracker starts, so ``import adapt`` stays fast.

- ``Cost``: the setting (``cost:`` of a recipe, ``--cost`` of ``adapt fit`` / ``evaluate`` / ``run``): the grid's
  carbon intensity from ``country_iso_code`` (codecarbon's table of national energy mixes) or ``carbon_intensity``
  (g CO2-eq / kWh) itself; with neither, codecarbon's world average, and the record says so. ``cost: null`` turns
  the tracker off: the record keeps the wall time and device hours, which cost nothing to measure.
- ``Tracker``: started and stopped around a piece of work (a context manager too); ``stop`` returns the record
  (the ``cost`` of run.json and metrics.json). It never raises: a codecarbon failure becomes ``error`` (one line)
  beside the wall time. codecarbon measures the whole machine (CPU package, RAM, the run's GPUs); on a CPU
  without energy counters it estimates from the CPU's TDP, and ``measured`` says so.
- Under DDP one tracker per node (local rank 0), summed over the nodes (``fit_cost``); device hours are wall hours
  x processes. What an experiment's stages cost, and totals: ``adapt.workflows.stages``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from adapt.errors import ConfigError

CPU_MODES = {"intel_rapl": "CPU: RAPL energy counters", "windows_emi": "CPU: RAPL energy counters (Windows)",
             "intel_power_gadget": "CPU: Intel Power Gadget readings", "apple_powermetrics": "CPU: powermetrics",
             "cpu_load": "CPU: estimated from the CPU's TDP x its load (no energy counters readable)",
             "constant": "CPU: estimated from the CPU's TDP (no energy counters readable)"}
_TABLES: dict[str, dict] = {}


def _table(name: str) -> dict:
    """One of codecarbon's JSON tables (``global_energy_mix``: country -> energy mix and ``carbon_intensity``;
    ``carbon_intensity_per_source``: g/kWh per source and ``world_average``), read once."""
    if name not in _TABLES:
        from importlib.resources import files

        _TABLES[name] = json.loads((files("codecarbon") / "data" / "private_infra" / f"{name}.json").read_text())
    return _TABLES[name]


def _codecarbon_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("codecarbon")
    except PackageNotFoundError:
        return "(not installed)"


@dataclass(frozen=True)
class Cost:
    """How a run's emissions are counted.

    Args:
        country_iso_code: the 3-letter ISO code of the country whose grid powers the machine (FRA, USA, DEU, ...):
            its carbon intensity from codecarbon's table of national energy mixes. Default: the world average.
        carbon_intensity: the grid's carbon intensity in g CO2-eq / kWh, used as it is (overrides the country's).
    """

    country_iso_code: str | None = None
    carbon_intensity: float | None = None

    def __post_init__(self) -> None:
        code = self.country_iso_code
        if code is not None:
            code = str(code).strip().upper()
            object.__setattr__(self, "country_iso_code", code)
            if not re.fullmatch(r"[A-Z]{3}", code):
                raise ConfigError(f"cost.country_iso_code: {self.country_iso_code!r}; give a 3-letter ISO code (FRA, "
                                  "USA, DEU, ...) or cost.carbon_intensity in g/kWh")
            try:
                known = _table("global_energy_mix")
            except Exception:  # codecarbon missing or moved its table: the tracker records why, the run goes on
                known = None
            if known is not None and code not in known:
                raise ConfigError(f"cost.country_iso_code: {code} is not in codecarbon's table of energy mixes; give "
                                  "another 3-letter ISO code, or cost.carbon_intensity in g/kWh")
        if self.carbon_intensity is not None and not float(self.carbon_intensity) >= 0:  # NaN too
            raise ConfigError(f"cost.carbon_intensity: {self.carbon_intensity}; give g CO2-eq per kWh (0 or more)")

    def intensity(self) -> tuple[float, str]:
        """The carbon intensity to count with (g CO2-eq / kWh) and where it comes from."""
        if self.carbon_intensity is not None:
            return float(self.carbon_intensity), "set: cost.carbon_intensity"
        version = _codecarbon_version()
        if self.country_iso_code is not None:
            mix = _table("global_energy_mix")[self.country_iso_code]
            return float(mix["carbon_intensity"]), (f"codecarbon {version}: energy mix of {mix.get('country_name')} "
                                                    f"({self.country_iso_code}, {mix.get('year', 'year unknown')})")
        world = _table("carbon_intensity_per_source")["world_average"]
        return float(world), (f"codecarbon {version}: world average (no cost.country_iso_code given; set it, or "
                              "cost.carbon_intensity, for the grid you run on)")


def as_cost(value: Any) -> Cost | None:
    """A ``Cost`` from what a parser gives (a Cost, a mapping of its fields, None: off)."""
    if value is None or isinstance(value, Cost):
        return value
    if isinstance(value, dict):
        return Cost(**value)
    raise ConfigError(f"cost: {value!r}; give null (off) or a mapping such as {{country_iso_code: FRA}}")


def cost_from_args(args: list[str]) -> Cost | None:
    """The ``--cost`` setting among ``adapt fit`` arguments (``--cost=null``, ``--cost={...}``,
    ``--cost.country_iso_code=FRA``; the last wins); ``Cost()`` when none is there."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--cost", type=Cost | None, default=Cost())
    return as_cost(parser.parse_args([a for a in args if a.startswith(("--cost=", "--cost."))]).as_dict()["cost"])


def cost_argument(cost: Cost | None) -> str:
    """``--cost=...`` of ``adapt fit`` for ``cost`` (``cost_from_args`` reads it back)."""
    return "--cost=" + json.dumps(None if cost is None else {"country_iso_code": cost.country_iso_code,
                                                             "carbon_intensity": cost.carbon_intensity})


def device_name(device: Any) -> str:
    """``cpu``, ``mps`` or ``cuda:NVIDIA H100 80GB HBM3`` for a torch device (or its string)."""
    import torch

    device = torch.device(device)
    try:
        return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type
    except Exception:  # a record is no reason to fail
        return str(device)


def _one_line(err: BaseException | str, limit: int = 500) -> str:
    return " ".join(str(err if isinstance(err, str) else f"{type(err).__name__}: {err}").split())[:limit]


class _Capture(logging.Handler):
    """codecarbon's log while a tracker lives: nothing on the console; its warnings and errors kept (one line)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.failure: str | None = None
        self.logger = logging.getLogger("codecarbon")
        self.saved = (list(self.logger.handlers), self.logger.level)
        self.logger.handlers = [self]

    def emit(self, record: logging.LogRecord) -> None:
        message = _one_line(record.getMessage(), 2000)
        if record.exc_info and record.exc_info[1] is not None:  # codecarbon's start() swallows its exceptions
            self.failure = _one_line(record.exc_info[1])
        elif message and "Multiple instances of codecarbon" not in message and message not in self.messages:
            self.messages.append(message)

    def quiet(self) -> None:
        """Drop the console handler codecarbon adds while it is constructed."""
        self.logger.handlers = [h for h in self.logger.handlers if h is self or isinstance(h, logging.FileHandler)]

    def restore(self) -> None:
        self.logger.handlers, level = self.saved
        self.logger.setLevel(level)


def _measured(tracker: Any) -> str:
    """How codecarbon got each part's energy, from the hardware it set up."""
    kinds = [(type(part).__name__, getattr(part, "_mode", None)) for part in getattr(tracker, "_hardware", [])]
    named = {"RAM": "RAM: codecarbon's estimate from its size", "GPU": "GPU: NVML / AMD SMI readings (energy "
             f"counters where the GPU has them) of {tracker._conf.get('gpu_model')}"}
    parts = [CPU_MODES.get(mode, f"CPU: {mode}") if kind == "CPU" else named.get(kind, kind) for kind, mode in kinds]
    return "; ".join(parts) + "; CPU and RAM of the whole machine (every process on it)" + (
        ", GPUs of the run" if any(kind == "GPU" for kind, _ in kinds) else "")


def cuda_gpu_ids(device_ids: list[int]) -> list[str]:
    """The machine's GPU ids of a run's CUDA device indices (through ``CUDA_VISIBLE_DEVICES``), for codecarbon."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return [visible[i] if i < len(visible) else str(i) for i in device_ids] if visible else [str(i) for i in device_ids]


class Tracker:
    """What one piece of work costs. ``settings``: a ``Cost`` (None: wall time and device hours only);
    ``device``: the torch device the work runs on; ``devices``: processes (device hours = wall hours x devices);
    ``leader``: whether this process measures (one per node under DDP); ``device_ids``: the CUDA devices of the
    work on this machine (default: ``device``'s), whose GPUs codecarbon measures."""

    def __init__(self, settings: Cost | None, device: Any = "cpu", devices: int = 1, leader: bool = True,
                 device_ids: list[int] | None = None) -> None:
        import torch

        device = torch.device(device)
        ids = device_ids if device_ids is not None else [device.index or 0]
        self.settings, self.device, self.devices, self.leader = settings, device_name(device), devices, leader
        self.gpu_ids = cuda_gpu_ids(ids) if device.type == "cuda" else None
        self.started = time.perf_counter()
        self.tracker: Any = None  # codecarbon's; then what it captured, failed with, counted with, and the record
        self.capture: _Capture | None = None
        self.error = self.intensity = self.record = None

    def start(self) -> Tracker:
        self.started = time.perf_counter()
        if self.settings is None or not self.leader:
            return self
        try:
            self.intensity = self.settings.intensity()
            self.capture = _Capture()
            from codecarbon import OfflineEmissionsTracker

            self.tracker = OfflineEmissionsTracker(
                country_iso_code=self.settings.country_iso_code, region=None, cloud_provider=None,
                cloud_region=None, force_carbon_intensity_g_co2e_kwh=self.intensity[0], output_methods=[],
                emissions_endpoint=None, allow_multiple_runs=True, log_level="warning", tracking_mode="machine",
                gpu_ids=self.gpu_ids, project_name="adapt")
            self.capture.quiet()
            self.tracker.start()
            self.started = time.perf_counter()  # the work's wall time, as codecarbon's measurement: from here
        except Exception as err:  # never stop a run for its cost
            self.error = _one_line(err)
        return self

    def stop(self) -> dict:
        """The record: ``wall_seconds``, ``device``, ``devices``, ``device_hours`` (``device_hours_unit``) and,
        when tracked, ``energy_kwh``, ``emissions_kg`` (= energy x ``carbon_intensity`` g/kWh / 1000),
        ``carbon_intensity_source``, ``measured``, ``notes`` (codecarbon's warnings), ``tool``; or ``error``;
        with the tracker off, ``tracker: off``. A second call returns the first one's record."""
        if self.record is not None:
            return self.record
        wall = time.perf_counter() - self.started
        unit = "GPU hours" if self.device.startswith("cuda") else f"{self.device.split(':')[0].upper()} process hours"
        record = {"wall_seconds": round(wall, 3), "device": self.device, "devices": self.devices,
                  "device_hours": wall / 3600 * self.devices, "device_hours_unit": f"{unit} (wall hours x devices)"}
        if self.settings is None:
            record["tracker"] = "off (cost: null)"
        elif self.leader:
            try:
                if self.error is None:
                    self.tracker.stop()
                    data = getattr(self.tracker, "final_emissions_data", None)
                    if data is None:  # its start() logged why (or nothing did)
                        self.error = self.capture.failure or "measured nothing"
                if self.error is None:
                    record.update(energy_kwh=float(data.energy_consumed), emissions_kg=float(data.emissions),
                                  carbon_intensity=self.intensity[0], carbon_intensity_source=self.intensity[1],
                                  measured=_measured(self.tracker))
            except Exception as err:
                self.error = _one_line(err)
            if self.capture is not None:
                self.capture.restore()
                if self.capture.messages:
                    record["notes"] = _one_line("codecarbon: " + " | ".join(self.capture.messages), 2000)
            record["tool"] = f"codecarbon {_codecarbon_version()} (offline)"
            if self.error is not None:
                record["error"] = f"codecarbon: {self.error}"
        self.record = record
        return record

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:  # the record stays in ``self.record``
        self.stop()


def fit_tracker(trainer: Any, settings: Cost | None) -> Tracker:
    """The tracker of a fit (started): one per node under DDP (local rank 0), the run's GPUs on that node."""
    return Tracker(settings, trainer.strategy.root_device, trainer.world_size, trainer.local_rank == 0,
                   list(trainer.device_ids)).start()


def fit_cost(tracker: Tracker | None, trainer: Any, gather: bool) -> dict | None:
    """The fit's record (None without a tracker: the fit never started); under DDP with ``gather`` (every process
    calls it) energy and emissions summed over the nodes' trackers (``nodes``: how many); without (a failed or
    interrupted run) this node's figures alone."""
    import torch

    if tracker is None:
        return None
    record = dict(tracker.stop(), nodes=1)
    if trainer.world_size == 1 or tracker.settings is None:
        return record
    if not gather:
        return dict(record, nodes_note=f"this node only: the run stopped before the figures of its "
                                       f"{trainer.num_nodes} nodes were gathered") if trainer.num_nodes > 1 else record
    ok = "energy_kwh" in record
    mine = [record.get("energy_kwh", 0.0), record.get("emissions_kg", 0.0), float(tracker.leader), float(ok)]
    rows = trainer.strategy.all_gather(torch.tensor(mine, dtype=torch.float64, device=trainer.strategy.root_device))
    rows = rows.tolist()
    leaders = [row for row in rows if row[2] > 0.5]
    record["nodes"] = len(leaders)
    failed = sum(row[3] < 0.5 for row in leaders)
    if failed:
        for key in ("energy_kwh", "emissions_kg"):
            record.pop(key, None)
        record["error"] = record.get("error") or f"codecarbon failed on {failed} of {len(leaders)} nodes"
    else:
        record.update(energy_kwh=sum(row[0] for row in leaders), emissions_kg=sum(row[1] for row in leaders))
    return record
