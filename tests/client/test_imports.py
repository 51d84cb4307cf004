"""The client side's layering: ``fedhive.client`` never imports ``fedhive.server``."""

import subprocess
import sys


def test_the_client_modules_do_not_import_the_server():
    code = ("import sys\n"
            "import fedhive.client.agent, fedhive.client.app, fedhive.client.trainer, fedhive.client.worker\n"
            "print(sorted(m for m in sys.modules if m.startswith('fedhive.server')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
