"""The executor layer (pipeline/executor.py): a stage is set up once per worker, results come back
in batch order, a stage's exception reaches the caller, an inline executor pickled into another
process sets up once there; and the ingest stage through it: bad input is reject records, never a
dead run."""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from offclip.pipeline.executor import InlineExecutor, ProcessExecutor, make_executor

SETUPS: list[int] = []  #: pids of setup() calls in this process (a pool worker's own copy)


class Counting:
    """A stage that records where it was set up and which worker ran each batch."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.setups = 0

    def setup(self) -> None:
        self.setups += 1
        SETUPS.append(os.getpid())

    def process_batch(self, batch: list[int], offset: int = 0) -> dict:
        if self.fail_on is not None and self.fail_on in batch:
            raise ValueError(f"bad item {self.fail_on}")
        return {"pid": os.getpid(), "setups": self.setups, "out": [x * 10 + offset for x in batch]}

    def __getstate__(self) -> dict:  # a stage travels without its set-up state
        return {**self.__dict__, "setups": 0}

    @staticmethod
    def merge(parts: list[dict]) -> dict:
        return {"pid": [p["pid"] for p in parts], "setups": [p["setups"] for p in parts],
                "out": [x for p in parts for x in p["out"]]}


def test_inline_executor_sets_up_once_and_keeps_order():
    stage = Counting()
    with InlineExecutor(stage) as executor:
        assert stage.setups == 0  # no batch, no setup (a re-run with nothing to do loads nothing)
        got = list(executor.map([[1, 2], [3], [4, 5, 6]], [0, 1, 2]))
        assert [g["out"] for g in got] == [[10, 20], [31], [42, 52, 62]]
        assert executor.process([7])["out"] == [70]
    assert stage.setups == 1 and {g["pid"] for g in got} == {os.getpid()}


def test_process_executor_sets_up_once_per_worker_and_keeps_order():
    batches = [[i, i + 1] for i in range(0, 40, 2)]
    with ProcessExecutor(Counting(), workers=2) as executor:
        got = list(executor.map(batches, range(len(batches))))
        merged = executor.process(list(range(9)), 5)
    assert [g["out"] for g in got] == [[x * 10 + k for x in b] for k, b in enumerate(batches)]
    assert {g["setups"] for g in got} == {1}  # every batch saw a stage set up exactly once
    assert len({g["pid"] for g in got}) <= 2 and os.getpid() not in {g["pid"] for g in got}
    # one batch cut into a chunk per worker, merged in order
    assert merged["out"] == [x * 10 + 5 for x in range(9)] and len(merged["pid"]) == 2
    assert set(merged["setups"]) == {1}


def test_a_failing_batch_raises_its_error_in_the_caller():
    """The stage's exception propagates (today's behaviour: a bug stops the run; bad input is the
    stage's own business, turned into reject records, below)."""
    with InlineExecutor(Counting(fail_on=3)) as executor, pytest.raises(ValueError, match="bad item 3"):
        list(executor.map([[1], [3]]))
    with ProcessExecutor(Counting(fail_on=3), workers=2) as executor:
        with pytest.raises(ValueError, match="bad item 3"):
            list(executor.map([[1], [3], [5]]))
        assert executor.process([5, 6])["out"] == [50, 60]  # the pool lives on


def _travel(blob: bytes, batches: list[list[int]]) -> list[dict]:
    """What a task runner's worker does per task: unpickle the executor, run one batch."""
    return [pickle.loads(blob).process(b) for b in batches]


def test_inline_executor_pickled_to_a_worker_sets_up_once_there():
    stage = Counting()
    executor = InlineExecutor(stage)
    executor.process([1])  # set up here: the copy that travels is not
    blob = pickle.dumps(executor)
    with ProcessPoolExecutor(max_workers=1) as pool:
        got = pool.submit(_travel, blob, [[1], [2], [3]]).result()
    assert [g["out"] for g in got] == [[10], [20], [30]]
    assert {g["setups"] for g in got} == {1} and got[0]["pid"] != os.getpid()
    assert stage.setups == 1


def test_a_process_executor_does_not_travel():
    with ProcessExecutor(Counting(), workers=1) as executor, pytest.raises(TypeError, match="cannot travel"):
        pickle.dumps(executor)


