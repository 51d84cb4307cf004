"""The fedhive command: sim and bench hetero end to end (small), errors that say how to fix them."""

import json
import subprocess
import sys

import pytest

from fedhive.cli import main


def test_sim_writes_results_json(tmp_path, capsys):
    rc = main(["sim", "--strategy", "fedbuff", "--task", "synthetic", "--fleet", "small", "--budget", "30",
               "--seed", "2", "--param", "buffer_size=3", "--target", "0.3", "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (res["strategy"], res["task"], res["seed"]) == ("fedbuff", "synthetic", 2)
    assert set(res["history"][0]) == {"time", "version", "accuracy", "loss", "client_updates"}
    assert {"accuracy", "version", "client_updates", "bytes"} <= set(res["final"])
    assert res["strategy_config"]["buffer_size"] == 3
    assert "fedhive sim: fedbuff" in capsys.readouterr().out


def test_bench_hetero_smoke(tmp_path):
    rc = main(["bench", "hetero", "--clients", "10", "--budget", "120", "--target", "0.3", "--executor", "inline",
               "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["target_accuracy"] == 0.3 and res["scenario"]["clients"] == 10
    assert list(res["strategies"]) == ["fedavg", "fedasync", "fedbuff", "fedfix", "fedcompass", "fedasmu"]
    for r in res["strategies"].values():
        assert {"time_to_target", "speedup", "final_accuracy", "client_updates", "bytes"} <= set(r)
    assert res["strategies"]["fedavg"]["speedup"] == pytest.approx(1.0)
    png = (tmp_path / "accuracy_vs_time.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bad_input_names_what_is_accepted():
    out = subprocess.run([sys.executable, "-m", "fedhive.cli", "sim", "--strategy", "fedprox", "--budget", "5",
                          "--quiet"], capture_output=True, text=True)
    assert out.returncode != 0 and "valid: fedavg, fedasync" in out.stderr


@pytest.mark.parametrize("argv, words", [
    (["sim", "--strategy", "fedbuff", "--budget", "5", "--param", "buffer_size"],
     "fedhive sim: error: bad strategy parameter 'buffer_size': write KEY=VALUE, e.g. buffer_size=10"),
    (["sim", "--strategy", "fedbuff", "--budget", "5", "--client", "=0.1"],
     "fedhive sim: error: bad client setting '=0.1': write KEY=VALUE, e.g. lr=0.05"),
    (["sim", "--strategy", "fedbuff", "--budget", "5", "--mix", "gpu=two"],
     "fedhive sim: error: device count for 'gpu' in the mix 'gpu=two' must be an integer >= 0, got 'two'"),
    (["bench", "hetero", "--param", "alpha=0.4"],
     "fedhive bench: error: bad --param 'alpha=0.4': write STRATEGY:KEY=VALUE, e.g. fedasync:alpha=0.4"),
    (["bench", "hetero", "--param", "fedasync:alpha"],
     "fedhive bench: error: bad --param 'alpha': write STRATEGY:KEY=VALUE, e.g. fedasync:alpha=0.4"),
])
def test_bad_key_value_options_name_the_option_the_item_and_the_form(argv, words, capsys):
    assert main(argv) == 2
    assert words in capsys.readouterr().err


def test_key_value_options_are_typed_as_json_else_strings():
    from fedhive.cli import _pairs

    assert _pairs(["a=1", " b = 0.5 ", "c=true", "d=x", 'e="3"', "f=[1, 2]", "g=null", "h=a=b"], "p", "a=1") == {
        "a": 1, "b": 0.5, "c": True, "d": "x", "e": "3", "f": [1, 2], "g": None, "h": "a=b"}
    assert _pairs(None, "p", "a=1") == {}


def test_sigterm_runs_the_cleanup_of_fedhive_up_and_the_benchmarks(tmp_path):
    """exit_on_sigterm: SIGTERM becomes SystemExit, so `finally` blocks (LocalCluster.close) run."""
    marker = tmp_path / "closed"
    code = ("import os, signal, time\n"
            "from fedhive.localcluster import exit_on_sigterm\n"
            "exit_on_sigterm()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "finally:\n"
            f"    open({str(marker)!r}, 'w').write('yes')\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == 143 and marker.read_text() == "yes"


@pytest.mark.parametrize("argv, words", [
    (["--strategy", "nope"], "run-config strategy must be one of fedavg"),
    (["--set", "ttl=0"], "run-config ttl must be a finite number > 0, got 0"),
    (["--set", "poll-interval=0"], "run-config poll-interval must be a finite number > 0"),
    (["--metrics-address", "127.0.0.1:99999"], "run-config metrics-address ('' for none) must be HOST:PORT"),
    (["--set", "store-address=::1:9300"], "write an IPv6 host in brackets"),
])
def test_fedhive_up_refuses_bad_run_config_values_before_starting_a_process(argv, words, tmp_path, monkeypatch,
                                                                            capsys):
    import fedhive.localcluster
    import fedhive.up

    def no_process(*a, **k):
        raise AssertionError("fedhive up started something before checking its run config")

    monkeypatch.setattr(fedhive.localcluster, "exit_on_sigterm", lambda: None)
    monkeypatch.setattr(fedhive.up, "LocalCluster", no_process)
    monkeypatch.setattr(fedhive.up, "_prewarm", no_process)
    assert main(["up", "--out", str(tmp_path / "run"), *argv]) == 2
    assert words in capsys.readouterr().err


class _Stop(Exception):
    pass


@pytest.mark.parametrize("kwargs, steps, params", [
    ({"strategy": "fedbuff", "agents": 3}, 300, "buffer_size=2"),
    ({"strategy": "fedbuff", "agents": 40}, 300, "buffer_size=10"),
    ({"strategy": "fedbuff", "agents": 3, "settings": {"strategy-params": "buffer_size=7"}}, 300, "buffer_size=7"),
    ({"strategy": "fedasync", "agents": 3, "settings": {"local-steps": 20}}, 20, ""),
    ({"strategy": "fedcompass"}, 300, "q_min=300,q_max=1200,client_weights=samples"),
])
def test_fedhive_up_real_path_defaults_and_what_overrides_them(kwargs, steps, params, tmp_path, monkeypatch):
    """`fedhive up`'s local work: 300 local steps and FedBuff's buffer at half the devices (2..10) unless set."""
    import fedhive.up

    seen = {}

    def record(task, n, config, data_dir):
        seen.update(config)
        raise _Stop

    monkeypatch.setattr(fedhive.up, "_prewarm", record)
    with pytest.raises(_Stop):
        fedhive.up.up(out=str(tmp_path / "run"), live=False, **kwargs)
    assert seen["local-steps"] == steps and seen.get("strategy-params", "") == params
    assert [fedhive.up.fedbuff_buffer(n) for n in (1, 3, 6, 20, 21, 100)] == [2, 2, 3, 10, 10, 10]


def test_agent_refuses_a_training_device_torch_lacks_before_starting_anything(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: cuda:0 is a valid training device here")
    rc = main(["agent", "--superlink", "127.0.0.1:1", "--insecure", "--training-device", "cuda:0",
               "--state-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "fedhive agent: error: training device 'cuda:0': torch sees 0 CUDA device(s) here; pass " \
           "--training-device cpu or auto" in err
    assert not (tmp_path / "supernode.pid").exists()
    rc = main(["agent", "--superlink", "127.0.0.1:1", "--insecure", "--training-device", "gpu0"])
    assert rc == 2 and "training device must be one of auto, cpu, cuda, cuda:N (a GPU index) or mps, got 'gpu0'" \
        in capsys.readouterr().err
