"""Device classes and fleets for virtual time.

A device class says how long one local step of the reference workload takes (the mnist1d CNN, batch 32; other tasks
scale it with ``cost_factor``), and what its link can carry. A fleet says how many devices of each class there are,
how much each task's duration varies, and how often devices drop out and come back.

Where the numbers come from:

- ``gpu``, ``cpu``, ``rpi4``: BENCHMARK.md §1, the scenario fedhive publishes (0.01 / 0.05 / 0.25 s per step, a
  25× spread; links 100 / 50 / 5 MB/s with 5 / 10 / 50 ms latency).
- ``rpi5``: Raspberry Pi's own figure of 2-3× the CPU performance of a Pi 4 (Cortex-A76 at 2.4 GHz against A72 at
  1.8 GHz), so 0.1 s per step; gigabit Ethernet or 802.11ac, taken as 10 MB/s effective with 30 ms latency.
- ``rpi-zero2``: Zero 2 W, four Cortex-A53 at 1 GHz, about a quarter of a Pi 4, so 1.0 s per step; 2.4 GHz
  802.11n only, taken as 2 MB/s with 80 ms latency.

These are planning figures for comparing strategies, not measurements of any one board: ``fedhive agent`` measures
the real device.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from fedhive.strategies.params import integer, number, parse_pairs


@dataclass(frozen=True)
class DeviceProfile:
    """One device class.

    Parameters
    ----------
    name : str
        Class name (``ClientInfo.device_class``).
    seconds_per_step : float
        One local step of the reference workload.
    bandwidth : float
        Link bytes per second (used for download and upload alike).
    latency : float
        One-way latency in seconds (paid once down and once up).
    resources : dict
        What one training of this class asks of a Ray cluster (``{"CPU": 1}``, ``{"GPU": 0.25}``).
    """

    name: str
    seconds_per_step: float
    bandwidth: float
    latency: float
    resources: dict = field(default_factory=lambda: {"CPU": 1})

    def __post_init__(self) -> None:
        for attr in ("seconds_per_step", "bandwidth"):
            number(f"device class {self.name!r}: {attr}", getattr(self, attr), low=0, low_open=True)
        number(f"device class {self.name!r}: latency", self.latency, low=0)

    def transfer(self, nbytes: int) -> float:
        """Seconds to move ``nbytes`` one way."""
        return self.latency + nbytes / self.bandwidth


MB = 1_000_000

DEVICE_CLASSES: dict[str, DeviceProfile] = {
    "gpu": DeviceProfile("gpu", 0.01, 100 * MB, 0.005, {"CPU": 1, "GPU": 0.25}),
    "cpu": DeviceProfile("cpu", 0.05, 50 * MB, 0.010),
    "rpi5": DeviceProfile("rpi5", 0.10, 10 * MB, 0.030),
    "rpi4": DeviceProfile("rpi4", 0.25, 5 * MB, 0.050),
    "rpi-zero2": DeviceProfile("rpi-zero2", 1.00, 2 * MB, 0.080),
}


#: FleetSpec's numbers: what each is, and the (excluded) upper end of its range from 0.
_FLEET_LIMITS: dict[str, tuple[str, float | None]] = {
    "jitter": ("a log-normal sigma", 5), "dropout": ("a probability per task", 1),
    "client_jitter": ("a log-normal sigma", 5), "rejoin": ("mean seconds before a dropped device is back", None),
}


@dataclass(frozen=True)
class FleetSpec:
    """A simulated fleet.

    Parameters
    ----------
    mix : dict
        Devices per class, in order (client ids are given in this order).
    jitter : float
        σ of the log-normal factor on each task's duration (0: none).
    dropout : float
        Probability that a task fails at a random moment because its device drops out.
    rejoin : float
        Mean seconds (exponential) before a dropped device comes back; ``0`` means it comes back at once.
    client_jitter : float
        σ of a log-normal speed factor drawn once per device (devices of one class are not all alike).
    profiles : dict
        Device classes by name (the built-in ones unless overridden).
    """

    mix: dict
    jitter: float = 0.3
    dropout: float = 0.0
    rejoin: float = 60.0
    client_jitter: float = 0.0
    profiles: dict = field(default_factory=lambda: dict(DEVICE_CLASSES))

    def __post_init__(self) -> None:
        if not self.mix:
            raise ValueError("a fleet needs at least one device class with a count > 0")
        for name in self.mix:
            if name not in self.profiles:
                raise ValueError(f"unknown device class {name!r}; known: {', '.join(self.profiles)}")
        # Counts from TOML or JSON may be 5.0, or numpy integers: stored as ints.
        object.__setattr__(self, "mix", {name: integer(f"device count for {name!r}", n, low=0)
                                         for name, n in self.mix.items()})
        if self.size == 0:
            raise ValueError("a fleet needs at least one device")
        for attr, (what, high) in _FLEET_LIMITS.items():
            number(f"{attr} ({what})", getattr(self, attr), low=0, high=high, high_open=True)

    @property
    def size(self) -> int:
        return sum(self.mix.values())

    def classes(self) -> list[str]:
        """The device class of each client, by client id."""
        return [name for name, n in self.mix.items() for _ in range(n)]

    def profile(self, name: str) -> DeviceProfile:
        return self.profiles[name]

    def with_mix(self, mix: Mapping[str, int]) -> "FleetSpec":
        return replace(self, mix=dict(mix))


PRESETS: dict[str, FleetSpec] = {
    # BENCHMARK.md §1: 5 GPU-class, 20 CPU-class, 25 Pi-class.
    "hetero": FleetSpec({"gpu": 5, "cpu": 20, "rpi4": 25}),
    "small": FleetSpec({"gpu": 1, "cpu": 2, "rpi4": 3}),
    "pis": FleetSpec({"rpi5": 4, "rpi4": 8, "rpi-zero2": 4}),
    "flaky": FleetSpec({"gpu": 5, "cpu": 20, "rpi4": 25}, dropout=0.05, rejoin=30.0),
    "uniform": FleetSpec({"cpu": 10}, jitter=0.0),
}


def parse_mix(text: str) -> dict[str, int]:
    """``"gpu=5,cpu=20,rpi4=25"`` → ``{"gpu": 5, "cpu": 20, "rpi4": 25}``."""
    example = "gpu=5,cpu=20,rpi4=25"
    pairs = parse_pairs(filter(None, (p.strip() for p in text.split(","))), "device mix entry", form="CLASS=COUNT",
                        example=example)
    if not pairs:
        raise ValueError(f"empty device mix: write CLASS=COUNT pairs, e.g. {example}")
    return {name: integer(f"device count for {name!r} in the mix {text!r}", n, low=0) for name, n in pairs.items()}


def scale_mix(mix: Mapping[str, int], clients: int) -> dict[str, int]:
    """``mix`` scaled to ``clients`` devices in the same proportions (largest remainders; every class keeps >= 1)."""
    if clients < len(mix):
        raise ValueError(f"--clients {clients} is fewer than the {len(mix)} device classes in the mix")
    total = sum(mix.values())
    exact = {k: v * clients / total for k, v in mix.items()}
    out = {k: max(1, int(x)) for k, x in exact.items()}
    by_remainder = sorted(mix, key=lambda k: exact[k] - int(exact[k]), reverse=True)
    i = 0
    while sum(out.values()) < clients:
        out[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(out.values()) > clients:
        k = max(out, key=lambda k: out[k])
        out[k] -= 1
    return out


def load_fleet(spec: str | Path | Mapping[str, Any]) -> FleetSpec:
    """A fleet from a preset name, a TOML file, or a mapping with the same keys.

    TOML layout::

        jitter = 0.3          # optional
        dropout = 0.02        # optional, per task
        rejoin = 60.0         # optional, mean seconds
        client_jitter = 0.1   # optional, per-device speed spread
        [mix]
        gpu = 5
        cpu = 20
        rpi4 = 25
        [classes.jetson]      # optional: new or overridden device classes
        seconds_per_step = 0.02
        bandwidth = 50e6
        latency = 0.01
    """
    if isinstance(spec, Mapping):
        data = dict(spec)
    else:
        text = str(spec)
        if text in PRESETS:
            return PRESETS[text]
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"fleet {text!r} is neither a preset ({', '.join(PRESETS)}) nor a TOML file")
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"fleet file {text}: not valid TOML: {exc}") from exc
    known = {"mix", "jitter", "dropout", "rejoin", "client_jitter", "classes"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown fleet setting(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
    profiles = dict(DEVICE_CLASSES)
    fields = {"seconds_per_step", "bandwidth", "latency", "resources"}
    classes = data.get("classes", {})
    if not isinstance(classes, Mapping):
        raise ValueError(f"fleet setting classes must be a table of device classes ([classes.NAME] with "
                         f"{', '.join(sorted(fields))}), got {classes!r}")
    for name, cfg in classes.items():
        if not isinstance(cfg, Mapping):
            raise ValueError(f"fleet setting classes.{name} must be a table ([classes.{name}] with "
                             f"{', '.join(sorted(fields))}), got {cfg!r}")
        base = profiles.get(name)
        bad = sorted(set(cfg) - fields)
        if bad:
            raise ValueError(f"device class {name!r}: unknown setting(s) {', '.join(bad)}; accepted: "
                             f"{', '.join(sorted(fields))}")
        merged = {"seconds_per_step": None, "bandwidth": None, "latency": 0.0, "resources": {"CPU": 1}}
        if base is not None:
            merged.update(seconds_per_step=base.seconds_per_step, bandwidth=base.bandwidth, latency=base.latency,
                          resources=base.resources)
        merged.update(cfg)
        if merged["seconds_per_step"] is None or merged["bandwidth"] is None:
            raise ValueError(f"new device class {name!r} needs seconds_per_step and bandwidth")
        nums = {k: number(f"device class {name!r}: {k}", merged[k]) for k in ("seconds_per_step", "bandwidth",
                                                                               "latency")}
        resources = merged["resources"]
        if not isinstance(resources, Mapping) or not all(isinstance(r, str) for r in resources):
            raise ValueError(f"device class {name!r}: resources must be a table of RESOURCE = AMOUNT, e.g. "
                             f"{{CPU = 1, GPU = 0.25}}, got {resources!r}")
        resources = {r: number(f"device class {name!r}: resources.{r}", v, low=0) for r, v in resources.items()}
        profiles[name] = DeviceProfile(name, nums["seconds_per_step"], nums["bandwidth"], nums["latency"],
                                       resources)
    mix = data.get("mix")
    if isinstance(mix, str):
        mix = parse_mix(mix)
    if not isinstance(mix, Mapping):
        raise ValueError(f"a fleet needs a [mix] table of CLASS = COUNT (or mix = \"gpu=5,cpu=20\"), got "
                         f"{'nothing' if mix is None else repr(mix)}")
    kw = {k: number(k, data[k]) for k in ("jitter", "dropout", "rejoin", "client_jitter") if k in data}
    return FleetSpec(dict(mix), profiles=profiles, **kw)
