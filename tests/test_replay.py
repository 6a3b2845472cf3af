"""Workflow determinism: recorded histories (tests/histories/) must replay against
today's workflow code. Re-record after an intentional change with
`RECORD_HISTORIES=1 .venv/bin/python -m pytest tests/test_generation.py` (and use
workflow.patched() for running workflows in production)."""

import asyncio
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from generation.living.workflows import LiveWorldWorkflow
from generation.workflows import (
    CharacterWorkflow,
    RegenerateItemWorkflow,
    RegenerateVersionWorkflow,
    RenderMissingImagesWorkflow,
    RerenderImagesWorkflow,
    StackCheckWorkflow,
    WorldGenerationWorkflow,
    WorldRunWorkflow,
)

pytestmark = pytest.mark.fast

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


BEFORE_EXACT_RUNS = (
    "world_completed",
    "character_completed",
    "world_rejected_then_approved",
    "world_cancelled",
    "world_budget_exceeded",
)


def test_histories_are_recorded():
    current = {
        "world_completed",
        "world_rejected_then_approved",
        "world_cancelled",
        "world_budget_exceeded",
        "rerender_completed",
        "render_missing_images_completed",
        "world_cancelled_two_characters",
        "world_with_a_failed_post",
        "world_resumed",
        "regenerate_post",
        "regenerate_character",
        "regenerate_failed",
        "world_with_a_rejected_avatar",
        "live_world_commands",
        "live_world_continued_as_new",
    }
    # WorldGenerationWorkflow's runs (a child workflow per character), before WorldRunWorkflow
    before_world_run = {
        *(f"{name}_before_world_run" for name in ("world_completed", "world_rejected_then_approved")),
        *(f"{name}_before_world_run" for name in ("world_cancelled", "world_budget_exceeded", "world_resumed")),
        *(f"{name}_before_world_run" for name in ("character_completed", "character_with_a_failed_post")),
        "character_with_a_rejected_avatar_before_world_run",
    }
    before_patches = {
        "character_completed_before_partial_failures",
        "character_completed_before_planned_posts",
        "character_completed_before_throttled_signals",
        "world_completed_before_event_driven_progress",
        "live_world_commands_before_one_activity_day",
        "live_world_commands_before_live_budgets",
        "live_world_continued_as_new_before_one_activity_day",
        "world_completed_before_items_by_reference",  # item activities got the world snapshot inline
        "character_completed_before_items_by_reference",
        *(f"regenerate_{name}_before_drafts" for name in ("post", "character", "failed")),  # RegenerateItemWorkflow
        *(f"{name}_before_exact_runs" for name in BEFORE_EXACT_RUNS),
    }
    assert {path.stem for path in HISTORIES} >= current | before_world_run | before_patches


@pytest.mark.parametrize("path", HISTORIES, ids=[path.stem for path in HISTORIES])
def test_recorded_history_replays(path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(
        workflows=[
            WorldRunWorkflow,
            WorldGenerationWorkflow,
            CharacterWorkflow,
            RerenderImagesWorkflow,
            RenderMissingImagesWorkflow,
            RegenerateItemWorkflow,
            RegenerateVersionWorkflow,
            StackCheckWorkflow,
            LiveWorldWorkflow,
        ]
    )
    asyncio.run(replayer.replay_workflow(history))
