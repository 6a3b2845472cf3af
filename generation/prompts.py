"""Prompt builders: the world snapshot plus context read from Mongo. Pure functions.

Version 4, plan then write: each character's profile carries an explicit voice. One call per
character plans its posts as ordinary moments (place, time, mood, what happens), each started from a
different everyday situation (``SITUATIONS``), so a small model does not plan every post around the
premise. Each post then writes one moment in that voice. Posts never see the premise or the bible, and
not the earlier captions either: a 0.5B model copies whatever it is shown. The caption guard
(``generation.quality.guard_caption``) checks each caption against the earlier ones and the prompt
instead; a post it empties is asked once more, told which sentences not to write (``avoiding``).
Every call samples with its own seed. docs/QUALITY.md has the figures of each version.
"""

import json
import re

from generation.contracts import WorldSnapshot

PROMPT_VERSION = "4"  # recorded on every task document; bump it whenever a prompt changes

SYSTEM = (
    "You write content for worldgen, a generator of fictional, Instagram-like worlds. "
    "Stay consistent with the world's facts, keep it safe for work, and reply only with JSON "
    "matching the given schema."
)

# Sampling per stage, sent where the provider takes it (LLM_SEND_SAMPLING): more freedom for
# plans and posts, penalties against repeating words.
SAMPLING = {
    "bible": {"temperature": 0.8, "top_p": 0.95},
    "cast": {"temperature": 0.9, "top_p": 0.95},
    "character": {"temperature": 0.9, "top_p": 0.95},
    "plan": {"temperature": 1.0, "top_p": 0.95, "presence_penalty": 0.6},
    "post": {"temperature": 0.9, "top_p": 0.95, "frequency_penalty": 0.6, "presence_penalty": 0.4},
    # a live world's day (generation/living/prompts.py)
    "event": {"temperature": 0.9, "top_p": 0.95, "presence_penalty": 0.6},
    "day_post": {"temperature": 0.9, "top_p": 0.95, "frequency_penalty": 0.6, "presence_penalty": 0.4},
    "comment": {"temperature": 0.9, "top_p": 0.95, "frequency_penalty": 0.4},
    "memory": {"temperature": 0.5, "top_p": 0.9},
}


def _world(world: WorldSnapshot) -> str:
    return (
        f"World: {world.name}\nPremise: {world.premise}\nGenre: {world.genre}\nTone: {world.tone}\n"
        f"Visual style: {world.visual_style}\nWrite in language: {world.language}"
    )


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text.strip(), re.S)
    return (match.group(1) if match else text.strip())[:300]


def facts(bible: dict) -> str:
    """The bible compressed to what later stages need: one line each, never the whole text."""
    lines = [f"World: {bible.get('title', '')}", f"Setting: {_first_sentence(bible.get('setting', ''))}"]
    if bible.get("themes"):
        lines.append("Themes: " + ", ".join(bible["themes"][:4]))
    if bible.get("factions"):
        lines.append("Factions: " + "; ".join(faction.split(":")[0] for faction in bible["factions"][:4]))
    if bible.get("rules"):
        lines.append("Rules: " + "; ".join(bible["rules"][:3]))
    return "\n".join(lines)


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
        f"{_world(world)}\n{facts(bible_doc)}\n\n"
        f"Invent {world.character_count} characters who post on this world's social network. Make them "
        "different from each other: different jobs, ages, temperaments and corners of the world. For each: a "
        "name, a unique lowercase handle (letters, digits, underscores) and a one-line concept."
    )


def character(world: WorldSnapshot, bible_doc: dict, member: dict) -> list[dict]:
    return _messages(
        f"Genre: {world.genre}. Tone: {world.tone}. Write in language: {world.language}.\n{facts(bible_doc)}\n\n"
        f"Write the profile of {member['name']} (@{member['handle']}): {member['concept']}. Give a short bio, "
        "their personality, their appearance (for an avatar) and interests. Give them a voice of their own: "
        "diction (how they write: sentence length, vocabulary, punctuation, emoji), two to four quirks (verbal "
        "habits) and two to four things they never say or write about."
    )


