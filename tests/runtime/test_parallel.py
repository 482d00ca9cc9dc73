"""Slices in flight: core counting, the worker split, and the ordered bounded map."""

import threading
import time

import pytest

from scanside.runtime.parallel import default_workers, in_order, physical_cores, threads_per_worker


def fake_topology(root, cores_of_cpu: dict[int, tuple[int, int]]):
    for cpu, (package, core) in cores_of_cpu.items():
        folder = root / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n")
        (folder / "core_id").write_text(f"{core}\n")


def test_threads_default_to_physical_cores_of_the_process_affinity(tmp_path):
    # 4 cores with 2 SMT threads each (cpu n and n+4 share core n), one package.
    fake_topology(tmp_path, {cpu: (0, cpu % 4) for cpu in range(8)})
    assert physical_cores(set(range(8)), tmp_path) == 4  # not 8: siblings share a core
    assert physical_cores({0, 4}, tmp_path) == 1  # pinned to one core's two threads
    assert physical_cores({0, 1, 5}, tmp_path) == 2
    # Two packages whose core ids repeat are still different cores.
    other = tmp_path / "two"
    fake_topology(other, {0: (0, 0), 1: (1, 0)})
    assert physical_cores({0, 1}, other) == 2
    assert physical_cores({0, 1, 2}, tmp_path / "missing") == 3  # no topology: count CPUs


def test_cores_are_split_between_workers_never_below_one_thread():
    assert threads_per_worker(2, cores=16) == 8
    assert threads_per_worker(3, cores=16) == 5
    assert threads_per_worker(4, cores=2) == 1  # more workers than cores: one thread each
    assert default_workers(cores=1) == 1
    assert default_workers(cores=2) == 2


@pytest.mark.parametrize("workers", [1, 3])
def test_in_order_yields_in_submission_order_whatever_finishes_first(workers):
    def slow_first(i):
        time.sleep(0.05 if i == 0 else 0.0)  # the first item finishes last
        return i * 10

    got = [(item, future.result()) for item, future in in_order(slow_first, range(7), workers)]
    assert got == [(i, i * 10) for i in range(7)]


def test_in_order_runs_calls_at_once_and_bounds_what_is_ahead():
    running, most, started = 0, 0, []
    lock = threading.Lock()

    def call(i):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            started.append(i)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i

    consumed = 0
    for item, future in in_order(call, range(40), workers=2):
        assert future.result() == item
        # Never more than 2 x workers submitted beyond what the consumer has taken.
        assert len(started) <= consumed + 1 + 2 * 2
        consumed += 1
    assert most == 2


def test_an_error_is_the_items_and_the_rest_go_on():
    def call(i):
        if i == 2:
            raise ValueError(f"bad {i}")
        return i

    outcomes = {item: future.exception() for item, future in in_order(call, range(5), 2)}
    assert isinstance(outcomes[2], ValueError)
    assert [i for i, e in outcomes.items() if e is None] == [0, 1, 3, 4]


def test_stopping_early_cancels_what_has_not_started():
    started = []

    def call(i):
        started.append(i)
        time.sleep(0.02)
        return i

    for item, _ in in_order(call, range(100), workers=2):
        if item == 1:
            break
    time.sleep(0.1)
    assert len(started) <= 2 + 2 * 2  # the loop's window, not the hundred


def test_gpu_engine_calls_take_turns_cpu_ones_do_not(tiny_engine):
    """A GPU engine's device buffers are one per engine: calls from several workers must not
    overlap there (Pipeline.engine_lock); on the CPU they run at once."""
    from scanside import Pipeline

    class Recording:
        def __init__(self):
            self.running, self.most = 0, 0
            self.lock = threading.Lock()

        def run(self, feeds):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.03)
            with self.lock:
                self.running -= 1
            return {}

    pipe = Pipeline.load(tiny_engine)
    assert pipe.engine_lock is None  # the CPU backend
    for lock, expected in ((None, 3), (threading.Lock(), 1)):
        pipe.engine_lock = lock
        engine = Recording()
        threads = [threading.Thread(target=pipe.call, args=(engine, {})) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert engine.most == expected
