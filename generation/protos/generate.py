"""Regenerate the Python code of the media service from its .proto.

    python generation/protos/generate.py            # writes generation/media_pb/
    python generation/protos/generate.py --out DIR  # writes DIR/generation/media_pb/ (used by the sync test)

The include path maps ``generation/protos`` to the virtual root ``generation/media_pb``,
so protoc writes ``generation/media_pb/worldgen/media/v1/media_pb2*.py`` and the
generated imports read ``from generation.media_pb.worldgen.media.v1 import media_pb2``.
"""

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]  # the repository
PROTO_ROOT = ROOT / "generation" / "protos"
PACKAGE_ROOT = "generation/media_pb"
PROTOS = ["worldgen/media/v1/media.proto"]
# Generated files, relative to the output directory (compared by tests/test_media_proto.py).
GENERATED = [
    f"{PACKAGE_ROOT}/{proto[: -len('.proto')]}{suffix}"
    for proto in PROTOS
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
]


def generate(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PACKAGE_ROOT}={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_ROOT / proto) for proto in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see the message above)")
    # Make every generated directory a regular package.
    for proto in PROTOS:
        package_dir = out_dir / PACKAGE_ROOT / Path(proto).parent
        while package_dir != out_dir / "generation":
            (package_dir / "__init__.py").touch()
            package_dir = package_dir.parent
    return [out_dir / name for name in GENERATED]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    for path in generate(parser.parse_args(argv).out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
