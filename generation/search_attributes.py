"""Custom search attributes: a world's workflows are found in the Temporal UI and CLI by
``WorldId = 7`` (also ``RunNumber``, ``WorldName``, ``RunKind``).

Services set them when they start a workflow; a run sets them on its character children.
Temporal stores them in clear (they are indexed), so they hold IDs, the world's name and the
kind, never content. Registered on the local dev server by ``localstack.servers``; in production
by an operator (docs/OPERATIONS.md). Imports nothing from Django: workflows use it.
"""

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

WORLD_ID = SearchAttributeKey.for_int("WorldId")
RUN_NUMBER = SearchAttributeKey.for_int("RunNumber")
WORLD_NAME = SearchAttributeKey.for_keyword("WorldName")
RUN_KIND = SearchAttributeKey.for_keyword("RunKind")
KEYS = (WORLD_ID, RUN_NUMBER, WORLD_NAME, RUN_KIND)
# As `temporal server start-dev --search-attribute` and `temporal operator search-attribute create` spell them.
DECLARED = {key.name: key.indexed_value_type.name.title() for key in KEYS}

# RunKind values: one per kind of workflow.
GENERATION, RESUME, CHARACTER, RERENDER, REGENERATION, LIVE, CLEANUP = (
    "generation",
    "resume",
    "character",
    "rerender",
    "regeneration",
    "live",
    "cleanup",
)


def run_attributes(world_id: int, world_name: str, kind: str, run_number: int | None = None) -> TypedSearchAttributes:
    pairs: list[SearchAttributePair] = [
        SearchAttributePair(WORLD_ID, world_id),
        SearchAttributePair(WORLD_NAME, world_name),
        SearchAttributePair(RUN_KIND, kind),
    ]
    if run_number is not None:
        pairs.append(SearchAttributePair(RUN_NUMBER, run_number))
    return TypedSearchAttributes(pairs)


def child_attributes(parent: TypedSearchAttributes, kind: str) -> TypedSearchAttributes | None:
    """A child's attributes: its parent's world and run, its own kind. None when the parent has none
    (started before search attributes existed, or with them turned off): such a child starts as it
    always did, so its recorded history replays unchanged."""
    if WORLD_ID not in parent:
        return None
    return run_attributes(parent[WORLD_ID], parent.get(WORLD_NAME, ""), kind, parent.get(RUN_NUMBER))


def query(world_id: int) -> str:
    """The visibility query that lists a world's workflows."""
    return f"WorldId = {int(world_id)}"
