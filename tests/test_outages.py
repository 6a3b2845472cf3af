"""An LLM outage does not fail a run: calls back off, up to the run's cap, for as long as the provider is
down, and the run goes on when it returns. In process, on the time-skipping test server (an hour of outage
takes a second), with the stand-in activities of ``test_cancel_points`` under the real names."""

import uuid
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from generation.contracts import BibleInput, ItemInput, TokenUsage
from generation.workflows import WorldGenerationWorkflow
from tests.test_cancel_points import StandIns, run_input, stand_in_workers

pytestmark = [pytest.mark.fast, pytest.mark.timeout(60)]


class ProviderDown(StandIns):
    """The LLM answers 503 to the bible (and to the first post) until ``outage`` has passed since its first
    attempt; with ``fatal``, it rejects the bible once, for good."""

    def __init__(self, outage: timedelta, fatal: bool = False) -> None:
        super().__init__(last_report=("record_run_status", "completed"))
        self.outage, self.fatal = outage, fatal
        self.first_attempt: dict[str, object] = {}
        self.failed: dict[str, int] = {}

    def down(self, call: str) -> bool:
        now = activity.info().current_attempt_scheduled_time
        first = self.first_attempt.setdefault(call, now)
        if now - first < self.outage:
            self.failed[call] = self.failed.get(call, 0) + 1
            return True
        return False

    @activity.defn(name="generate_bible")
    async def generate_bible(self, inp: BibleInput) -> TokenUsage:
        if self.fatal:
            self.failed["bible"] = self.failed.get("bible", 0) + 1
            raise ApplicationError("LLM rejected the credentials (401)", type="LlmFatal", non_retryable=True)
        if self.down("bible"):
            raise ApplicationError("LLM unavailable (503): upstream down", type="LlmRetryable")
        return await super().generate_bible(inp)

    @activity.defn(name="generate_post")
    async def generate_post(self, inp: ItemInput) -> TokenUsage:
        if (inp.character_index, inp.post_index) == (0, 0) and self.down("post 0.0"):
            raise ApplicationError("LLM connection failed (ConnectError)", type="LlmRetryable")
        return await super().generate_post(inp)


async def generate(environment, stand_ins: StandIns):
    inp = run_input(f"outage-{uuid.uuid4().hex[:8]}")
    config = inp.config
    workers = stand_in_workers(environment, stand_ins, config)
    async with workers[0], workers[1], workers[2]:
        handle = await environment.client.start_workflow(
            WorldGenerationWorkflow.run, inp, id=inp.run.workflow_id, task_queue=config.workflows_queue
        )
        return await handle.result()


def test_an_hour_long_llm_outage_does_not_fail_the_run(env):
    loop, environment = env
    provider = ProviderDown(outage=timedelta(hours=1, minutes=5))
    progress = loop.run(generate(environment, provider))
    assert (progress.status, progress.posts_done, progress.characters_done) == ("completed", 4, 2)
    # capped backoff: 1, 2, 4 ... 256 s, then every 300 s (RunConfig.llm_retry_max_interval_s) for the rest
    # of the 65 minutes; the old policy gave up after 8 attempts, about two minutes
    assert provider.failed["bible"] >= 15 and provider.failed["post 0.0"] >= 15
    statuses = [detail for event, _, name, detail in provider.log if event == "end" and name == "record_run_status"]
    assert "failed" not in statuses and statuses[-1] == "completed"
    # every item was made once: nothing was generated again after the provider came back
    assert provider.calls["generate_bible"] == 1 and provider.calls["generate_cast"] == 1
    assert provider.calls["generate_post"] == 4 and provider.calls["generate_character"] == 2


def test_a_non_retryable_llm_error_fails_the_run_at_once(env):
    loop, environment = env
    provider = ProviderDown(outage=timedelta(0), fatal=True)
    with pytest.raises(WorkflowFailureError) as failure:
        loop.run(generate(environment, provider))
    assert "credentials" in str(failure.value.cause)
    assert provider.failed["bible"] == 1 and provider.calls["generate_cast"] == 0
    statuses = [detail for event, _, name, detail in provider.log if event == "end" and name == "record_run_status"]
    assert statuses[-1] == "failed"
