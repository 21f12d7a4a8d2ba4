"""RetryPolicy: a shard is given again until its attempts run out, then it is a ShardFailure."""

from octbatch.executors import ExecutorResult, RetryPolicy, ShardFailure
from octbatch.executors.retry import describe_error


def test_a_shard_is_given_again_until_its_attempts_run_out(shards):
    res = ExecutorResult()
    policy = RetryPolicy(2, res)
    s = shards[0]
    assert policy.failed(s, "boom 1") is True
    assert policy.failed(s, "boom 2") is True
    assert res.failures == [] and res.redone == [s.id] and policy.retries == 2
    assert policy.failed(s, "boom 3") is False
    assert res.failures == [ShardFailure(s, "boom 3", 3)]
    assert res.redone == [s.id]  # listed once however often it was redone
    assert policy.retries == 2


def test_no_retries_means_one_attempt(shards):
    res = ExecutorResult()
    assert RetryPolicy(0, res).failed(shards[0], "boom") is False
    assert res.failures == [ShardFailure(shards[0], "boom", 1)] and res.redone == []


def test_a_requeued_shard_counts_no_attempt(shards):
    res = ExecutorResult()
    policy = RetryPolicy(0, res)
    policy.requeue(shards[1])
    policy.requeue(shards[1])
    assert res.redone == [shards[1].id] and policy.retries == 2 and policy.attempts == {}
    assert policy.failed(shards[1], "boom") is False  # its first real attempt is its last one


def test_describe_error_names_the_exception_and_its_frames():
    try:
        raise ValueError("bad pixels")
    except ValueError as exc:
        text = describe_error(exc)
    head, tb = text.split("\n", 1)
    assert head == "ValueError: bad pixels"
    assert tb.startswith("Traceback (most recent call last):") and "ValueError: bad pixels" in tb
