"""The ladder: a job climbs the rungs (:mod:`harness.ladder.climbing`), is replayed in one
process, and is judged; bisect names the one difference between two rungs that makes it depart;
a scenario is a job, its ladder and the diagnosis expected."""

from harness.ladder.climbing import DEFAULT_RUNGS, LadderResult, Step, climb

__all__ = ["DEFAULT_RUNGS", "LadderResult", "Step", "climb"]
