"""Prompt builders: the world snapshot plus context read from Mongo. Pure functions.

Version 2, plan then write: each character's profile carries an explicit voice; one call per
character plans its posts as distinct moments (place, time, mood, a small event); each post then
writes one moment in that voice, shown its earlier captions as things not to repeat. Prompts get
the world bible compressed to a few facts, never pasted whole, and posts never see the premise.
With GENERATION_REWRITES, a plan whose moments repeat each other and a caption that repeats the
character, the world's description or the other characters are written once more, told what they
repeated (``generation.quality``). docs/QUALITY.md has the figures of each version.
"""

import json
import re

from generation.contracts import WorldSnapshot

PROMPT_VERSION = "2"  # recorded on every task document; bump it whenever a prompt changes

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


def voice(profile: dict) -> str:
    quirks = "; ".join(profile.get("quirks") or [])
    never = "; ".join(profile.get("never_says") or [])
    return f"Your voice: {profile.get('diction', '')}\nYour habits: {quirks}\nYou never: {never}"


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


def plan(world: WorldSnapshot, bible_doc: dict, profile: dict, posts: int) -> list[dict]:
    return _messages(
        f"Genre: {world.genre}. Tone: {world.tone}. Write in language: {world.language}.\n{facts(bible_doc)}\n\n"
        f"You are {profile['name']} (@{profile['handle']}). {profile.get('bio', '')} "
        f"Interests: {', '.join(profile.get('interests') or [])}.\n\n"
        f"Plan your next {posts} posts as {posts} different moments of your life: for each a place, a time "
        "(of day or season), a mood and a small event that happens there. No two moments share a place, a "
        "mood or an event; make them specific and ordinary, not a summary of the world."
    )


def rewrite(messages: list[dict], reply: str, problems: list[str]) -> list[dict]:
    """Ask once more for the same post, told what its first version repeated."""
    return [
        *messages,
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": "Rewrite this post about the same moment, in new words: "
            + "; ".join(problems)
            + ". Reply with the whole post as JSON again.",
        },
    ]


def post(world: WorldSnapshot, profile: dict, earlier_captions: list[str], index: int) -> list[dict]:
    moments = profile.get("plan") or []
    moment = moments[index] if index < len(moments) else None
    scene = (
        f"This post is about one moment: at {moment['place']}, {moment['time']}, feeling {moment['mood']}: "
        f"{moment['event']}"
        if moment
        else "This post is about one small moment of your day."
    )
    earlier = "\n".join(f"- {caption}" for caption in earlier_captions[-10:]) or "(none yet)"
    return _messages(
        f"Genre: {world.genre}. Tone: {world.tone}. Write in language: {world.language}.\n\n"
        f"You are {profile['name']} (@{profile['handle']}). {profile.get('bio', '')}\n{voice(profile)}\n\n"
        f"{scene}\n\nYour earlier captions (do not reuse their words, phrases or sentences):\n{earlier}\n\n"
        f"Write post number {index + 1}: a caption of one to three sentences about this moment only, in your "
        "voice; do not explain the world or restate its premise. Then a prompt for its image, the location "
        "(where the moment happens) and two to five hashtags."
    )
