"""generation.quality: every metric on fixed texts with values computed by hand, the targets and the
flags they give, and the report of a small run built from documents as stored. No servers."""

import functools

import pytest

from generation import quality
from generation.quality import (
    build_report,
    copied_share,
    cross_overlap,
    distinct_n,
    repeated_sentences,
    sentences,
    variety,
    words,
)

pytestmark = pytest.mark.fast


def test_words_ignore_case_hashtags_and_punctuation():
    assert words("Hello, World! #LanternLife it's 2 dogs' (tea)…") == ["hello", "world", "it's", "2", "dogs", "tea"]
    assert words("Sky-whales’ l’été") == ["sky", "whales", "l'été"]


def test_sentences_are_normalised_and_short_ones_left_out():
    text = 'Hello there,   my OLD friend!\nWe sail at dawn, right? Yes. "The tide is high" #sea'
    assert sentences(text) == ["hello there, my old friend", "we sail at dawn, right", "the tide is high"]


def test_distinct_n():
    same = ["The sky is blue.", "the sky is BLUE"]
    assert distinct_n(same, 1) == 4 / 8  # the, sky, is, blue twice
    assert distinct_n(same, 2) == 3 / 6  # (the sky) (sky is) (is blue) twice
    assert distinct_n(["the sky is blue", "a sky is green"], 2) == 5 / 6  # only (sky is) repeats
    assert distinct_n(["n-grams never span two texts"], 5) == 1.0
    assert distinct_n(["one"], 2) == distinct_n([], 1) == 0.0


def test_copied_share_counts_the_texts_ngrams_found_in_a_source():
    texts = ["Whales carry letters between islands at dawn."]  # 4-grams: whales carry letters between,
    # carry letters between islands, letters between islands at, between islands at dawn
    sources = ["Sky-whales carry letters between islands.", "Tea houses float."]
    assert copied_share(texts, sources) == 2 / 4
    assert copied_share(texts, ["Whales carry letters", "between islands at"]) == 0.0  # never across sources
    assert copied_share(texts, sources, n=2) == 4 / 6
    assert copied_share([], sources) == copied_share(["too short"], sources) == 0.0


def test_cross_overlap_is_the_share_of_a_characters_3grams_others_use():
    overlap = cross_overlap(
        {
            0: ["The tea is warm today."],  # the tea is, tea is warm, is warm today
            1: ["the tea is cold", "The tea is cold!"],  # the tea is, tea is cold (twice: a set)
            2: ["Nothing shared here at all."],
            3: [],
        }
    )
    assert overlap == {0: 1 / 3, 1: 1 / 2, 2: 0.0, 3: 0.0}


def test_repeated_sentences_count_sentences_found_in_more_than_one_text():
    posts = [
        "Another day at the market. I love it!",
        "Another DAY at the   market! Rain again.",
        "another day at the market",
        "I love it. Rain again.",  # too short to count
    ]
    assert repeated_sentences(posts) == 1
    assert repeated_sentences(["The lamps are lit tonight. The lamps are lit tonight."]) == 0  # within one post
    assert repeated_sentences(["The lamps are lit tonight.", "The lamps are lit, tonight!", "The lamps are lit"]) == 0


def test_variety():
    assert variety(["#Tea", "tea", "Lanterns", " "]) == 2 / 3
    assert variety(["Harbour", "Bakery", "Workshop", "harbour"]) == 3 / 4
    assert variety([]) == 0.0


def test_targets():
    assert quality.THRESHOLDS["distinct_2"].met(0.6) and not quality.THRESHOLDS["distinct_2"].met(0.59)
    assert quality.THRESHOLDS["copy_share"].met(0.05) and not quality.THRESHOLDS["copy_share"].met(0.051)
    assert quality.THRESHOLDS["overlap"].met(0.1) and not quality.THRESHOLDS["overlap"].met(0.11)
    assert quality.THRESHOLDS["repairs_per_call"].met(0.1) and not quality.THRESHOLDS["repairs_per_call"].met(0.2)
    assert quality.THRESHOLDS["repeated_sentences"].met(0) and not quality.THRESHOLDS["repeated_sentences"].met(1)
    assert [str(quality.THRESHOLDS[name]) for name in ("distinct_2", "copy_share", "repeated_sentences")] == [
        "≥ 0.6",
        "≤ 0.05",
        "0",
    ]


# --- the report of a run, from documents as stored ---------------------------------------------------

PREMISE = "Lantern boats drift between the floating tea houses."
BIBLE = {
    "title": "Lanternfall",
    "setting": "Sky whales carry letters between islands.",
    "themes": ["tea", "letters"],
    "factions": [{"name": "Glassblowers"}],
}


