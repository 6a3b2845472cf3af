"""Generated gRPC/protobuf code of the media service. Do not edit.

Source: generation/protos/worldgen/media/v1/media.proto.
Regenerate with ``python generation/protos/generate.py`` (``make proto``).
"""
