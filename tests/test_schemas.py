"""generation.schemas: the JSON schema sent for each LLM output is strict and self-contained,
and the same model refuses invalid replies with readable messages."""

import json

import pytest
from pydantic import ValidationError

from generation import schemas
from generation.schemas import error_lines, json_schema

pytestmark = pytest.mark.fast

OUTPUTS = {
    "bible": schemas.BIBLE,
    "character": schemas.CHARACTER,
    "post": schemas.POST,
    "cast_1": schemas.cast(1),
    "cast_4": schemas.cast(4),
}
ALLOWED_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
}

POST = {
    "caption": "Tea at the floating market ✨",
    "image_prompt": "watercolor teahouse on a cloud",
    "location": "Vellmarsh",
    "hashtags": ["#TeaClouds"],
}
MEMBER = {"name": "Wren Mosslight", "handle": "wren.moss", "concept": "A lantern-keeper who paints the tide."}


def schema_nodes(schema: dict):
    """Every (sub)schema of ``schema``."""
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from schema_nodes(sub)
    if "items" in schema:
        yield from schema_nodes(schema["items"])


def problems(model, data) -> list[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return error_lines(info.value)


@pytest.mark.parametrize("name", OUTPUTS)
def test_schema_sent_is_strict_and_self_contained(name):
    schema = json_schema(OUTPUTS[name])
    assert "$ref" not in json.dumps(schema) and "$defs" not in schema
    objects = [node for node in schema_nodes(schema) if node["type"] == "object"]
    assert objects and all(node["additionalProperties"] is False for node in objects)
    assert all(node["required"] == list(node["properties"]) for node in objects)
    assert all(set(node) <= ALLOWED_KEYWORDS for node in schema_nodes(schema))  # no titles, defaults...


def test_schemas_sent_keep_their_limits():
    assert json_schema(schemas.POST) == {
        "type": "object",
        "additionalProperties": False,
        "required": ["caption", "image_prompt", "location", "hashtags"],
        "properties": {
            "caption": {"type": "string", "minLength": 1, "maxLength": 600},
            "image_prompt": {"type": "string", "minLength": 1, "maxLength": 400},
            "location": {"type": "string", "minLength": 1, "maxLength": 120},
            "hashtags": {
                "type": "array",
                "minItems": 1,
                "maxItems": 8,
                "items": {"type": "string", "minLength": 1, "maxLength": 40},
            },
        },
    }
    members = json_schema(schemas.cast(3))["properties"]["characters"]
    assert (members["minItems"], members["maxItems"]) == (3, 3)
    assert members["items"]["properties"]["handle"] == {"type": "string", "minLength": 2, "maxLength": 30}


def test_cast_models_are_cached_per_count():
    assert schemas.cast(3) is schemas.cast(3) and schemas.cast(3) is not schemas.cast(4)
    assert json_schema(schemas.cast(3)) is json_schema(schemas.cast(3))


PROFILE = {
    "bio": "b",
    "personality": "p",
    "appearance": "a",
    "interests": ["tea", "tides"],
    "diction": "short sentences, no emoji",
    "quirks": ["ends with a question", "counts things"],
    "never_says": ["anything about money", "goodbye"],
}
MOMENT = {"place": "the pier", "time": "dawn", "mood": "restless", "event": "a gull steals a letter"}


def test_valid_documents_pass_and_dump_to_plain_dicts():
    assert schemas.POST.model_validate(POST).model_dump() == POST
    cast = {"characters": [MEMBER, {**MEMBER, "handle": "wr"}]}
    assert schemas.cast(2).model_validate(cast).model_dump() == cast
    assert schemas.CHARACTER.model_validate(PROFILE).model_dump() == PROFILE
    plan = {"moments": [MOMENT, {**MOMENT, "place": "the ferry"}]}
    assert schemas.plan(2).model_validate(plan).model_dump() == plan


def test_invalid_documents_are_refused_with_their_paths():
    assert problems(schemas.POST, {**POST, "caption": 5}) == ["$.caption: Input should be a valid string"]
    assert problems(schemas.POST, {**POST, "hashtags": ["#ok", 7]}) == ["$.hashtags[1]: Input should be a valid string"]
    missing = {k: v for k, v in POST.items() if k != "location"}
    assert problems(schemas.POST, missing) == ["$.location: Field required"]
    assert problems(schemas.POST, {**POST, "mood": "sunny"}) == ["$.mood: Extra inputs are not permitted"]
    assert problems(schemas.POST, {**POST, "location": "x" * 121}) == [
        "$.location: String should have at most 120 characters"
    ]
    assert problems(schemas.POST, {**POST, "location": ""}) == ["$.location: String should have at least 1 character"]
    assert problems(schemas.POST, {**POST, "hashtags": []}) == [
        "$.hashtags: List should have at least 1 item after validation, not 0"
    ]
    assert problems(schemas.POST, []) == ["$: Input should be a valid dictionary or instance of Post"]


def test_cast_of_the_wrong_length_is_refused():
    assert problems(schemas.cast(3), {"characters": [MEMBER, MEMBER]}) == [
        "$.characters: List should have at least 3 items after validation, not 2"
    ]
    assert problems(schemas.cast(1), {"characters": [MEMBER, MEMBER]}) == [
        "$.characters: List should have at most 1 item after validation, not 2"
    ]
    assert problems(schemas.cast(2), {"characters": [MEMBER, {**MEMBER, "handle": "w", "x": 1}]}) == [
        "$.characters[1].handle: String should have at least 2 characters",
        "$.characters[1].x: Extra inputs are not permitted",
    ]


def test_no_type_coercion():
    assert problems(schemas.CHARACTER, {**PROFILE, "interests": ("tea", "tides")}) == [
        "$.interests: Input should be a valid list"
    ]


def test_a_plan_has_exactly_one_moment_per_post():
    assert problems(schemas.plan(2), {"moments": [MOMENT]}) == [
        "$.moments: List should have at least 2 items after validation, not 1"
    ]
