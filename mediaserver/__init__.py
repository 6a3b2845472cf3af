"""Reference media server for worldgen: a gRPC ``MediaRenderer`` that draws procedural images.

The images are procedural (Pillow: gradients, shapes, a few words of the prompt),
deterministic and seeded by the request, so the whole pipeline runs end to end
with no model and no network; that is the default. With ``--image-backend openai``
(``MEDIA_IMAGE_BACKEND=openai``) the same server asks an OpenAI-compatible image API
instead (``openai_images.py``). Production may also run its own image model behind the
same proto (``generation/protos/worldgen/media/v1/media.proto``); clients do not change.

Run: ``python -m mediaserver --host 127.0.0.1 --port 50051`` (the default port is MEDIA_GRPC_TARGET's).
"""
