import pytest

from fedhive.sim.profiles import DEVICE_CLASSES, PRESETS, DeviceProfile, FleetSpec, load_fleet, parse_mix, scale_mix


def test_builtin_classes_follow_the_benchmark():
    assert {"gpu", "cpu", "rpi5", "rpi4", "rpi-zero2"} <= set(DEVICE_CLASSES)
    assert [DEVICE_CLASSES[c].seconds_per_step for c in ("gpu", "cpu", "rpi4")] == [0.01, 0.05, 0.25]
    assert PRESETS["hetero"].mix == {"gpu": 5, "cpu": 20, "rpi4": 25} and PRESETS["hetero"].jitter == 0.3


def test_transfer_time():
    p = DEVICE_CLASSES["rpi4"]
    assert p.transfer(5_000_000) == pytest.approx(0.05 + 1.0)


def test_mix_parsing_and_scaling():
    assert parse_mix("gpu=5, cpu=20,rpi4=25") == {"gpu": 5, "cpu": 20, "rpi4": 25}
    with pytest.raises(ValueError, match="bad device mix entry 'gpu:5': write CLASS=COUNT, e.g. gpu=5"):
        parse_mix("gpu:5")
    assert parse_mix("gpu=5,cpu=2.0,") == {"gpu": 5, "cpu": 2}  # an integral float is a count
    for text, bad in (("gpu=x", "'x'"), ("gpu=2.5", "2.5"), ("gpu=-1", "-1"), ("gpu=true", "True"),
                      ("gpu=NaN", "nan")):
        with pytest.raises(ValueError, match=f"device count for 'gpu' in the mix '{text}' must be an integer >= 0, "
                                             f"got {bad}"):
            parse_mix(text)
    with pytest.raises(ValueError, match="empty device mix"):
        parse_mix(" , ")
    assert scale_mix({"gpu": 5, "cpu": 20, "rpi4": 25}, 10) == {"gpu": 1, "cpu": 4, "rpi4": 5}
    assert sum(scale_mix({"gpu": 5, "cpu": 20, "rpi4": 25}, 1000).values()) == 1000


def test_fleet_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown device class 'tpu'; known: gpu, cpu"):
        FleetSpec({"tpu": 3})
    with pytest.raises(ValueError, match=r"dropout \(a probability per task\) must be a finite number >= 0 and < 1, "
                                         r"got 1\.5"):
        FleetSpec({"cpu": 3}, dropout=1.5)
    with pytest.raises(ValueError, match=r"jitter \(a log-normal sigma\) must be a finite number >= 0 and < 5"):
        FleetSpec({"cpu": 3}, jitter="0.3")
    with pytest.raises(ValueError, match="rejoin .* must be a finite number >= 0, got nan"):
        FleetSpec({"cpu": 3}, rejoin=float("nan"))
    with pytest.raises(ValueError, match="device count for 'cpu' must be an integer >= 0, got True"):
        FleetSpec({"cpu": True})
    with pytest.raises(ValueError, match="device class 'x': bandwidth must be a finite number > 0, got 0"):
        DeviceProfile("x", 0.1, 0, 0.0)
    with pytest.raises(ValueError, match="device class 'x': latency must be a finite number >= 0, got -0.1"):
        DeviceProfile("x", 0.1, 1e6, -0.1)
    with pytest.raises(ValueError, match="neither a preset"):
        load_fleet("no-such-fleet")


def test_fleet_counts_from_toml_json_or_numpy_become_ints():
    np = pytest.importorskip("numpy")
    fleet = FleetSpec({"cpu": 3.0, "gpu": np.int64(2)})
    assert fleet.mix == {"cpu": 3, "gpu": 2} and all(type(n) is int for n in fleet.mix.values())
    assert fleet.classes() == ["cpu"] * 3 + ["gpu"] * 2


