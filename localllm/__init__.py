"""localllm: the project's own small OpenAI-compatible server — a *procedural stand-in*.

It is not a language model. It answers ``POST /v1/chat/completions`` with JSON
that validates against the request's JSON schema, built deterministically from
word lists and from salient words of the prompt (so the same request always
gives the same reply). It lets the whole pipeline run locally with no key and
no network, and it has fault-injection switches (latency, 429/5xx, hangs,
invalid JSON) for tests. Production points ``LLM_BASE_URL`` at a real
OpenAI-compatible endpoint instead.

    python -m localllm --host 127.0.0.1 --port 8090 [--latency SECONDS] [--api-key KEY]

See ``server.py`` for the HTTP API and ``content.py`` for the generator.
"""

MODEL_ID = "worldgen-procedural-1"
SYSTEM_FINGERPRINT = "localllm-procedural-stand-in-v1"