def post(character: int, index: int, caption: str, hashtags: list[str], location: str) -> dict:
    return {
        "character_index": character,
        "index": index,
        "handle": f"c{character}",
        "caption": caption,
        "hashtags": hashtags,
        "location": location,
    }


POSTS = [
    # character 0 repeats a sentence, copies the bible's setting, and shares "the harbour lamps glow" with 1
    post(
        0, 0, "The harbour lamps glow tonight. Sky whales carry letters between islands.", ["#tea", "#lamps"], "Harbour"
    ),
    post(0, 1, "The harbour lamps glow tonight. Rain drums on the roof.", ["#tea"], "Harbour"),
    post(1, 0, "Fresh bread from the oven smells of cinnamon.", ["#bread"], "Bakery"),
    post(1, 1, "My kiln cracked so the harbour lamps glow.", ["#kiln"], "Workshop"),
    post(2, 0, "Quiet snow settles over northern piers.", ["#snow"], "North pier"),
]
CHARACTERS = [{"index": index, "handle": f"c{index}"} for index in range(4)]  # character 3 has no posts yet


def llm_task(stage: str, repairs: int | None = 0, version: str | None = "v2", **fields) -> dict:
    task = {"stage": stage, "schema_name": stage, "status": "succeeded", **fields}
    if repairs is not None:
        task["repairs"] = repairs
    if version is not None:
        task["prompt_version"] = version
    return task


TASKS = [
    llm_task("bible", version="v1"),
    llm_task("bible"),  # a second revision
    llm_task("cast", repairs=2),
    *[llm_task("character") for _ in range(3)],
    llm_task("plan", version=None),  # written before prompt versions were recorded
    *[llm_task("post") for _ in range(3)],
    llm_task("post", dropped_sentences=["The harbour lamps glow tonight.", "Tea again."]),
    llm_task("post", repairs=None, status="failed"),
    # renders: not LLM calls
    *[{"stage": "avatar", "status": "succeeded"} for _ in range(3)],
    *[{"stage": "post", "status": "succeeded"} for _ in range(5)],
]


def test_build_report_of_a_small_run():
    report = build_report(
        posts=POSTS, characters=CHARACTERS, premise=PREMISE, bible=BIBLE, tasks=TASKS, tokens_used=5000
    )
    run = report.run
    # words 11 + 10 + 8 + 8 + 6 = 43, of which 32 distinct; word pairs 10 + 9 + 7 + 7 + 5 = 38, of which 7
    # repeat "the harbour lamps glow tonight" (4) and "the harbour lamps glow" (3)
    assert (run.distinct_1, run.distinct_2) == (32 / 43, 31 / 38)
    # 4-grams 8 + 7 + 5 + 5 + 3 = 28; three are the bible's "sky whales carry letters between islands"
    assert run.copy_share == 3 / 28
    assert (run.hashtag_variety, run.location_variety) == (5 / 6, 4 / 5)
    assert (run.llm_calls, run.repairs_per_call) == (12, 2 / 12)
    assert (run.posts, run.tokens_per_post, run.sentences_dropped) == (5, 1000.0, 2)
    assert run.checks == {
        "distinct_2": True,
        "copy_share": False,
        "hashtag_variety": True,
        "location_variety": True,
        "repairs_per_call": False,
    }
    assert run.flags == [
        "4-grams copied from the premise or bible: 0.11 (target ≤ 0.05)",
        "repairs per LLM call: 0.17 (target ≤ 0.1)",
    ]
    # 3-grams: character 0 has 9 + 8 - 3 = 14, character 1 has 6 + 6 = 12; they share two
    assert [(c.index, c.handle, c.posts, c.overlap, c.repeated_sentences) for c in report.characters] == [
        (0, "c0", 2, 2 / 14, 1),
        (1, "c1", 2, 2 / 12, 0),
        (2, "c2", 1, 0.0, 0),
        (3, "c3", 0, 0.0, 0),
    ]
    assert [c.flags for c in report.characters] == [
        [
            "3-grams shared with other characters: 0.14 (target ≤ 0.1)",
            "sentences repeated across its posts: 1 (target 0)",
        ],
        ["3-grams shared with other characters: 0.17 (target ≤ 0.1)"],
        [],
        [],
    ]
    assert report.prompt_versions == ["v1", "v2"]
    as_dict = report.as_dict()
    assert set(as_dict) == {"run", "characters", "prompt_versions"}
    assert as_dict["run"]["flags"] == run.flags and as_dict["characters"][0]["repeated_sentences"] == 1


