"""The LLM outputs, one pydantic model per generation stage.

Each model is both the JSON schema sent to the LLM (``json_schema(model)``) and the
validation of its reply (``model.model_validate``; ``error_lines`` turns a
``ValidationError`` into ``"$.path: problem"`` lines).
"""

import functools
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


def _text(max_length: int, min_length: int = 1):
    return Annotated[str, Field(min_length=min_length, max_length=max_length)]


def _strings(min_items: int, max_items: int, max_length: int = 60):
    return Annotated[list[_text(max_length)], Field(min_length=min_items, max_length=max_items)]


class Output(BaseModel):
    # OpenAI strict mode: no extra properties; strict: no type coercion ("5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)


class Bible(Output):
    title: _text(120)
    setting: _text(1200)
    history: _text(1200)
    tone: _text(200)
    visual_style: _text(300)
    themes: _strings(2, 6)
    factions: _strings(1, 6, 120)
    rules: _strings(1, 6, 200)


class Character(Output):
    bio: _text(300)
    personality: _text(400)
    appearance: _text(400)
    interests: _strings(2, 6)


class Post(Output):
    caption: _text(600)
    image_prompt: _text(400)
    location: _text(120)
    hashtags: _strings(1, 8, 40)


class CastMember(Output):
    name: _text(80)
    handle: _text(30, min_length=2)
    concept: _text(300)


BIBLE, CHARACTER, POST = Bible, Character, Post


@functools.cache
def cast(count: int) -> type[Output]:
    """The cast model: exactly ``count`` characters."""
    members = Annotated[list[CastMember], Field(min_length=count, max_length=count)]
    return create_model(f"Cast{count}", __base__=Output, characters=(members, ...))


@functools.cache
def json_schema(model: type[BaseModel]) -> dict:
    """The self-contained JSON schema to send for ``model``: ``$ref``s inlined, no ``$defs``
    or titles. Shared (cached): do not mutate it."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, list):
            return [inline(item) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
        return {key: ({name: inline(sub) for name, sub in value.items()} if key == "properties" else inline(value))
                for key, value in node.items() if key != "title"}
    return inline(schema)


def error_lines(error: ValidationError) -> list[str]:
    """Each error of ``error`` as ``"$.path: problem"`` (e.g. ``$.characters[2].handle: Input should be ...``)."""
    lines = []
    for item in error.errors(include_url=False):
        path = "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        lines.append(f"{path}: {item['msg']}")
    return lines
