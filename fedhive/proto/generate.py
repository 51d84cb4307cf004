"""Regenerate the Python modules of fedhive's .proto files: ``python -m fedhive.proto.generate``.

Needs ``grpcio-tools`` whose bundled protoc is not newer than the installed protobuf runtime (grpcio-tools 1.76
bundles protoc 31.1, which suits protobuf >= 6.31). The generated files are committed, so users never need it.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    try:
        from grpc_tools import protoc
    except ImportError:
        print("grpcio-tools is not installed: pip install 'grpcio-tools==1.76.*' (in a separate venv is fine)",
              file=sys.stderr)
        return 2
    root = Path(__file__).resolve().parents[2]
    protos = sorted(str(p.relative_to(root)) for p in (root / "fedhive" / "proto").glob("*.proto"))
    args = ["protoc", f"-I{root}", f"--python_out={root}", f"--pyi_out={root}", f"--grpc_python_out={root}", *protos]
    return protoc.main(args)


if __name__ == "__main__":
    sys.exit(main())
