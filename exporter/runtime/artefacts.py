"""The shapes of the files flexiexport writes beside the manifest and reads back: ``latency.json``,
``bench.json`` and ``eval.json``.

TypedDicts, so that what is read stays the very dict ``json.loads`` returned (a merge keeps unknown
keys and other machines' sections as they were) while mypy checks every key we use. Two kinds:

- as written (``...Record``, ``...File``, ``MachineInfo``): what ``bench``, ``evaluate`` and the
  runtime's latency probe build from their typed results;
- as checked on reading (``LatencyRow``, ``BenchRow``, ``CheckedBench``, ``EvalResult``,
  ``CheckedEval``, ``LatencySection``): only the keys the checks in ``measurements`` vouch for, of
  files that may be older, newer or hand-edited; whatever else a row holds is kept, unread.

A JSON object kept as it was read without being looked into (another machine's section, an
earlier run's row that ``bench`` keeps) is a ``dict[str, object]``: nothing in it is relied on.
"""

from __future__ import annotations

from typing_extensions import NotRequired, TypedDict

# --- as checked on reading ------------------------------------------------------------------------


class LatencyRow(TypedDict):
    """A measured latency a reader may use (``row_problem``): a variant the bundle has, a batch
    from 1 to 2**20, finite latencies > 0. Rows of both latency.json and bench.json's timings."""

    backend: str  # with its precision where not fp32: ``ort-cpu int8``
    variant: str
    batch: int
    p50_ms: float
    p99_ms: float


class ProbeRow(LatencyRow):
    """A row the runtime's latency probe writes to latency.json."""

    measured: str  # UTC, ISO 8601


class BenchRow(LatencyRow):
    """A bench.json timing the plot and the frontier may use (``row_problem(..., bench=True)``)."""

    patch_size: list[int]  # a pair of whole numbers
    img_size: NotRequired[list[int]]  # a pair, where recorded (a grid has several per patch size)


class BenchMachine(TypedDict):
    """bench.json's ``machine`` as ``checked_bench`` vouches for it (the plot's title names it)."""

    cpu: str


class CheckedBench(TypedDict):
    """bench.json with its header as we write it and only its usable timings (at least one)."""

    machine: BenchMachine
    threads: int
    timings: list[BenchRow]


class EvalResult(TypedDict):
    """An eval.json result the plot may use (``checked_eval``)."""

    backend: str
    variant: str
    top1: float  # in [0, 1]
    patch_size: list[int]  # a pair
    img_size: NotRequired[list[int] | None]  # a pair, where recorded


class CheckedEval(TypedDict):
    """eval.json with only its usable results (at least one); ``data`` and ``samples`` are not
    checked: the plot prints them in its title (a file without them draws no plot)."""

    results: list[EvalResult]
    data: NotRequired[object]
    samples: NotRequired[object]


class LatencySection(TypedDict, total=False):
    """One machine's section of latency.json as read: an object, nothing in it checked yet
    (``same_machine`` and ``valid_rows`` look at ``machine`` and ``rows``)."""

    machine: object
    rows: object


# --- as written -----------------------------------------------------------------------------------


class LatencyFile(TypedDict):
    """latency.json: the machine that wrote last at the top level (what earlier versions read),
    with whatever else its section held; every other machine's section under ``other_machines``."""

    machine: dict[str, str]  # ``machine_key()``: cpu, machine
    rows: list[LatencyRow]
    other_machines: NotRequired[list[LatencySection]]


class MachineInfo(TypedDict):
    """bench.json's ``machine``: where and with what it was measured."""

    cpu: str
    cores_available: int
    threads: int
    gpu: str | None
    python: str
    torch: str
    onnxruntime: str
    ort_providers: list[str]
    flexiexport: str


class CeilingRecord(TypedDict):
    """bench.json's ``ceiling`` (``measure.ceiling.Ceiling``): None where not measured."""

    size: int
    ort_matmul_gflops: float | None
    torch_sgemm_gflops: float | None
    bf16_matmul_gflops: float | None
    int8_matmul_gops: float | None


class TimingRecord(TypedDict):
    """One bench.json timing as ``bench`` writes it (``measure.bench.Timing``)."""

    backend: str
    variant: str
    patch_size: tuple[int, int]
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float
    gflops_per_image: float
    achieved_gflops: float
    fraction_of_ceiling: float | None
    peak_rss_mb: float
    setup_seconds: float
    measured_at: str
    threads: int
    img_size: tuple[int, int]


class SkippedRecord(TypedDict):
    """A backend (or one of its cases) ``bench`` could not run, and why."""

    backend: str
    reason: str


class ResampleRecord(TypedDict):
    """What the in-graph resample costs (``measure.resample.ResampleCost``)."""

    backend: str
    variant: str
    img_size: tuple[int, int]
    batch: int
    dynamic_p50_ms: float
    fixed_p50_ms: float
    dynamic_p99_ms: float
    fixed_p99_ms: float
    extra_ms: float
    extra_percent: float
    measured_at: str


class BenchFile(TypedDict):
    """bench.json: this machine's run at the top, with the rows of its earlier runs that this one
    did not replace (kept as read); every other machine's section under ``other_machines``."""

    machine: MachineInfo
    threads: int
    ceiling: CeilingRecord
    timings: list[TimingRecord | dict[str, object]]
    skipped: list[SkippedRecord | dict[str, object]]
    resample: list[ResampleRecord | dict[str, object]]
    other_machines: NotRequired[list[dict[str, object]]]


class EvalRecord(TypedDict):
    """One eval.json result as ``evaluate`` writes it (``measure.evaluate.EvalRow``)."""

    backend: str
    variant: str
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    samples: int
    top1: float
    top5: float
    delta_top1: float | None  # against PyTorch fp32, same variant
    max_drop: float | None  # the precision's allowed accuracy drop
    passed: bool


class EvalFile(TypedDict):
    """eval.json."""

    data: str  # what was evaluated: the dataset's name
    samples: int
    results: list[EvalRecord]
    failures: list[str]  # one line per result that dropped more than allowed
    skipped: list[str]  # why each unreadable image was left out