def test_toml_fleet_with_a_custom_class(tmp_path):
    f = tmp_path / "fleet.toml"
    f.write_text('jitter = 0.1\ndropout = 0.02\n[mix]\ncpu = 3\njetson = 2\n'
                 '[classes.jetson]\nseconds_per_step = 0.02\nbandwidth = 5e7\nlatency = 0.01\n')
    fleet = load_fleet(f)
    assert fleet.size == 5 and fleet.classes() == ["cpu"] * 3 + ["jetson"] * 2
    assert fleet.profile("jetson").seconds_per_step == 0.02 and fleet.jitter == 0.1 and fleet.dropout == 0.02
    f.write_text('dropout = "often"\n[mix]\ncpu = 3\n')
    with pytest.raises(ValueError, match="dropout must be a finite number, got 'often'"):
        load_fleet(f)
    f.write_text('[mix]\ncpu = 3\n[classes.cpu]\nbandwidth = "fast"\n')
    with pytest.raises(ValueError, match="device class 'cpu': bandwidth must be a finite number, got 'fast'"):
        load_fleet(f)
    f.write_text("[mix]\ncpu = 3\n[speeds]\nx = 1\n")
    with pytest.raises(ValueError, match="unknown fleet setting"):
        load_fleet(f)


def test_ray_task_options_ask_for_a_gpu_share_only_when_told_to():
    from fedhive.sim.executor import RAY_GPUS, make_executor, ray_task_options

    gpu = DEVICE_CLASSES["gpu"].resources
    assert ray_task_options(gpu, use_gpus=True) == {"num_cpus": 1.0, "num_gpus": 0.25, "max_retries": 3}
    assert ray_task_options(gpu, use_gpus=False) == {"num_cpus": 1.0, "max_retries": 3}
    assert ray_task_options({"CPU": 2, "pi": 1}, use_gpus=True) == {"num_cpus": 2.0, "max_retries": 3,
                                                                     "resources": {"pi": 1.0}}
    assert set(RAY_GPUS) == {"auto", "always", "never"}
    with pytest.raises(ValueError, match="ray_gpus must be one of auto, always, never"):
        make_executor("inline", None, None, ray_gpus="sometimes")


# --------------------------------------------------------------------------- fleet TOML errors name the key
@pytest.mark.parametrize("text, words", [
    ("[classes]\nx = 5\n[mix]\ncpu = 1\n", "classes.x must be a table"),
    ("classes = 3\n[mix]\ncpu = 1\n", "classes must be a table"),
    ("classes = [1, 2]\n[mix]\ncpu = 1\n", "classes must be a table"),
    ("[classes.j]\nseconds_per_step = 0.1\nbandwidth = 1e6\nresources = 4\n[mix]\nj = 1\n",
     "'j': resources must be a table"),
    ("[classes.j]\nseconds_per_step = 0.1\nbandwidth = 1e6\nresources = {CPU = 'x'}\n[mix]\nj = 1\n",
     "resources.CPU"),
    ("[classes.j]\nseconds_per_step = 'fast'\nbandwidth = 1e6\n[mix]\nj = 1\n", "'j': seconds_per_step"),
    ("[classes.j]\nbandwidth = 1e6\n[mix]\nj = 1\n", "needs seconds_per_step and bandwidth"),
    ("[classes.j]\nspeed = 1\n[mix]\nj = 1\n", "unknown setting.*speed"),
    ("mix = 5\n", "\\[mix\\] table of CLASS = COUNT.*got 5"),
    ("jitter = 0.1\n", "\\[mix\\] table.*got nothing"),
    ("[mix]\ncpu = 'many'\n", "device count for 'cpu'"),
    ("[mix]\ncpu = {a = 1}\n", "device count for 'cpu'"),
    ("[mix]\nnope = 1\n", "unknown device class 'nope'"),
    ("jitter = 'x'\n[mix]\ncpu = 1\n", "jitter"),
    ("dropout = 2\n[mix]\ncpu = 1\n", "dropout"),
    ("speed = 1\n[mix]\ncpu = 1\n", "unknown fleet setting.*speed"),
    ("[mix\ncpu = 1\n", "not valid TOML"),
])
def test_bad_fleet_toml_is_a_value_error_naming_the_key(tmp_path, text, words):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=words):
        load_fleet(path)


def test_a_good_fleet_toml_with_a_new_class(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text("jitter = 0.1\n[mix]\njetson = 2\ncpu = 1\n[classes.jetson]\nseconds_per_step = 0.02\n"
                    "bandwidth = 50e6\nresources = {CPU = 1, GPU = 0.5}\n")
    fleet = load_fleet(path)
    assert fleet.mix == {"jetson": 2, "cpu": 1} and fleet.jitter == 0.1
    assert fleet.profile("jetson").resources == {"CPU": 1.0, "GPU": 0.5}
