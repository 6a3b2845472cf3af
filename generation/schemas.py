"""JSON schemas the LLM replies must satisfy, one per generation stage."""


def _strings(min_items: int, max_items: int, max_length: int = 60) -> dict:
    return {"type": "array", "minItems": min_items, "maxItems": max_items,
            "items": {"type": "string", "minLength": 1, "maxLength": max_length}}


def _text(max_length: int, min_length: int = 1) -> dict:
    return {"type": "string", "minLength": min_length, "maxLength": max_length}


def _object(**properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


BIBLE = _object(
    title=_text(120),
    setting=_text(1200),
    history=_text(1200),
    tone=_text(200),
    visual_style=_text(300),
    themes=_strings(2, 6),
    factions=_strings(1, 6, 120),
    rules=_strings(1, 6, 200),
)

CHARACTER = _object(
    bio=_text(300),
    personality=_text(400),
    appearance=_text(400),
    interests=_strings(2, 6),
)

POST = _object(
    caption=_text(600),
    image_prompt=_text(400),
    location=_text(120),
    hashtags=_strings(1, 8, 40),
)


def cast(count: int) -> dict:
    member = _object(name=_text(80), handle={"type": "string", "minLength": 2, "maxLength": 30},
                     concept=_text(300))
    return _object(characters={"type": "array", "minItems": count, "maxItems": count, "items": member})
