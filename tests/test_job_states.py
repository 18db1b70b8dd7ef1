"""The update job's state machine refuses every illegal move, above all an unverified switch."""

from __future__ import annotations

import pytest

from sysupd.core.job import JobState, JobStateMachine
from sysupd.errors import IllegalTransition

STAGES = [JobState.ACQUIRING, JobState.VERIFYING, JobState.INSTALLING]


def test_the_happy_path() -> None:
    job = JobStateMachine()
    for stage in STAGES:
        job.advance(stage)
        assert job.state.running
    job.mark_payload_verified()
    job.advance(JobState.SWITCHING)
    job.advance(JobState.DONE)
    assert not job.state.running
    assert job.history == [JobState.IDLE, *STAGES, JobState.SWITCHING, JobState.DONE]


def test_no_switch_before_the_payload_verified() -> None:
    job = JobStateMachine()
    for stage in STAGES:
        job.advance(stage)
    with pytest.raises(IllegalTransition, match="before the payload verified"):
        job.advance(JobState.SWITCHING)
    job.fail()
    assert job.state is JobState.FAILED


@pytest.mark.parametrize("target", [JobState.VERIFYING, JobState.INSTALLING, JobState.DONE])
def test_no_skipping_stages(target: JobState) -> None:
    with pytest.raises(IllegalTransition):
        JobStateMachine().advance(target)


def test_verification_only_while_installing() -> None:
    job = JobStateMachine()
    job.advance(JobState.ACQUIRING)
    with pytest.raises(IllegalTransition):
        job.mark_payload_verified()


def test_fail_from_any_running_stage_but_not_after_the_end() -> None:
    for count in range(1, len(STAGES) + 1):
        job = JobStateMachine()
        for stage in STAGES[:count]:
            job.advance(stage)
        job.fail()
        assert job.state is JobState.FAILED
        with pytest.raises(IllegalTransition):
            job.fail()
        with pytest.raises(IllegalTransition):
            job.advance(JobState.ACQUIRING)
    with pytest.raises(IllegalTransition):
        JobStateMachine().fail()
