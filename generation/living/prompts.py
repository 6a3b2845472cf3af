"""Prompts of a live world's day. Every piece of context is capped, so a prompt is as long on day 365 as on
day 2: the bible's facts, the last ``RECENT_EVENTS`` events (each cut), a character's memory (at most
``schemas.Memory``'s length) and the texts it answers or remembers (cut)."""

from generation import prompts
from generation.contracts import WorldSnapshot

RECENT_EVENTS = 3
CUT = 240  # characters kept of any earlier text a prompt quotes


def cut(text: str, limit: int = CUT) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _voice(profile: dict) -> str:
    memory = cut(profile.get("memory", ""), 600) or "nothing yet: this is your first day here."
    return (
        f"You are {profile['name']} (@{profile['handle']}): {cut(profile.get('concept', ''))}\n"
        f"How you write: {cut(profile.get('diction', ''))}\n"
        f"What you remember: {memory}"
    )


def _genre(world: WorldSnapshot) -> str:
    return f"Genre: {world.genre}. Tone: {world.tone}. Write in language: {world.language}."


def event(world: WorldSnapshot, bible: dict, recent: list[dict], day: int) -> list[dict]:
    earlier = "\n".join(f"- Day {e['day']}: {cut(e['title'], 120)}. {cut(e['description'])}" for e in recent)
    return prompts._messages(
        f"{_genre(world)}\n{prompts.facts(bible)}\n\n"
        f"The latest happenings:\n{earlier or '- none yet: this is the first day.'}\n\n"
        f"Write what happens in the world on day {day}: one small, concrete event that follows from the world's "
        "facts and does not repeat the latest happenings. A short title and two or three sentences."
    )


def day_post(world: WorldSnapshot, profile: dict, event_doc: dict) -> list[dict]:
    return prompts._messages(
        f"{_genre(world)}\n\n{_voice(profile)}\n\n"
        f"Today in the world: {cut(event_doc['title'], 120)}. {cut(event_doc['description'])}\n\n"
        "Write your post about your day: first person, one to three short sentences, as if typed on your phone. "
        "Say how today's event touched you, or what you did instead. Then a prompt for its image, the location "
        "and two to five hashtags."
    )


def comment(world: WorldSnapshot, profile: dict, post: dict, answering: dict | None) -> list[dict]:
    thread = f"@{post['handle']} posted: {cut(post['caption'])}"
    if answering:
        thread += f"\n@{answering['handle']} commented: {cut(answering['comment'])}"
        task = "Reply to that comment on your post, in your own voice: one or two short sentences."
    else:
        task = "Comment on that post, in your own voice: one or two short sentences, as a friend or a rival would."
    return prompts._messages(f"{_genre(world)}\n\n{_voice(profile)}\n\n{thread}\n\n{task}")


def memory(profile: dict, day: int, event_doc: dict | None, acts: list[str]) -> list[dict]:
    did = "\n".join(f"- {cut(act)}" for act in acts) or "- nothing you posted"
    happened = f"{cut(event_doc['title'], 120)}" if event_doc else "nothing special"
    return prompts._messages(
        f"{_voice(profile)}\n\nOn day {day}, the world saw: {happened}\nWhat you wrote that day:\n{did}\n\n"
        "Rewrite what you remember as one short paragraph (at most 500 characters): keep what matters to you, "
        "add what today changed, and drop the rest."
    )
