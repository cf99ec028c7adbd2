"""Groups trained at once (`runner.trainers`): the records of one group at a time, and `loop.Quiet` keeps every
timed chunk alone on the machine."""
import threading
import time

import pytest

from gradbench.engine import loop, runner
from gradbench.records.store import ResultsStore
from gradbench.spec import suite
from tests.conftest import tiny_suite

THREE = """
[[experiment]]
name = "tanh2"

[[experiment]]
name = "tanh3"
model = { family = "mlp", depth = 3, width = 8, activation = "tanh" }

[[experiment]]
name = "relu2"
model = { family = "mlp", depth = 2, width = 8, activation = "relu" }
"""


class _Order:
    def __init__(self):
        self.started, self.done = [], []

    def begin(self, groups):
        pass

    def group(self, label, steps, runs):
        self.started.append(label.split(":")[0])

    def group_done(self, records):
        self.done.append(records[0]["experiment"])


def test_two_trainers_train_groups_at_once_and_give_the_records_of_one(tmp_path, monkeypatch):
    s = suite.load(tiny_suite(tmp_path, seeds=4, steps=40, lr="[0.05, 0.5, 1e4]", extra=THREE))
    assert runner.group_count(s.cells) == 3
    monkeypatch.setenv("GRADBENCH_TRAINERS", "1")
    one = runner.run_suite(s, tmp_path / "one")

    # The first two groups meet inside training: with one trainer the barrier would time out.
    met, calls, original = threading.Barrier(2, timeout=120), [], loop.train_group

    def together(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            met.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(loop, "train_group", together)
    monkeypatch.setenv("GRADBENCH_TRAINERS", "2")
    order = _Order()
    two = runner.run_suite(s, tmp_path / "two", progress=order)
    assert len(set(calls[:2])) == 2 and all(name.startswith("train") for name in calls)
    assert order.started == ["tanh2", "tanh3", "relu2"] and sorted(order.done) == sorted(order.started)
    assert [r["cell_id"] for r in two] == [r["cell_id"] for r in one] == [c.cell_id for c in s.cells]
    assert [r["cell_id"] for r in ResultsStore(tmp_path / "two").records] == [c.cell_id for c in s.cells]
    assert [r["per_seed"] for r in two] == [r["per_seed"] for r in one]  # bit for bit
    assert sum(sum(r["per_seed"]["diverged"]) for r in two) > 0  # lr 1e4 diverges: not a trivial comparison
    assert all(r["throughput"]["timed_chunks"] >= loop.MIN_TIMED for r in two)


def test_trainers_default_to_one_per_core_on_a_cpu_and_one_on_an_accelerator(monkeypatch):
    monkeypatch.delenv("GRADBENCH_TRAINERS", raising=False)
    monkeypatch.setattr(runner, "cpu_cores", lambda: 2)
    assert runner.trainers("cpu") == 2 and runner.trainers("gpu") == 1
    monkeypatch.setattr(runner, "cpu_cores", lambda: 64)
    assert runner.trainers("cpu") == runner.MAX_TRAINERS
    monkeypatch.setenv("GRADBENCH_TRAINERS", "3")
    assert runner.trainers("gpu") == 3


def test_a_hold_waits_for_the_other_trainer_to_pause_and_nothing_runs_beside_it():
    quiet, chunks, stop, started = loop.Quiet(), [], threading.Event(), threading.Event()

    def trainer():  # a group: chunks of 10 ms, letting a waiting hold in between them
        with quiet.busy(train=True):
            started.set()
            while not stop.is_set():
                time.sleep(0.01)
                chunks.append(time.perf_counter())
                if quiet.should_pause():
                    quiet.pause()

    compiles = []

    def compile_step():
        with quiet.busy():
            compiles.append(time.perf_counter())

    other = threading.Thread(target=trainer)
    other.start()
    assert started.wait(10)
    with quiet.busy(train=True):
        assert quiet.mark() is None  # the other trainer is busy: no chunk of this one is timed
        with quiet.hold():
            n = len(chunks)
            step = threading.Thread(target=compile_step)
            step.start()
            time.sleep(0.2)
            assert len(chunks) == n and not compiles  # neither trains nor compiles beside the hold
            mark = quiet.mark()
            assert mark is not None and quiet.clean(mark)
        step.join(10)
        assert compiles and not step.is_alive()
        time.sleep(0.1)
        assert len(chunks) > n  # the trainer goes on after the hold

    # Two threads asking to hold at once each get it, one after the other (neither waits on the other).
    held = []

    def holder():
        with quiet.busy(train=True), quiet.hold():
            held.append(time.perf_counter())
            time.sleep(0.05)

    holders = [threading.Thread(target=holder) for _ in range(2)]
    for h in holders:
        h.start()
    for h in holders:
        h.join(10)
    assert len(held) == 2 and not any(h.is_alive() for h in holders)
    stop.set()
    other.join(10)
    assert not other.is_alive()

    # Another thread busy at any time since the mark, however briefly, makes the chunk unclean.
    mark = quiet.mark()
    assert quiet.clean(mark)
    brief = threading.Thread(target=compile_step)
    brief.start()
    brief.join(10)
    assert not quiet.clean(mark)


@pytest.mark.parametrize("trainers", ["1", "2"])
def test_an_interrupt_keeps_the_finished_groups_with_any_number_of_trainers(tmp_path, monkeypatch, trainers):
    s = suite.load(tiny_suite(tmp_path, seeds=2, steps=40, lr="0.05", extra=THREE))
    monkeypatch.setenv("GRADBENCH_TRAINERS", trainers)
    order = _Order()
    with pytest.raises(KeyboardInterrupt):  # asked to stop once the last group starts: it is not kept
        runner.run_suite(s, tmp_path / "o", progress=order, stop=lambda: len(order.started) == 3)
    kept = {r["experiment"] for r in ResultsStore(tmp_path / "o").records}
    assert kept and "relu2" not in kept
    again = runner.run_suite(s, tmp_path / "o", progress=_Order())  # a rerun trains what is missing
    assert [r["cell_id"] for r in again] == [c.cell_id for c in s.cells]


def test_trainers_keep_to_the_cores_a_compile_step_leaves():
    quiet, log, go = loop.Quiet(cores=2), [], threading.Event()

    def trainer(name):
        with quiet.busy(train=True):
            log.append(f"{name} starts")
            while not go.is_set():
                time.sleep(0.01)
                if quiet.should_pause():
                    log.append(f"{name} pauses")
                    quiet.pause()
                    log.append(f"{name} resumes")

    first = threading.Thread(target=trainer, args=("a",))
    first.start()
    while "a starts" not in log:
        time.sleep(0.01)
    with quiet.busy():  # a compile step: with it and trainer a, both cores are taken
        second = threading.Thread(target=trainer, args=("b",))
        second.start()
        time.sleep(0.2)
        assert log == ["a starts"]  # b waits for a core; a goes on
    for _ in range(500):
        if "b starts" in log:
            break
        time.sleep(0.01)
    assert log == ["a starts", "b starts"]  # the step ended: b takes its core
    with quiet.busy():  # another step: one of the two trainers stops at its next chunk boundary
        time.sleep(0.2)
        assert log.count("a pauses") + log.count("b pauses") == 1
    go.set()
    first.join(10)
    second.join(10)
    assert log.count("a resumes") + log.count("b resumes") == 1 and not first.is_alive() and not second.is_alive()
