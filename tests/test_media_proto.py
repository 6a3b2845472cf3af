"""The committed generated code matches what the .proto generates today."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_protos", ROOT / "generation" / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_in_sync_with_the_proto(tmp_path):
    generator = load_generator()
    fresh = generator.generate(tmp_path)
    assert fresh
    for path in fresh:
        name = path.relative_to(tmp_path)
        committed = ROOT / name
        assert committed.exists(), f"{name} is missing; run `python generation/protos/generate.py`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{name} is out of date with the .proto; run `python generation/protos/generate.py`"
        )


def test_generated_imports_resolve():
    from generation.media_pb.worldgen.media.v1 import media_pb2, media_pb2_grpc

    assert media_pb2.DESCRIPTOR.services_by_name["MediaRenderer"].full_name == "worldgen.media.v1.MediaRenderer"
    assert hasattr(media_pb2_grpc, "MediaRendererStub")
