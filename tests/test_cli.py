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
    with pytest.raises(SystemExit, match="write KEY=VALUE"):
        main(["sim", "--strategy", "fedbuff", "--budget", "5", "--param", "buffer_size"])


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
