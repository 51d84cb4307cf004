"""``flower-supernode`` with its polls shortened in memory, for ``benchmarks/roundtrip.py`` only: measures what
Flower's hard-coded sleeps in ``flwr/supernode/start_client_internal.py`` cost per task (3 s after an empty pull
from the SuperLink; 0.5 s between looks for the ClientApp's reply), for the upstream proposal in the README.
Nothing in Flower's installed files is changed and fedhive never runs this.

    python benchmarks/fast_supernode.py IDLE_SECONDS REPLY_POLL_SECONDS <flower-supernode arguments>
"""

import sys
import time
import types

import flwr.supernode.start_client_internal as sci
from flwr.supernode.cli.flower_supernode import flower_supernode

idle, reply_poll = float(sys.argv[1]), float(sys.argv[2])


def _sleep(seconds: float) -> None:
    # the module's only sleeps: 3 s (idle, after an empty pull) and 0.5 s (waiting for a reply or its objects)
    time.sleep(idle if seconds == 3 else reply_poll if seconds == 0.5 else seconds)


sci.time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
sci.time.sleep = _sleep
sys.argv = ["flower-supernode", *sys.argv[3:]]
flower_supernode()
