"""The agent's SuperNode command line: profile in the node config, TLS and node authentication passed through."""

from flwr.common.config import parse_config_args

from fedhive.client.agent import Agent, AgentOptions
from fedhive.client.profile import DeviceProfile

PI = DeviceProfile(arch="aarch64", cores=4, memory_gb=3.7, accelerator="none", board="Raspberry Pi 4 Model B Rev 1.4",
                   cpu_quota=None)


def test_command_carries_profile_partition_and_worker(tmp_path):
    agent = Agent(AgentOptions(superlink="10.0.0.1:8000", partition_id=3, num_partitions=8, port=9300,
                               state_dir=str(tmp_path)), profile=PI)
    agent.worker = object()  # as after start_worker(): the socket goes into the node config
    cmd = agent.command()
    assert cmd[1:5] == ["--superlink", "10.0.0.1:8000", "--port", "9300"]
    assert "--insecure" in cmd
    cfg = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert cfg["partition-id"] == 3 and cfg["num-partitions"] == 8
    assert cfg["device-class"] == "rpi4" and cfg["arch"] == "aarch64" and cfg["board"].startswith("Raspberry_Pi_4")
    assert cfg["worker"] == str(tmp_path / "worker.sock")
    assert cfg["data-dir"] == str(tmp_path / "data")


def test_tls_and_node_auth_are_passed_to_the_supernode(tmp_path):
    opts = AgentOptions(superlink="link:8000", insecure=False, root_certificates="/etc/fedhive/ca.crt",
                        auth_private_key="/k/node", auth_public_key="/k/node.pub", device_class="cpu",
                        state_dir=str(tmp_path))
    cmd = Agent(opts, profile=PI).command()
    assert "--insecure" not in cmd
    assert cmd[cmd.index("--root-certificates") + 1] == "/etc/fedhive/ca.crt"
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == "/k/node"
    assert cmd[cmd.index("--auth-supernode-public-key") + 1] == "/k/node.pub"
    cfg = parse_config_args([cmd[cmd.index("--node-config") + 1]])
    assert cfg["device-class"] == "cpu"  # the override wins over the detected rpi4
    # Flower 1.42 derives the public key from the private one (the flag is deprecated): the private key alone will do
    cmd = Agent(AgentOptions(superlink="link:8000", insecure=False, root_certificates="/ca.crt",
                             auth_private_key="/k/node", state_dir=str(tmp_path)), profile=PI).command()
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == "/k/node"
    assert "--auth-supernode-public-key" not in cmd