def test_make_executor_picks_inline_for_one_worker_or_one_batch():
    assert isinstance(make_executor(Counting(), 1, 10), InlineExecutor)
    assert isinstance(make_executor(Counting(), 4, 1), InlineExecutor)
    with make_executor(Counting(), 2, 3) as executor:
        assert isinstance(executor, ProcessExecutor) and executor.workers == 2


def test_ingest_stage_travels_without_its_splitter(small_world, tmp_path):
    from offclip.pipeline.images import NormalizeConfig
    from offclip.pipeline.ingest import IngestStage

    stage = IngestStage(small_world[0], tmp_path, NormalizeConfig(long_side=32))
    stage.setup()
    assert stage.splitter is not None and pickle.loads(pickle.dumps(stage)).splitter is None


def test_bad_input_through_a_process_executor_is_reject_records(small_world, tmp_path):
    """A batch of faulty studies (the demo world's faults) through the pool: every study comes
    back, each fault a reject record with its reason; the run goes on."""
    import json

    from offclip.pipeline.images import NormalizeConfig
    from offclip.pipeline.ingest import IngestConfig, IngestStage, plan_ingest
    from offclip.pipeline.scan import ScanConfig

    world, _ = small_world
    faulty = {f["study_id"] for f in json.loads((world / "faults.json").read_text())}
    normalize = NormalizeConfig(long_side=32)
    plan = plan_ingest(IngestConfig(source=world, out=tmp_path, scan=ScanConfig(world, folders=None),
                                    normalize=normalize))
    batch = [s for s in plan.studies if s.study_id in faulty]
    with ProcessExecutor(IngestStage(world, tmp_path, normalize), workers=2) as executor:
        result = executor.process(batch, {})
    assert [r["study_id"] for r in result.studies] == [s.study_id for s in batch]
    assert len(batch) >= 5 and {r["study_id"] for r in result.rejects} == {s.study_id for s in batch}
    assert all(r["status"] == "rejected" for r in result.studies) and result.rejects


def test_the_flow_passes_its_executor_to_the_tasks_and_keeps_no_registry():
    """Issue 19: the flow's ingest tasks take the executor the flow owns as an argument; no
    module-global table of pools or stages to look one up in."""
    import inspect

    from offclip.flows import build, runners
    from offclip.pipeline.executor import InlineExecutor, ProcessExecutor

    assert list(inspect.signature(build.ingest_batch.fn).parameters) == ["executor", "batch", "previous"]
    assert not [name for name, value in vars(build).items() if isinstance(value, dict) and name.startswith("_") and not name.startswith("__")]
    stage = Counting()
    # the executor each runner's ingest tasks hand their batches to: the rule is make_executor's
    for kind in ("process", "dask"):
        assert isinstance(runners.task_executor_factory(build.ingest_batch, kind, 2)(stage, 5).inner, InlineExecutor)
    assert isinstance(runners.task_executor_factory(build.ingest_batch, "thread", 1)(stage, 5).inner, InlineExecutor)
    with runners.task_executor_factory(build.ingest_batch, "thread", 2)(stage, 5) as executor:
        assert isinstance(executor.inner, ProcessExecutor) and executor.inner.workers == 2
    with pytest.raises(ValueError, match="task_runner"):
        runners.task_executor_factory(build.ingest_batch, "ray", 2)


def test_the_scans_parallel_header_reads_equal_the_serial_ones(small_world, monkeypatch):
    """The scan's DICOM header reads go through a ProcessExecutor (scan.HeaderViews) when there are
    many: the views they give are those of the in-process reads."""
    import copy

    from offclip.pipeline import scan as scan_module
    from offclip.pipeline.scan import ScanConfig, scan_source

    world, _ = small_world
    studies = scan_source(ScanConfig(world, folders=None)).studies
    for study in studies:
        for image in study.images:
            image.view = "unknown"  # as if no metadata told any view: every header is read
    views = {}
    for workers, threshold in ((1, 10**9), (2, 1)):
        monkeypatch.setattr(scan_module, "PARALLEL_HEADERS_FROM", threshold)
        mine = copy.deepcopy(studies)
        scan_module._fill_views(world, mine, ScanConfig(world, folders=None, workers=workers, progress=False))
        views[workers] = [(i.dicom_id, i.view, i.view_position, i.view_source) for s in mine for i in s.images]
    assert views[1] == views[2] and {v[1] for v in views[1]} >= {"frontal", "lateral"}