def test_a_repetitive_run_misses_the_variety_targets():
    same = "Another lovely day at the lantern market."
    posts = [post(0, index, same, ["#market"], "Market") for index in range(3)]
    report = build_report(
        posts=posts, characters=CHARACTERS[:1], premise=PREMISE, bible=None, tasks=[], tokens_used=None
    )
    run = report.run
    assert (run.distinct_1, run.distinct_2) == (7 / 21, 6 / 18)
    assert (run.hashtag_variety, run.location_variety, run.copy_share) == (1 / 3, 1 / 3, 0.0)
    assert (run.llm_calls, run.repairs_per_call, run.tokens_per_post) == (0, 0.0, None)
    assert run.flags == [
        "distinct-2 of captions: 0.33 (target ≥ 0.6)",
        "hashtag variety: 0.33 (target ≥ 0.5)",
        "location variety: 0.33 (target ≥ 0.5)",
    ]
    assert "repairs_per_call" not in run.checks  # no LLM call recorded: not measured
    assert report.characters[0].repeated_sentences == 1
    assert report.characters[0].flags == ["sentences repeated across its posts: 1 (target 0)"]


def test_a_run_without_posts_has_zeros_and_no_flags():
    report = build_report(posts=[], characters=[], premise=PREMISE, bible=BIBLE, tasks=[], tokens_used=1200)
    assert report.as_dict() == {
        "run": {
            "distinct_1": 0.0,
            "distinct_2": 0.0,
            "copy_share": 0.0,
            "hashtag_variety": 0.0,
            "location_variety": 0.0,
            "repairs_per_call": 0.0,
            "llm_calls": 0,
            "posts": 0,
            "tokens_per_post": None,
            "sentences_dropped": 0,
            "checks": {},
            "flags": [],
        },
        "characters": [],
        "prompt_versions": [],
    }


def test_the_caption_guard_drops_sentences_a_character_already_posted_and_keeps_the_rest():
    caption, dropped = quality.guard_caption(
        "I love my morning tea! A heron stole my sandwich at the gate.\nOkay. I love my MORNING tea",
        earlier=["Rain again on the roof. I love my morning tea."],
    )
    assert caption == "A heron stole my sandwich at the gate.\nOkay."
    assert dropped == ["I love my morning tea!", "I love my MORNING tea"]


def test_the_caption_guard_drops_a_sentence_the_caption_itself_repeats_and_leaves_fresh_captions_alone():
    caption, dropped = quality.guard_caption("The ferry is late. Gulls everywhere. The ferry is late.", earlier=[])
    assert (caption, dropped) == ("The ferry is late. Gulls everywhere.", ["The ferry is late."])
    fresh = "A heron stole my sandwich at the ferry gate, and honestly, respect. #ferrylife"
    checked = {"earlier": ["A heron stole my bun.", "the ferry gate"], "echoes": ["Write a caption about the gate"]}
    assert quality.guard_caption(fresh, **checked, labels=("Where",)) == (fresh, [])
    assert quality.guard_caption("", earlier=["I love my morning tea."]) == ("", [])


def test_the_caption_guard_drops_sentences_that_echo_the_prompt():
    from generation import prompts

    profile = {"concept": "A tired detective of the night markets.", "diction": "Short, dry sentences; no emoji."}
    caption, dropped = quality.guard_caption(
        "Rain in my collar again. As if typed on your phone right then.\nWhere: the noodle stall at the corner\n"
        "Mia is a tired detective of the night markets. She writes in short, dry sentences; no emoji.",
        earlier=[],
        echoes=prompts.post_echoes(profile),
        labels=prompts.SCENE_LABELS,
    )
    assert caption == "Rain in my collar again."
    assert dropped == [
        "As if typed on your phone right then.",
        "Where: the noodle stall at the corner",
        "Mia is a tired detective of the night markets.",
        "She writes in short, dry sentences; no emoji.",
    ]


def test_each_character_plans_from_different_everyday_situations():
    from generation import prompts

    firsts = [prompts.situations(index, 3) for index in range(5)]
    assert all(len(set(plan)) == 3 for plan in firsts)
    assert len({situation for plan in firsts for situation in plan}) == 15  # 5 characters, no situation twice
    assert prompts.situations(6, 3)[0] == prompts.SITUATIONS[18 % len(prompts.SITUATIONS)]  # wraps around


def test_the_last_resort_caption_is_the_first_candidate_the_guard_passes_whole():
    from generation.activities import last_resort

    guard = functools.partial(quality.guard_caption, earlier=["Cara uncovers clues and solves mysteries."])
    planned_again = "Cara uncovers clues and solves mysteries"
    assert last_resort(guard, [planned_again, "", "Rain, again."], "written") == "Rain, again."
    assert (
        last_resort(guard, ["A new lead at the noodle stall.", "Rain."], "written") == "A new lead at the noodle stall."
    )
    assert last_resort(guard, [planned_again, " "], planned_again) == planned_again  # flagged by the report
