"""deploy/ray/: the Ray cluster launcher config and the KubeRay RayCluster cannot drift from what fedhive needs.

No cloud and no Kubernetes here, so: the launcher config is validated by Ray's own schema code, every ``ray start``
line (and every KubeRay ``rayStartParams`` set) is parsed by Ray's own CLI, versions and images are checked against
pyproject.toml and docker/, and every device class's training resources must fit a worker type. That autoscaling
itself works is tests/sim/test_ray.py (Ray's fake multi-node cluster).
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402
from ray.scripts.scripts import start as ray_start  # noqa: E402

from fedhive.sim.profiles import DEVICE_CLASSES  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RAY = ROOT / "deploy" / "ray"


def ray_pin() -> str:
    m = re.search(r'"ray==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert m, "pyproject.toml must pin ray in the ray extra"
    return m.group(1)


def launcher() -> dict:
    return yaml.safe_load((RAY / "cluster.yaml").read_text())


def kuberay() -> dict:
    return yaml.safe_load((RAY / "kuberay.yaml").read_text())


def parse_ray_start(line: str) -> dict:
    """``[ENV=...] ray start ...`` parsed by Ray's own click command (nothing runs)."""
    words = [w for w in shlex.split(line) if not re.match(r"^[A-Z_]+=", w)]
    assert words[:2] == ["ray", "start"], line
    return ray_start.make_context("start", words[2:]).params


def fits(need: dict, have: dict) -> bool:
    return all(float(have.get(k, 0)) >= float(v) for k, v in need.items())


def test_launcher_config_passes_rays_schema_and_a_typo_does_not():
    validate_config(prepare_config(copy.deepcopy(launcher())))
    bad = copy.deepcopy(launcher())
    bad["available_node_types"]["cpu-worker"]["max_wokers"] = 3
    with pytest.raises(Exception):
        validate_config(prepare_config(bad))


def test_launcher_node_types_autoscale_and_fit_every_device_class():
    c = launcher()
    types = c["available_node_types"]
    head = types[c["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs the simulator, not trainings
    workers = {k: v for k, v in types.items() if k != c["head_node_type"]}
    assert {"cpu-worker", "gpu-worker"} <= set(workers)
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= c["max_workers"], name
    assert workers["gpu-worker"]["resources"].get("GPU", 0) >= 1
    assert 0 < c["idle_timeout_minutes"] <= 30
    for cls, prof in DEVICE_CLASSES.items():
        assert any(fits(prof.resources, t["resources"]) for t in workers.values()), f"{cls} fits no worker type"


def test_launcher_commands_install_cpu_torch_first_and_start_ray_as_intended():
    c = launcher()
    setup = c["setup_commands"]
    torch_i = next(i for i, s in enumerate(setup) if "torch==" in s)
    fedhive_i = next(i for i, s in enumerate(setup) if "fedhive[ray]" in s)
    assert torch_i < fedhive_i and "download.pytorch.org/whl/cpu" in setup[torch_i]
    gpu_setup = c["available_node_types"]["gpu-worker"]["worker_setup_commands"]
    assert any("torch==" in s and "whl/cpu" not in s for s in gpu_setup)  # CUDA torch on GPU workers
    assert any(f"ray[default]=={ray_pin()}" in s for s in c["head_setup_commands"])
    assert "~/fedhive" in c["file_mounts"] and all("$HOME/fedhive" in s for s in (setup[fedhive_i], gpu_setup[-1]))
    head = [parse_ray_start(s) for s in c["head_start_ray_commands"] if "ray start" in s]
    assert len(head) == 1 and head[0]["head"] and head[0]["num_cpus"] == 0
    assert head[0]["autoscaling_config"] and head[0]["dashboard_host"] == "127.0.0.1"
    worker = [parse_ray_start(s) for s in c["worker_start_ray_commands"] if "ray start" in s]
    assert len(worker) == 1 and worker[0]["address"] == "$RAY_HEAD_IP:6379" and not worker[0]["head"]


def test_kuberay_cluster_autoscales_with_pinned_images():
    rc = kuberay()
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["rayVersion"] == ray_pin()
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
    images = {}
    for where, tmpl, params in [("head", head["template"], head["rayStartParams"])] + [
            (n, g["template"], g["rayStartParams"]) for n, g in groups.items()]:
        # KubeRay passes rayStartParams to `ray start` as --key=value: strings only, and Ray must accept them.
        assert all(isinstance(v, str) for v in params.values()), where
        parse_ray_start("ray start " + " ".join(f"--{k}={v}" for k, v in params.items()))
        (container,) = tmpl["spec"]["containers"]
        res = container["resources"]
        assert res["requests"] == res["limits"], f"{where}: KubeRay sizes Ray from limits; keep requests equal"
        images[where] = container["image"]
    assert "nvidia.com/gpu" in groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    # Every image is one docker/ builds, and those build on Ray's image of the pinned version.
    built = {}
    for path in (ROOT / "docker").glob("ray*.Dockerfile"):
        text = path.read_text()
        tag = re.search(r"-t (\S+) \.", text).group(1)
        base = re.search(r"^FROM (\S+)", text, re.M).group(1)
        assert base.startswith(f"rayproject/ray:{ray_pin()}-py311"), f"{path.name}: {base}"
        built[tag] = path.name
    assert set(images.values()) <= set(built), (images, built)
    assert built[images["gpu"]] == "ray-cuda.Dockerfile" and built[images["cpu"]] == "ray.Dockerfile"