# Everyday situations a plan's moments start from: each character gets different ones (by its index),
# so small models do not plan every character's posts around the premise.
SITUATIONS = (
    "something you ate or drank",
    "a small problem at work",
    "someone you ran into",
    "something you lost or found",
    "the weather changing",
    "an object you fixed or made",
    "a sound or smell you noticed",
    "a trade or a purchase",
    "a quiet moment before sleep",
    "a mistake you made",
    "a gift, given or received",
    "an animal",
    "something you overheard",
    "a place you went for the first time",
    "waiting for someone",
    "a chore you put off",
)


def situations(character_index: int, posts: int) -> list[str]:
    start = character_index * posts
    return [SITUATIONS[(start + offset) % len(SITUATIONS)] for offset in range(posts)]


def plan(world: WorldSnapshot, bible_doc: dict, profile: dict, posts: int) -> list[dict]:
    starts = "\n".join(
        f"Moment {number}: {situation}"
        for number, situation in enumerate(situations(profile.get("index", 0), posts), start=1)
    )
    themes = ", ".join((bible_doc.get("themes") or [])[:4])
    return _messages(
        f"Genre: {world.genre}. Tone: {world.tone}. Themes: {themes}. Write in language: {world.language}.\n\n"
        f"You are {profile['name']} (@{profile['handle']}): {profile.get('concept', '')} "
        f"Interests: {', '.join(profile.get('interests') or [])}.\n\n"
        f"Plan your next {posts} posts as {posts} moments of your ordinary day, one for each of these:\n{starts}\n\n"
        "For each moment give: the place (a specific spot: a street, a shop, a room, never the name of the "
        "world), the time, your mood, and what happens, in one plain sentence about you. Do not describe the "
        "world."
    )


SCENE_LABELS = ("Where", "When", "Mood", "What happens")
POST_TASK = (
    "Write the caption you post about this moment: first person, one to three short sentences, as if typed on "
    "your phone right then. Tell one detail you saw, did or felt. Do not start with the place or the time, do "
    "not copy the lines above and do not describe the world. Then a prompt for its image, the location and two "
    "to five hashtags."
)


def moment(profile: dict, index: int) -> dict:
    """Post ``index``'s planned moment (place, time, mood, event); empty when the plan has none."""
    moments = profile.get("plan") or []
    return moments[index] if index < len(moments) else {}


def post(world: WorldSnapshot, profile: dict, index: int) -> list[dict]:
    planned = moment(profile, index) or {"event": "one small moment of your day."}
    fields = (planned.get("place"), planned.get("time"), planned.get("mood"), planned.get("event"))
    scene = "\n".join(f"{label}: {value}" for label, value in zip(SCENE_LABELS, fields, strict=True) if value)
    return _messages(
        f"Genre: {world.genre}. Tone: {world.tone}. Write in language: {world.language}.\n\n"
        f"You are {profile['name']} (@{profile['handle']}): {profile.get('concept', '')}\n"
        f"How you write: {profile.get('diction', '')}\n\n"
        f"The moment of this post:\n{scene}\n\n{POST_TASK}"
    )


def post_echoes(profile: dict) -> list[str]:
    """What a caption must not copy (4-grams): the post prompt's instructions, the character's concept and
    diction. The moment itself may be retold."""
    return [POST_TASK, "The moment of this post", profile.get("concept", ""), profile.get("diction", "")]


def avoiding(messages: list[dict], repeated: list[str]) -> list[dict]:
    """The same post asked once more, told which sentences the guard dropped."""
    lines = "\n".join(f"- {sentence}" for sentence in repeated)
    return [
        *messages[:-1],
        {
            **messages[-1],
            "content": f"{messages[-1]['content']}\n\nDo not write these sentences again (they repeat your "
            f"earlier posts or copy the lines above):\n{lines}",
        },
    ]


def revised(messages: list[dict], *, feedback: str, previous: str | None) -> list[dict]:
    """The same request for a new version of an item: the editor's feedback, and the text it replaces."""
    note = "An editor asked for a new version of this."
    if feedback:
        note += f" Their note: {feedback}"
    if previous:
        note += f"\nThe version it replaces (write something new, not this):\n{previous}"
    return [*messages[:-1], {**messages[-1], "content": f"{messages[-1]['content']}\n\n{note}"}]
