"""Prompt builders: the world snapshot plus context read from Mongo. Pure functions."""

import json

from generation.contracts import WorldSnapshot

SYSTEM = (
    "You write content for worldgen, a generator of fictional, Instagram-like worlds. "
    "Stay consistent with the world bible, keep it safe for work, and reply only with JSON "
    "matching the given schema."
)


def _world(world: WorldSnapshot) -> str:
    return (
        f"World: {world.name}\nPremise: {world.premise}\nGenre: {world.genre}\nTone: {world.tone}\n"
        f"Visual style: {world.visual_style}\nWrite in language: {world.language}"
    )


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def bible(world: WorldSnapshot, *, previous: dict | None = None, feedback: str | None = None) -> list[dict]:
    text = f"{_world(world)}\n\nWrite the world bible: setting, history, tone, visual style, themes, factions, rules."
    if previous and feedback:
        text += (
            f"\n\nA reviewer rejected this earlier version:\n{json.dumps(previous)}\n"
            f"Their feedback: {feedback}\nWrite a new version that addresses the feedback."
        )
    return _messages(text)


def cast(world: WorldSnapshot, bible_doc: dict) -> list[dict]:
    return _messages(
        f"{_world(world)}\n\nWorld bible:\n{json.dumps(bible_doc)}\n\n"
        f"Invent {world.character_count} distinct characters who post on this world's social network: "
        "for each a name, a unique lowercase handle (letters, digits, underscores) and a one-line concept."
    )


def character(world: WorldSnapshot, bible_doc: dict, member: dict) -> list[dict]:
    return _messages(
        f"{_world(world)}\n\nWorld bible:\n{json.dumps(bible_doc)}\n\n"
        f"Write the profile of {member['name']} (@{member['handle']}): {member['concept']}. "
        "Give a short bio for their profile, their personality, their appearance (for an avatar) and interests."
    )


def post(world: WorldSnapshot, bible_doc: dict, profile: dict, earlier_captions: list[str], index: int) -> list[dict]:
    earlier = "\n".join(f"- {caption}" for caption in earlier_captions[-10:]) or "(none yet)"
    return _messages(
        f"{_world(world)}\n\nSetting: {bible_doc.get('setting', '')}\n\n"
        f"You are {profile['name']} (@{profile['handle']}). {profile.get('bio', '')} "
        f"Personality: {profile.get('personality', '')}\n\nYour earlier posts:\n{earlier}\n\n"
        f"Write post number {index + 1}: a caption that does not repeat earlier posts, a prompt for its image, "
        "a location in this world and hashtags."
    )
