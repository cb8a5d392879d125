"""CaptureSupervisor and Backoff, in-process with FakeSource and a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.conftest import udp_batch
from portwatch.analysis.flows import FlowLimits
from portwatch.capture.live.source import PacketSource
from portwatch.daemon.config import CaptureConfig, DaemonConfig
from portwatch.daemon.counters import RegistryFacts, TrafficCounters
from portwatch.daemon.supervisor import (
    Backoff,
    CaptureSupervisor,
    OutcomeKind,
    RunOutcome,
)
from portwatch.errors import BackendError
from portwatch.porttable.compile import compile_table
from portwatch.registry.formats.services_file import parse_services
from portwatch.registry.merge import merge_sources
from portwatch.testing import FakeClock, FakeSource

CONFIG = DaemonConfig(capture=CaptureConfig(interfaces=("fake0",)))


@pytest.fixture(scope="module")
def facts_and_table():  # type: ignore[no-untyped-def]
    registry = merge_sources([parse_services("domain 53/udp\n", "services")])
    table = compile_table(registry)
    return table, RegistryFacts.of(table, registry)


@pytest.fixture
def counters(facts_and_table) -> TrafficCounters:  # type: ignore[no-untyped-def]
    table, facts = facts_and_table
    return TrafficCounters(table, FlowLimits(), facts)


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[RunOutcome] = []
        self.changed = threading.Condition()

    def __call__(self, outcome: RunOutcome) -> None:
        with self.changed:
            self.outcomes.append(outcome)
            self.changed.notify_all()

    def wait_for(self, n: int) -> list[RunOutcome]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.outcomes) >= n, timeout=10)
            return list(self.outcomes)


def supervisor(factory: Callable[[DaemonConfig], PacketSource], counters: TrafficCounters,
               clock: FakeClock, recorder: Recorder, *, stop_after_sleeps: int | None = None,
               ) -> CaptureSupervisor:
    sup = CaptureSupervisor(factory, lambda: CONFIG, counters, clock=clock.monotonic,
                            sleep=clock.sleep, on_outcome=recorder)
    if stop_after_sleeps is not None:
        def maybe_stop(_: float) -> None:
            if len(clock.sleeps) >= stop_after_sleeps:
                sup.stop()
        clock.on_sleep = maybe_stop
    return sup


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def test_backoff_doubles_up_to_the_maximum() -> None:
    backoff, delays = Backoff(), []
    for _ in range(9):
        delay, backoff = backoff.after_failure(ran_s=1.0)
        delays.append(delay)
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


@given(st.lists(st.floats(min_value=0, max_value=200), min_size=1, max_size=30))
def test_backoff_stays_in_bounds_and_resets_after_every_healthy_run(runs: list[float]) -> None:
    backoff = Backoff()
    for ran_s in runs:
        delay, backoff = backoff.after_failure(ran_s)
        assert 0.5 <= delay <= 30
        if ran_s >= 60:
            assert delay == 0.5


def test_a_failing_source_restarts_with_growing_delays_and_each_restart_counts(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    source = FakeSource([udp_batch(53, 3)], fail_with="link down")
    sup = supervisor(lambda c: source, counters, clock, recorder, stop_after_sleeps=5)
    sup.run()
    assert clock.sleeps == [0.5, 1, 2, 4, 8]
    assert source.runs == 5
    assert counters.snapshot().restarts == {"fake": 4}  # the first start is no restart
    assert counters.snapshot().received == {"fake0": 15}
    assert [o.kind for o in recorder.outcomes] == [OutcomeKind.FAILED] * 5
    assert recorder.outcomes[2] == RunOutcome(OutcomeKind.FAILED, "fake", "link down",
                                              ran_s=0.0, delay_s=2)


def test_delays_start_again_after_a_healthy_run(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    lengths = iter([1.0, 1.0, 1.0, 75.0, 1.0, 1.0])  # the fourth run lasts 75 s
    sup = supervisor(lambda c: FakeSource(fail_with="gone", clock=clock, run_s=next(lengths)),
                     counters, clock, recorder, stop_after_sleeps=6)
    sup.run()
    assert clock.sleeps == [0.5, 1, 2, 0.5, 1, 2]
    assert [o.ran_s for o in recorder.outcomes[:4]] == [1.0, 1.0, 1.0, 75.0]


def test_a_source_that_ends_by_itself_counts_as_a_failure(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    sup = supervisor(lambda c: FakeSource([udp_batch(53, 1)]), counters, clock, recorder,
                     stop_after_sleeps=2)
    sup.run()
    assert [o.message for o in recorder.outcomes] == ["capture ended"] * 2


def test_a_source_that_cannot_be_made_is_retried_with_back_off(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    def factory(config: DaemonConfig) -> PacketSource:
        raise BackendError("cannot run dumpcap: No such file or directory")
    sup = supervisor(factory, counters, clock, recorder, stop_after_sleeps=3)
    sup.run()
    assert clock.sleeps == [0.5, 1, 2]
    assert {o.message for o in recorder.outcomes} == {
        "cannot run dumpcap: No such file or directory"}
    assert counters.snapshot().restarts == {"dumpcap": 2}


def test_a_bug_in_a_source_is_reported_and_restarted_not_a_dead_thread(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    class Buggy(FakeSource):
        def batches(self) -> Iterator:  # type: ignore[type-arg]
            raise ZeroDivisionError("division by zero")
            yield
    sup = supervisor(lambda c: Buggy(), counters, clock, recorder, stop_after_sleeps=2)
    sup.run()
    assert recorder.outcomes[0].message == "unexpected ZeroDivisionError: division by zero"
    assert len(recorder.outcomes) == 2


def test_drops_are_added_as_deltas_of_the_cumulative_count(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    source = FakeSource([udp_batch(53, 1)], hold=True, drops={"fake0": 5})
    sup = supervisor(lambda c: source, counters, clock, recorder)
    thread = threading.Thread(target=sup.run)
    thread.start()
    assert source.holding.wait(10)
    sup.poll_drops()
    source.drops["fake0"] = 7
    sup.poll_drops()
    sup.poll_drops()
    sup.stop()
    thread.join(10)
    assert counters.snapshot().dropped == {"fake0": 7}


def test_a_finite_source_finishes_then_waits_for_a_restart_request(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    source = FakeSource([udp_batch(53, 2)], finite=True, backend="replay")
    sup = supervisor(lambda c: source, counters, clock, recorder)
    thread = threading.Thread(target=sup.run)
    thread.start()
    assert recorder.wait_for(1)[0].kind is OutcomeKind.FINISHED
    assert sup.finished
    assert thread.is_alive()  # idle, not restarting
    sup.request_restart()
    assert recorder.wait_for(2)[1].kind is OutcomeKind.FINISHED
    sup.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert source.runs == 2
    assert clock.sleeps == []
    assert counters.snapshot().restarts == {"replay": 0}  # a requested restart is not counted
    assert counters.snapshot().received == {"fake0": 4}


def test_stop_ends_a_held_run_and_the_loop(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    source = FakeSource([udp_batch(53, 1)], hold=True)
    sup = supervisor(lambda c: source, counters, clock, recorder)
    thread = threading.Thread(target=sup.run)
    thread.start()
    assert source.holding.wait(10)
    sup.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert recorder.outcomes == [RunOutcome(OutcomeKind.STOPPED, "fake")]


def test_a_restart_request_ends_a_held_run_and_starts_the_next_uncounted(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    source = FakeSource([udp_batch(53, 1)], hold=True)
    sup = supervisor(lambda c: source, counters, clock, recorder)
    thread = threading.Thread(target=sup.run)
    thread.start()
    assert source.holding.wait(10)
    sup.request_restart()
    assert recorder.wait_for(1)[0].kind is OutcomeKind.STOPPED
    while source.runs < 2 or not source.holding.is_set():
        source.holding.wait(0.01)
    sup.stop()
    thread.join(10)
    assert counters.snapshot().restarts == {"fake": 0}
    assert clock.sleeps == []


def test_a_source_made_while_a_restart_was_asked_for_never_runs(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    made: list[FakeSource] = []

    def factory(config: DaemonConfig) -> PacketSource:
        made.append(FakeSource([udp_batch(53, 1)], finite=True))
        if len(made) == 1:
            sup.request_restart()  # a reload lands while the first source is being made
        else:
            sup.stop()
        return made[-1]
    sup = supervisor(factory, counters, clock, recorder)
    sup.run()
    assert [s.runs for s in made] == [0, 0]
    assert [o.kind for o in recorder.outcomes] == [OutcomeKind.STOPPED] * 2


def test_current_source_is_the_running_one_and_none_after(
        counters: TrafficCounters, clock: FakeClock, recorder: Recorder) -> None:
    seen: list[PacketSource | None] = []
    made: list[PacketSource] = []

    def factory(config: DaemonConfig) -> PacketSource:
        made.append(FakeSource([udp_batch(53, 1)], fail_with="gone"))
        return made[-1]

    sup = CaptureSupervisor(factory, lambda: CONFIG, counters, clock=clock.monotonic,
                            sleep=lambda s: sup.stop(), on_outcome=recorder,
                            on_start=lambda source, config: seen.append(sup.current_source()))
    sup.run()
    assert seen == made[:1]
    assert sup.current_source() is None
