"""The quality of a run's generated text: how varied the captions are, how much they copy the premise
or bible, how much characters repeat themselves or each other, and how often the LLM needed repairs.
Pure functions over the Mongo documents as stored (``documents.run_quality_inputs``); no Django, no
Mongo. ``THRESHOLDS`` are the targets a run is checked against."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

# --- text ----------------------------------------------------------------------------------------------

HASHTAG = re.compile(r"#\w+")
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits, with apostrophes inside (don't, l'été)
SENTENCE_END = re.compile(r"[.!?\n]+")
EDGE_PUNCTUATION = re.compile(r"^[^\w]+|[^\w]+$")  # quotes, commas, emoji around a sentence
MIN_SENTENCE_WORDS = 4


def words(text: str) -> list[str]:
    """Lowercase words; hashtags and punctuation are left out."""
    return WORD.findall(HASHTAG.sub(" ", text.lower().replace("\u2019", "'")))


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    tokens = words(text)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def sentences(text: str) -> list[str]:
    """Sentences of at least MIN_SENTENCE_WORDS words: lowercase, whitespace collapsed, no punctuation at
    either end."""
    found = []
    for part in SENTENCE_END.split(HASHTAG.sub(" ", text.lower())):
        sentence = EDGE_PUNCTUATION.sub("", " ".join(part.split()))
        if len(words(sentence)) >= MIN_SENTENCE_WORDS:
            found.append(sentence)
    return found


# --- metrics ---------------------------------------------------------------------------------------------


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams / all n-grams of the texts (0.0 when there are none)."""
    grams = [gram for text in texts for gram in ngrams(text, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def copied_share(texts: Iterable[str], sources: Iterable[str], n: int = 4) -> float:
    """Share of the texts' n-grams that also occur in one of the sources (premise, bible fields)."""
    source_grams = {gram for source in sources for gram in ngrams(source, n)}
    grams = [gram for text in texts for gram in ngrams(text, n)]
    return sum(gram in source_grams for gram in grams) / len(grams) if grams else 0.0


def cross_overlap(texts_by_character: dict[int, list[str]], n: int = 3) -> dict[int, float]:
    """For each character: the share of its distinct n-grams that other characters use too."""
    grams = {index: {gram for text in texts for gram in ngrams(text, n)} for index, texts in texts_by_character.items()}
    users = Counter(gram for own in grams.values() for gram in own)  # how many characters use each n-gram
    return {index: sum(users[gram] > 1 for gram in own) / len(own) if own else 0.0 for index, own in grams.items()}


def repeated_sentences(texts: Iterable[str]) -> int:
    """Sentences that occur in more than one of the texts (a character's posts)."""
    counts = Counter(sentence for text in texts for sentence in set(sentences(text)))
    return sum(1 for count in counts.values() if count > 1)


def variety(values: Iterable[str]) -> float:
    """Distinct / all values (case and a leading # ignored; blanks left out); 0.0 when there are none."""
    cleaned = [value.strip().lstrip("#").lower() for value in values]
    cleaned = [value for value in cleaned if value]
    return len(set(cleaned)) / len(cleaned) if cleaned else 0.0


# --- targets ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    limit: float
    at_least: bool  # the figure should be >= limit (else <= limit)

    def met(self, value: float) -> bool:
        return value >= self.limit if self.at_least else value <= self.limit

    def __str__(self) -> str:
        if self.limit == 0 and not self.at_least:
            return "0"
        return f"{'≥' if self.at_least else '≤'} {self.limit:g}"


THRESHOLDS: dict[str, Target] = {
    "distinct_2": Target(0.6, at_least=True),
    "copy_share": Target(0.05, at_least=False),
    "hashtag_variety": Target(0.5, at_least=True),
    "location_variety": Target(0.5, at_least=True),
    "repairs_per_call": Target(0.1, at_least=False),
    "overlap": Target(0.10, at_least=False),  # per character
    "repeated_sentences": Target(0, at_least=False),  # per character
}
LABELS = {
    "distinct_1": "distinct-1 of captions",
    "distinct_2": "distinct-2 of captions",
    "copy_share": "4-grams copied from the premise or bible",
    "hashtag_variety": "hashtag variety",
    "location_variety": "location variety",
    "repairs_per_call": "repairs per LLM call",
    "llm_calls": "LLM calls",
    "posts": "posts",
    "tokens_per_post": "tokens per post",
    "sentences_dropped": "sentences dropped by the caption guard",
    "overlap": "3-grams shared with other characters",
    "repeated_sentences": "sentences repeated across its posts",
}
RUN_FIGURES = tuple(name for name in LABELS if name not in ("overlap", "repeated_sentences"))


def shown(value: float | None) -> str:
    """A figure as reports show it: floats to two places."""
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def flag(metric: str, value: float) -> str:
    return f"{LABELS[metric]}: {shown(value)} (target {THRESHOLDS[metric]})"


# --- the report --------------------------------------------------------------------------------------------


@dataclass
class RunQuality:
    distinct_1: float
    distinct_2: float
    copy_share: float
    hashtag_variety: float
    location_variety: float
    repairs_per_call: float
    llm_calls: int
    posts: int
    tokens_per_post: float | None
    sentences_dropped: int  # by the caption guard (``guard_caption``), before the captions were stored
    checks: dict[str, bool] = field(default_factory=dict)  # target met, for each figure measured
    flags: list[str] = field(default_factory=list)  # one line per target missed


@dataclass
class CharacterQuality:
    index: int
    handle: str
    posts: int
    overlap: float
    repeated_sentences: int
    flags: list[str] = field(default_factory=list)


@dataclass
class QualityReport:
    run: RunQuality
    characters: list[CharacterQuality]
    prompt_versions: list[str]

    def as_dict(self) -> dict:
        return asdict(self)


def is_llm_task(task: dict) -> bool:
    """LLM task documents carry the schema of their output; render tasks (stage avatar/post) do not."""
    return "schema_name" in task or "repairs" in task


def strings(value) -> list[str]:
    """Every string in a document (fields, list items, nested): the bible's texts."""
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
    return [text for item in items for text in strings(item)]


def build_report(
    *,
    posts: list[dict],
    characters: list[dict],
    premise: str,
    bible: dict | None,
    tasks: list[dict],
    tokens_used: int | None,
) -> QualityReport:
    captions = [post.get("caption") or "" for post in posts]
    llm_tasks = [task for task in tasks if is_llm_task(task)]
    repairs = sum(task.get("repairs") or 0 for task in llm_tasks)
    run = RunQuality(
        distinct_1=distinct_n(captions, 1),
        distinct_2=distinct_n(captions, 2),
        copy_share=copied_share(captions, [premise, *strings(bible or {})]),
        hashtag_variety=variety(tag for post in posts for tag in post.get("hashtags") or []),
        location_variety=variety(post.get("location") or "" for post in posts),
        repairs_per_call=repairs / len(llm_tasks) if llm_tasks else 0.0,
        llm_calls=len(llm_tasks),
        posts=len(posts),
        tokens_per_post=tokens_used / len(posts) if tokens_used and posts else None,
        sentences_dropped=sum(len(task.get("dropped_sentences") or []) for task in llm_tasks),
    )
    measured = (["distinct_2", "copy_share", "hashtag_variety", "location_variety"] if posts else []) + (
        ["repairs_per_call"] if llm_tasks else []
    )
    run.checks = {name: THRESHOLDS[name].met(getattr(run, name)) for name in measured}
    run.flags = [flag(name, getattr(run, name)) for name, met in run.checks.items() if not met]

    handles = {doc["index"]: doc.get("handle", "") for doc in characters}
    by_character: dict[int, list[str]] = {index: [] for index in handles}
    for post in posts:
        by_character.setdefault(post["character_index"], []).append(post.get("caption") or "")
        handles.setdefault(post["character_index"], post.get("handle", ""))
    overlap = cross_overlap(by_character)
    report_characters = []
    for index in sorted(by_character):
        character = CharacterQuality(
            index, handles[index], len(by_character[index]), overlap[index], repeated_sentences(by_character[index])
        )
        character.flags = [
            flag(name, getattr(character, name))
            for name in ("overlap", "repeated_sentences")
            if not THRESHOLDS[name].met(getattr(character, name))
        ]
        report_characters.append(character)
    versions = sorted({str(task["prompt_version"]) for task in llm_tasks if task.get("prompt_version")})
    return QualityReport(run, report_characters, versions)


# --- the caption guard: one new caption, before it is stored ------------------------------------------------

MIN_CAPTION_WORDS = 4  # a caption with fewer words left after the guard is asked for once more
SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n+|$)")


def guard_caption(
    caption: str, *, earlier: list[str], echoes: Sequence[str] = (), labels: tuple[str, ...] = ()
) -> tuple[str, list[str]]:
    """The caption without the sentences that (a) repeat a sentence (of MIN_SENTENCE_WORDS words or more) of
    the character's earlier captions or of the caption itself, (b) copy a 4-gram of ``echoes`` (the prompt's
    instructions, the character's description) or (c) start with one of the prompt's ``labels`` ("Where:");
    and the sentences dropped, as written."""
    seen = {sentence for text in earlier for sentence in sentences(text)}
    echoed = {gram for text in echoes for gram in ngrams(text, 4)}
    labelled = re.compile(rf"\s*(?:{'|'.join(map(re.escape, labels))})\s*:", re.I) if labels else None
    kept, dropped = [], []
    for piece in SENTENCE.findall(caption):
        said = sentences(piece)
        if (said and said[0] in seen) or echoed.intersection(ngrams(piece, 4)) or (labelled and labelled.match(piece)):
            dropped.append(piece.strip())
            continue
        seen.update(said)
        kept.append(piece)
    return "".join(kept).strip(), dropped
