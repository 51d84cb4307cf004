"""``fedhive register-nodes`` / ``register_node_key`` on bad input: a missing key, a key that is not one, nothing
listening. Each is a clear error naming the key; nothing is registered."""

from __future__ import annotations

import pytest

from fedhive.cli import main
from fedhive.client.agent import flower_env
from fedhive.localcluster import free_port, register_node_key


def _home(tmp_path):
    home = tmp_path / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "127.0.0.1:{free_port()}"\n'
                                      'insecure = true\n')
    return home


def test_missing_key_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist .*ssh-keygen"):
        register_node_key(tmp_path / "nope.pub", "x", flower_env({"FLWR_HOME": str(_home(tmp_path))}))


def test_corrupt_key_and_unreachable_superlink_fail_clearly(tmp_path, capsys):
    home = _home(tmp_path)
    bad = tmp_path / "bad.pub"
    bad.write_bytes(b"\x00\xffnot a key" * 1000)
    with pytest.raises(RuntimeError, match="bad.pub"):
        register_node_key(bad, "x", flower_env({"FLWR_HOME": str(home)}), timeout=60)
    # The CLI keeps going over the keys, reports each, and exits 1.
    assert main(["register-nodes", "--connection", "x", "--flwr-home", str(home), "--wait", "0",
                 str(tmp_path / "missing.pub"), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "missing.pub: public key" in out and "bad.pub:" in out
