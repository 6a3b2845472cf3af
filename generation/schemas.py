"""The LLM outputs, one pydantic model per generation stage.

Each model is both the JSON schema sent to the LLM (``json_schema(model)``) and the
validation of its reply (``model.model_validate``; ``error_lines`` turns a
``ValidationError`` into ``"$.path: problem"`` lines).
"""

import functools
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model


def text(max_length: int, min_length: int = 1):
    """A required string field of bounded length."""
    return Field(min_length=min_length, max_length=max_length)


def items(min_items: int, max_items: int):
    """A required list field of bounded length."""
    return Field(min_length=min_items, max_length=max_items)


Word = Annotated[str, Field(min_length=1, max_length=60)]  # a theme, an interest
Tag = Annotated[str, Field(min_length=1, max_length=40)]
Name = Annotated[str, Field(min_length=1, max_length=120)]
Line = Annotated[str, Field(min_length=1, max_length=200)]


class Output(BaseModel):
    # OpenAI strict mode: no extra properties; strict: no type coercion ("5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)


class Bible(Output):
    title: str = text(120)
    setting: str = text(1200)
    history: str = text(1200)
    tone: str = text(200)
    visual_style: str = text(300)
    themes: list[Word] = items(2, 6)
    factions: list[Name] = items(1, 6)
    rules: list[Line] = items(1, 6)


class Character(Output):
    bio: str = text(300)
    personality: str = text(400)
    appearance: str = text(400)
    interests: list[Word] = items(2, 6)
    diction: str = text(300)  # how they write
    quirks: list[Line] = items(2, 4)
    never_says: list[Line] = items(2, 4)


class Moment(Output):
    """One planned post: where, when, in what mood, what happens."""

    place: str = text(120)
    time: str = text(80)
    mood: str = text(80)
    event: str = text(240)


class Post(Output):
    caption: str = text(600)
    image_prompt: str = text(400)
    location: str = text(120)
    hashtags: list[Tag] = items(1, 8)


class CastMember(Output):
    name: str = text(80)
    handle: str = text(30, min_length=2)
    concept: str = text(300)


class WorldEvent(Output):
    """A live world's happening of the day."""

    title: str = text(120)
    description: str = text(600)


class Comment(Output):
    comment: str = text(300)


class Memory(Output):
    """A character's memory of the world so far, rewritten after each day it acts in (bounded)."""

    summary: str = text(600)


BIBLE, CHARACTER, POST = Bible, Character, Post


@functools.cache
def cast(count: int) -> type[Output]:
    """The cast model: exactly ``count`` characters."""
    members = Annotated[list[CastMember], Field(min_length=count, max_length=count)]
    return create_model(f"Cast{count}", __base__=Output, characters=(members, ...))


@functools.cache
def plan(count: int) -> type[Output]:
    """A character's plan: exactly ``count`` moments, one per post."""
    moments = Annotated[list[Moment], Field(min_length=count, max_length=count)]
    return create_model(f"Plan{count}", __base__=Output, moments=(moments, ...))


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
        return {
            key: ({name: inline(sub) for name, sub in value.items()} if key == "properties" else inline(value))
            for key, value in node.items()
            if key != "title"
        }

    return inline(schema)


def error_lines(error: ValidationError) -> list[str]:
    """Each error of ``error`` as ``"$.path: problem"`` (e.g. ``$.characters[2].handle: Input should be ...``)."""
    lines = []
    for item in error.errors(include_url=False):
        path = "$" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in item["loc"])
        lines.append(f"{path}: {item['msg']}")
    return lines
