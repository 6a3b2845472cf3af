"""Procedural, schema-valid JSON for the localllm stand-in (no language model involved).

``completion_content`` turns a chat request into a JSON text:

- deterministic: a ``random.Random`` seeded by a hash of the messages, the
  schema and the optional ``seed``, so the same request gives the same reply
  and different requests differ;
- valid against the request's JSON schema: ``type`` (a name or a list),
  ``properties``/``required``, ``items``/``minItems``/``maxItems``/``uniqueItems``,
  ``minLength``/``maxLength``, ``enum``/``const``, ``anyOf`` and numeric bounds;
  ``pattern`` and ``$ref`` are not honoured (``generation.schemas.json_schema``
  sends self-contained schemas);
- on-theme: field names pick the kind of text (``handle`` → a lowercase handle,
  ``bio``, ``caption``, ``visual_style``, ...) and salient words of the user
  prompt (e.g. the world premise) are woven into it, with word lists for
  fantastical, Instagram-like worlds.
"""

import hashlib
import json
import random
import re
from typing import Any

ADJECTIVES = [
    "luminous",
    "gilded",
    "drowsy",
    "iridescent",
    "moonlit",
    "velvet",
    "clockwork",
    "feathered",
    "crystalline",
    "whispering",
    "overgrown",
    "floating",
    "sunken",
    "candlelit",
    "stormbound",
    "honeyed",
    "opaline",
    "restless",
    "silver",
    "mossy",
    "starlit",
    "fizzing",
    "hollow",
    "amber",
]
NOUNS = [
    "lantern",
    "tide",
    "moth",
    "spire",
    "orchard",
    "comet",
    "teacup",
    "archive",
    "lighthouse",
    "garden",
    "carousel",
    "glacier",
    "market",
    "bridge",
    "observatory",
    "bakery",
    "harbor",
    "library",
    "greenhouse",
    "balloon",
    "staircase",
    "reef",
    "clocktower",
    "meadow",
]
PLACE_PREFIXES = ["Vell", "Aster", "Mirr", "Cald", "Thorn", "Lun", "Saff", "Quill", "Bryn", "Oss", "Ember", "Nim"]
PLACE_SUFFIXES = ["marsh", "haven", "reach", "hollow", "spire", "mere", "wick", "fall", "gate", "vale", "holm"]
FIRST_NAMES = [
    "Lyra",
    "Oren",
    "Isolde",
    "Kestrel",
    "Mabel",
    "Tamsin",
    "Corvin",
    "Wren",
    "Juniper",
    "Ezra",
    "Saoirse",
    "Thaddeus",
    "Nova",
    "Pip",
    "Ottoline",
    "Rook",
    "Clementine",
    "Ansel",
    "Marisol",
    "Fen",
]
SURNAME_PARTS = (
    ["Ember", "Moss", "Star", "Quill", "Thistle", "Brine", "Ash", "Cinder", "Hollow", "Lark", "Frost"],
    ["wick", "fall", "whistle", "light", "bloom", "wood", "song", "weather", "mantle", "glass"],
)
ROLES = [
    "cloud cartographer",
    "lantern-keeper",
    "tea alchemist",
    "sky-whale tamer",
    "dream archivist",
    "moss sculptor",
    "comet courier",
    "clockmaker",
    "tide botanist",
    "street illusionist",
    "potion barista",
    "lighthouse poet",
    "glass gardener",
    "map thief",
    "festival herald",
]
TRAITS = [
    "curious",
    "stubborn",
    "tender-hearted",
    "mischievous",
    "meticulous",
    "dreamy",
    "bold",
    "sardonic",
    "patient",
    "restless",
    "generous",
    "secretive",
    "theatrical",
    "earnest",
    "wry",
]
TONES = ["whimsical", "wistful", "cozy", "eerie", "playful", "luminous", "bittersweet", "hopeful", "mysterious"]
MEDIUMS = [
    "soft gouache illustration",
    "35mm film photography",
    "watercolor storybook art",
    "glossy editorial photography",
    "painterly digital art",
    "hand-inked linework with flat color",
]
PALETTES = [
    "teal and tangerine",
    "pastel lilac",
    "sepia and gold",
    "moss green and brass",
    "midnight blue and silver",
    "coral and cream",
    "sea-glass green",
]
LIGHTING = [
    "golden-hour light",
    "bioluminescent glow",
    "candlelight",
    "misty dawn light",
    "neon dusk",
    "dappled sunlight",
    "moonlight",
]
FEATURES = [
    "freckles like scattered stardust",
    "silver-streaked hair",
    "ink-stained fingers",
    "a patched velvet coat",
    "eyes the color of sea glass",
    "a crown of dried flowers",
    "brass goggles pushed up on the forehead",
    "a scarf that changes color with the weather",
]
ACTIVITIES = [
    "Caught the first light over the",
    "Sunday stroll through the",
    "New drop: hand-made charms from the",
    "Lost an afternoon in the",
    "Behind the scenes at the",
    "Tiny ritual at the",
    "Found a secret door in the",
]
DEEDS = [
    "guard",
    "chart",
    "bake bread for",
    "sing to",
    "smuggle letters across",
    "photograph",
    "mend",
    "throw midnight parties in",
]
GROUPS = ["Society", "Guild", "Circle", "Collective", "Order", "Club"]
EMOJIS = ["✨", "🌙", "🍄", "🫧", "🕯️", "🪐", "🌿", "🐚", "🎈", "🔮"]

STOPWORDS = set(
    """
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just let me more most my myself
no nor not now of off on once only or other our ours ourselves out over own same she should so some such
than that the their theirs them themselves then there these they this those through to too under until up
very was we were what when where which while who whom why will with would you your yours yourself
yourselves one two three four five six seven eight nine ten every many much where's it's don't
json schema return respond output format field fields object objects array list string strings value values
generate create write make give include including using use based following given each must
please describe description world worlds character characters post posts premise name names
""".split()
)
FALLBACK_KEYWORDS = ["lantern", "tide", "comet", "orchard"]


def an(word: str) -> str:
    """``an("orchard")`` → ``"an orchard"``."""
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def plural(noun: str) -> str:
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "ch", "sh")) else "s")


def third_person(phrase: str) -> str:
    """``"sing to"`` → ``"sings to"``."""
    verb, space, rest = phrase.partition(" ")
    return plural(verb) + space + rest


def request_seed(messages: list, schema: Any, seed: Any = None) -> int:
    """A 64-bit seed from the request's messages, schema and optional seed."""
    material = json.dumps({"messages": messages, "schema": schema, "seed": seed}, sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


def message_text(message: dict) -> str:
    """The text of a chat message (``content`` as a string or a list of text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def premise_words(messages: list[dict], count: int = 12) -> str:
    """The first words of a "Premise:" line in the messages ("" if there is none)."""
    text = "\n".join(message_text(m) for m in messages if isinstance(m, dict))
    match = re.search(r"Premise:[ \t]*(.+)", text)
    return " ".join(match.group(1).split()[:count]).rstrip(".") if match else ""


def salient_words(messages: list[dict], limit: int = 16) -> list[str]:
    """Distinctive words of the user messages (all messages if there is no user message), in order."""
    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    text = " ".join(message_text(m) for m in (user or [m for m in messages if isinstance(m, dict)]))
    words: list[str] = []
    for token in re.findall(r"[A-Za-z][A-Za-z'-]*[A-Za-z]", text):
        word = token.lower().removesuffix("'s")
        if len(word) >= 4 and word not in STOPWORDS and word not in words:
            words.append(word)
    return words[:limit]


CONTENT_STYLES = ("varied", "repetitive", "echoing")
REPEATED_SENTENCE = "Another ordinary day here, nothing new to report"


def completion_content(
    messages: list[dict], schema: dict | None, *, schema_name: str = "", seed: Any = None, style: str = "varied"
) -> str:
    """The JSON text answering ``messages``: schema-valid if a schema is given, else ``{"text": ...}``.
    ``style="repetitive"``: every caption, and every planned moment's event, is one fixed sentence (plus the
    start of the premise when the prompt has one). ``style="echoing"``: every caption starts with that
    sentence, then varies."""
    generator = Generator(random.Random(request_seed(messages, schema, seed)), salient_words(messages))
    if style == "repetitive":
        premise = premise_words(messages)
        generator.caption_override = f"{REPEATED_SENTENCE}. {premise}." if premise else f"{REPEATED_SENTENCE}."
    if style == "echoing":
        generator.caption_prefix = f"{REPEATED_SENTENCE}. "
    if schema is None:
        value: Any = {"text": generator.text("description")}
    else:
        value = generator.value(schema, key=schema_name, container=schema_name)
    return json.dumps(value, ensure_ascii=False)


class Generator:
    """Builds a value for a schema; ``key`` (the field name) picks the kind of text."""

    def __init__(self, rng: random.Random, keywords: list[str]) -> None:
        self.caption_override: str | None = None
        self.caption_prefix = ""
        self.rng = rng
        self.keywords = keywords or FALLBACK_KEYWORDS
        self.used: set[str] = set()  # names and handles already given, to keep them distinct

    # --- schema walking ---------------------------------------------------------

    def value(self, schema: Any, *, key: str, container: str = "", siblings: dict | None = None) -> Any:
        if not isinstance(schema, dict):  # `true` accepts anything: give a string
            return self.string({}, key, container, siblings or {})
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return self.rng.choice(schema["enum"])
        if schema.get("anyOf"):
            branches = [b for b in schema["anyOf"] if not (isinstance(b, dict) and b.get("type") == "null")]
            return self.value((branches or schema["anyOf"])[0], key=key, container=container, siblings=siblings)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if kind == "object":
            return self.object(schema, key)
        if kind == "array":
            return self.array(schema, key)
        if kind == "integer":
            return self.integer(schema, key)
        if kind == "number":
            return self.number(schema, key)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema, key, container, siblings or {})

    def object(self, schema: dict, key: str) -> dict:
        result: dict = {}
        properties = dict(schema.get("properties", {}))
        for name in schema.get("required", []):
            properties.setdefault(name, {"type": "string"})
        for name, subschema in properties.items():
            result[name] = self.value(subschema, key=name, container=key, siblings=result)
        return result

    def array(self, schema: dict, key: str) -> list:
        low = schema.get("minItems", 0)
        high = schema.get("maxItems", max(low, 6 if "hashtag" in key else 4))
        count = self.rng.randint(max(low, min(1, high)), max(low, min(high, low + 5)))
        items: list = []
        seen: set[str] = set()
        for _ in range(count * 5):  # a few extra tries so uniqueItems can be met
            if len(items) == count:
                break
            item = self.value(schema.get("items", {}), key=key, container=key)
            marker = json.dumps(item, sort_keys=True)
            if schema.get("uniqueItems") and marker in seen:
                continue
            seen.add(marker)
            items.append(item)
        return items

    def integer(self, schema: dict, key: str) -> int:
        low, high = self.number_range(schema, key)
        low, high = int(-(-low // 1)), int(high // 1)  # ceil / floor
        if "exclusiveMinimum" in schema and low <= schema["exclusiveMinimum"]:
            low = int(schema["exclusiveMinimum"] // 1) + 1
        if "exclusiveMaximum" in schema and high >= schema["exclusiveMaximum"]:
            high = int(-(-schema["exclusiveMaximum"] // 1)) - 1
        return self.rng.randint(low, max(low, high))

    def number(self, schema: dict, key: str) -> float:
        low, high = self.number_range(schema, key)
        value = round(self.rng.uniform(low, high), 2)
        value = min(max(value, low), high)
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value = (schema["exclusiveMinimum"] + high) / 2
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            value = (low + schema["exclusiveMaximum"]) / 2
        return value

    @staticmethod
    def number_range(schema: dict, key: str) -> tuple[float, float]:
        """A plausible range for the field, narrowed to the schema's bounds."""
        hinted = (
            (16, 90)
            if key_has(key, "age")
            else (100, 250_000)
            if key_has(key, "follower")
            else (0, 5_000)
            if key_has(key, "like", "comment", "view")
            else (0, 100)
        )
        minimum = max((schema[k] for k in ("minimum", "exclusiveMinimum") if k in schema), default=None)
        maximum = min((schema[k] for k in ("maximum", "exclusiveMaximum") if k in schema), default=None)
        low = hinted[0] if minimum is None else max(hinted[0], minimum)
        high = hinted[1] if maximum is None else min(hinted[1], maximum)
        if low > high:  # the hint does not fit the schema: use the schema's bounds
            low = minimum if minimum is not None else maximum - 100
            high = maximum if maximum is not None else minimum + 100
        return low, high

    def string(self, schema: dict, key: str, container: str, siblings: dict) -> str:
        min_length, max_length = schema.get("minLength", 0), schema.get("maxLength")
        kind = string_kind(key, container)
        if kind == "handle":
            return self.fit_handle(self.handle(siblings), min_length, max_length)
        text = self.unique(self.person_name) if kind == "name" else self.text(kind)
        if key == "event" and self.caption_override:  # a planned moment says the same, too
            text = self.caption_override
        while len(text) < min_length:
            text += " " + self.text("sentence")
        return self.fit_text(text, min_length, max_length)

    # --- text -------------------------------------------------------------------

    def pick(self, words: list[str]) -> str:
        return self.rng.choice(words)

    def keyword(self) -> str:
        return self.rng.choice(self.keywords)

    def hashtag(self) -> str:
        words = [self.keyword(), self.pick(NOUNS)][: self.rng.randint(1, 2)]
        return "#" + "".join(w.replace("-", "").replace("'", "").capitalize() for w in words)

    def place_name(self) -> str:
        return self.rng.choice(
            [
                lambda: self.pick(PLACE_PREFIXES) + self.pick(PLACE_SUFFIXES),
                lambda: f"The {self.pick(ADJECTIVES).capitalize()} {self.keyword().capitalize()}",
                lambda: f"{self.keyword().capitalize()} {self.pick(PLACE_SUFFIXES).capitalize()}",
            ]
        )()

    def person_name(self) -> str:
        first = self.pick(FIRST_NAMES)
        if self.rng.random() < 0.25:
            return f"{first} of the {self.keyword().capitalize()}"
        return f"{first} {self.pick(SURNAME_PARTS[0])}{self.pick(SURNAME_PARTS[1])}"

    def handle(self, siblings: dict) -> str:
        name = next((v for k, v in siblings.items() if key_has(k, "name") and isinstance(v, str)), None)
        if name:
            base = ".".join(re.findall(r"[a-z0-9]+", name.lower().replace(" of the ", " ")))
        else:
            base = f"{self.pick(ADJECTIVES)}_{self.keyword()}"
        handle = re.sub(r"[^a-z0-9._]", "", base.lower()) or "wanderer"
        if self.rng.random() < 0.4:
            handle += self.rng.choice(["_", ".", ""]) + self.rng.choice([self.keyword(), str(self.rng.randint(1, 99))])
        handle = re.sub(r"[^a-z0-9._]", "", handle)
        while handle in self.used:
            handle += str(self.rng.randint(0, 9))
        self.used.add(handle)
        return handle

    def unique(self, make) -> str:
        for _ in range(10):
            value = make()
            if value not in self.used:
                break
        self.used.add(value)
        return value

    def text(self, kind: str) -> str:
        """Free text of a kind (see ``string_kind``), with the prompt's words woven in."""
        r, kw, adj, noun = self.rng, self.keyword, lambda: self.pick(ADJECTIVES), lambda: self.pick(NOUNS)
        if kind == "place":
            return self.place_name()
        if kind == "title":
            return r.choice(
                [
                    f"The {adj().capitalize()} {noun().capitalize()} of {self.place_name()}",
                    f"{kw().capitalize()} and the {adj().capitalize()} {noun().capitalize()}",
                    f"Notes from the {kw().capitalize()} {noun().capitalize()}",
                ]
            )
        if kind == "caption" and self.caption_override:
            return self.caption_override
        if kind == "caption":
            tags = " ".join(self.hashtag() for _ in range(r.randint(1, 3)))
            return f"{self.caption_prefix}{self.pick(ACTIVITIES)} {adj()} {kw()} {noun()} {self.pick(EMOJIS)} {tags}"
        if kind == "bio":
            return (
                f"{self.pick(ROLES).capitalize()} from {self.place_name()}. "
                f"Collector of {adj()} {plural(noun())}, fluent in {kw()}. {self.pick(EMOJIS)}"
            )
        if kind == "tone":
            return ", ".join(r.sample(TONES, 3))
        if kind == "visual_style":
            return f"{self.pick(MEDIUMS)}, {self.pick(PALETTES)} palette, {self.pick(LIGHTING)}, {kw()} motifs"
        if kind == "personality":
            a, b, c = r.sample(TRAITS, 3)
            return f"{a.capitalize()}, {b} and quietly {c}; cannot resist a good {kw()} story."
        if kind == "appearance":
            one, two = r.sample(FEATURES, 2)
            return f"{one.capitalize()}, {two}, and a charm shaped like {an(kw())} {noun()}."
        if kind == "image_prompt":
            return (
                f"{self.pick(MEDIUMS)} of {an(adj())} {kw()} {noun()}, {self.pick(LIGHTING)}, "
                f"{self.pick(PALETTES)} palette"
            )
        if kind == "description":
            return " ".join(
                [
                    f"In {self.place_name()}, {adj()} {plural(noun())} drift above streets paved with {kw()}.",
                    f"Everyone keeps {an(kw())} {noun()} by the window and trades {adj()} stories "
                    f"at the {noun()} market.",
                    r.choice(
                        [
                            f"Nobody remembers who first tamed the {kw()}, "
                            f"only that the {plural(noun())} sang that night.",
                            f"Every dusk the {noun()} lights up and the whole town posts about the {kw()}.",
                        ]
                    ),
                ][: r.randint(2, 3)]
            )
        if kind == "rule":
            verb = r.choice(["borrow", "name", "wake", "paint"])
            return f"No one may {verb} the {kw()} {noun()} after the {noun()} bell."
        if kind == "faction":
            return (
                f"The {adj().capitalize()} {kw().capitalize()} {self.pick(GROUPS)}: "
                f"{plural(self.pick(ROLES))} who {self.pick(DEEDS)} the {noun()}"
            )
        if kind == "concept":
            deed, when = third_person(self.pick(DEEDS)), r.choice(["dawn", "dusk", "full moon", "market day"])
            return (
                f"{an(adj()).capitalize()} {self.pick(ROLES)} who {deed} the {kw()} {noun()} "
                f"and posts about it every {when}"
            )
        if kind == "role":
            return r.choice([self.pick(ROLES), f"{kw()} {self.pick(ROLES)}"])
        if kind == "trait":
            return self.pick(TRAITS)
        if kind == "word":
            return r.choice([kw(), plural(noun()), f"{kw()} {plural(noun())}"])
        if kind == "hashtag":
            return self.hashtag()
        if kind == "emoji":
            return self.pick(EMOJIS)
        if kind == "color":
            return self.pick(PALETTES)
        if kind == "url":
            return f"https://media.localllm.invalid/{kw()}-{noun()}-{r.randint(1, 9999)}.png"
        return f"{adj().capitalize()} {plural(noun())} gather around the {kw()} while the {noun()} hums."

    @staticmethod
    def fit_text(text: str, min_length: int, max_length: int | None) -> str:
        if max_length is None or len(text) <= max_length:
            return text
        cut = text[:max_length]
        space = cut.rfind(" ")
        if space >= max(min_length, 1):
            cut = cut[:space]
        cut = cut.rstrip(" ,;:-")
        return cut if len(cut) >= min_length else text[:max_length]

    @staticmethod
    def fit_handle(handle: str, min_length: int, max_length: int | None) -> str:
        while len(handle) < min_length:
            handle += "_"
        if max_length is not None and len(handle) > max_length:
            handle = handle[:max_length].rstrip("._") or handle[:max_length]
            handle = handle if len(handle) >= min_length else handle.ljust(min_length, "_")
        return handle


def key_tokens(key: str) -> list[str]:
    """``visualStyle`` / ``visual_style`` / ``visual-style`` → ``["visual", "style"]``."""
    return [t.lower() for t in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", key)]


def key_has(key: str, *words: str) -> bool:
    """Whether a token of ``key`` is one of ``words`` (plurals and longer forms of long words count)."""
    for token in key_tokens(key):
        for word in words:
            if token in (word, word + "s", word + "es") or (len(word) >= 4 and token.startswith(word)):
                return True
    return False


STRING_KINDS = [
    (("handle", "username", "slug"), "handle"),
    (("hashtag",), "hashtag"),
    (("trait",), "trait"),
    (("tag", "keyword", "theme", "motif", "interest"), "word"),
    (("emoji",), "emoji"),
    (("url", "uri"), "url"),
    (("color", "colour", "palette"), "color"),
    (("title", "headline"), "title"),
    (("caption",), "caption"),
    (("bio",), "bio"),
    (("tone", "mood", "vibe"), "tone"),
    (("visual", "style", "aesthetic"), "visual_style"),
    (("personality", "temperament"), "personality"),
    (("appearance", "look"), "appearance"),
    (("prompt", "alt", "image"), "image_prompt"),
    (("location", "place", "city", "region", "realm", "home", "hometown"), "place"),
    (("occupation", "role", "job", "profession", "archetype"), "role"),
    (("faction", "guild", "clan", "society", "group"), "faction"),
    (("concept", "pitch", "hook"), "concept"),
    (("rule", "law", "taboo"), "rule"),
    (
        (
            "setting",
            "description",
            "summary",
            "premise",
            "backstory",
            "history",
            "lore",
            "overview",
            "story",
            "text",
            "body",
            "content",
        ),
        "description",
    ),
]
PLACE_CONTEXTS = ("world", "bible", "realm", "place", "location", "city", "faction", "guild", "setting")


def string_kind(key: str, container: str = "") -> str:
    """What kind of text a string field holds, from its name (and its parent's name)."""
    if key_has(key, "handle", "username", "slug"):
        return "handle"
    if key_has(key, "name"):
        return "place" if key_has(key, *PLACE_CONTEXTS) or key_has(container, *PLACE_CONTEXTS) else "name"
    for words, kind in STRING_KINDS:
        if key_has(key, *words):
            return kind
    return "sentence"
