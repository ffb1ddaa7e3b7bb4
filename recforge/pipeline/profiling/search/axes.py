"""The usual ordered knob axes: DeepRecSched's (sub-batch size, GPU offload threshold) and Triton's dynamic
batching (preferred batch sizes, queue delay, instances, max_batch_size), and which Triton knob combinations are
valid together (:func:`triton_knob_problem`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from recforge.core.errors import ConfigError
from recforge.pipeline.profiling.search.base import check_axes

DEFAULT_SUB_BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_QUEUE_DELAYS_US = (0, 50, 100, 200, 500, 1000, 2000, 5000)
MAX_TRITON_BATCH = 1 << 16


def powers_of_two(low: int, high: int) -> list[int]:
    """The powers of two in [low, high], ascending."""
    out, v = [], 1
    while v <= high:
        if v >= low:
            out.append(v)
        v *= 2
    return out


def deeprecsched_axes(max_sub_batch: int = 1024, *, min_sub_batch: int = 8,
                      gpu_thresholds: Sequence[int] | None = None) -> dict[str, tuple]:
    """DeepRecSched's axes: ``sub_batch`` over the powers of two in [min_sub_batch, max_sub_batch] and, when a
    GPU exists, ``gpu_threshold`` (queries of more items than this go to the GPU), ascending."""
    if not isinstance(min_sub_batch, int) or not isinstance(max_sub_batch, int) or not \
            1 <= min_sub_batch <= max_sub_batch <= 1024:
        raise ConfigError(f"sub-batch bounds must be integers with 1 <= min <= max <= 1024, got "
                          f"{min_sub_batch!r}, {max_sub_batch!r}")
    sub_batches = powers_of_two(min_sub_batch, max_sub_batch)
    if not sub_batches:
        raise ConfigError(f"no power of two in [{min_sub_batch}, {max_sub_batch}]")
    axes: dict[str, tuple] = {"sub_batch": tuple(sub_batches)}
    if gpu_thresholds is not None:
        thresholds = list(gpu_thresholds)
        if not thresholds or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in thresholds) \
                or thresholds != sorted(set(thresholds)):
            raise ConfigError(f"gpu_thresholds must be distinct integers >= 0 in ascending order, got {thresholds}")
        axes["gpu_threshold"] = tuple(thresholds)
    return check_axes(axes)


def triton_axes(max_batch: int, *, max_instances: int = 4,
                queue_delays_us: Sequence[int] = DEFAULT_QUEUE_DELAYS_US) -> dict[str, tuple]:
    """Triton dynamic-batching knobs as ordered axes for ``HillClimb``:

    * ``preferred_batch``: preferred batch size sets, from strictest to most permissive: ``[max_batch]`` (wait
      for full batches), then adding the next lower power of two each step (``[max/2, max]``, ...), down to
      every power of two, and last ``[]`` (no preference: dispatch whatever has arrived);
    * ``queue_delay_us``: max_queue_delay_microseconds candidates, ascending;
    * ``instances``: instance_group counts 1..max_instances.
    """
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= MAX_TRITON_BATCH:
        raise ConfigError(f"max_batch must be an integer in [1, {MAX_TRITON_BATCH}], got {max_batch!r}")
    if not isinstance(max_instances, int) or isinstance(max_instances, bool) or not 1 <= max_instances <= 64:
        raise ConfigError(f"max_instances must be an integer in [1, 64], got {max_instances!r}")
    delays = list(queue_delays_us)
    if not delays or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in delays) \
            or delays != sorted(set(delays)):
        raise ConfigError(f"queue_delays_us must be distinct integers >= 0 in ascending order, got {delays}")
    sizes = sorted(set(powers_of_two(1, max_batch) + [max_batch]), reverse=True)  # max_batch first
    preferred = [sorted(sizes[: k + 1]) for k in range(len(sizes))] + [[]]
    return check_axes({
        "preferred_batch": tuple(preferred),
        "queue_delay_us": tuple(delays),
        "instances": tuple(range(1, max_instances + 1)),
    })


def max_batch_sizes(max_batch: int, *, smallest: int = 256) -> tuple[int, ...]:
    """Triton ``max_batch_size`` candidates for a model that takes up to ``max_batch`` rows: ``smallest`` (a
    dynamic batch of about one DeepRecSys query) and ``max_batch`` itself, ascending (one value when they meet)."""
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= MAX_TRITON_BATCH:
        raise ConfigError(f"max_batch must be an integer in [1, {MAX_TRITON_BATCH}], got {max_batch!r}")
    return tuple(sorted({min(smallest, max_batch), max_batch}))


def triton_knob_problem(knobs: Mapping[str, Any]) -> str:
    """Why these knobs cannot be served together ("" when they can): Triton refuses a preferred batch size above
    ``max_batch_size``, and a client sub-batch above it is a request Triton rejects."""
    max_batch = knobs.get("max_batch_size")
    if max_batch is None:
        return ""
    too_big = [b for b in knobs.get("preferred_batch", ()) if b > max_batch]
    if too_big:
        return f"preferred_batch {too_big} above max_batch_size {max_batch}"
    if knobs.get("sub_batch", 0) > max_batch:
        return f"sub_batch {knobs['sub_batch']} above max_batch_size {max_batch}"
    return ""


def triton_knobs_valid(knobs: Mapping[str, Any]) -> bool:
    """True when :func:`triton_knob_problem` finds nothing: the ``valid`` predicate of the Triton searches."""
    return not triton_knob_problem(knobs)


def triton_batching_axes(max_batches: Sequence[int], *, max_instances: int,
                         queue_delays_us: Sequence[int] = DEFAULT_QUEUE_DELAYS_US) -> dict[str, tuple]:
    """The Triton knobs of a racing search, in the order they are raced (the likeliest large effect first):

    * ``instances``: 1..max_instances (at most the CPUs the node may use);
    * ``queue_delay_us``: max_queue_delay_microseconds candidates, ascending;
    * ``preferred_batch``: none (dispatch whatever has arrived), then per max_batch_size candidate ``m`` the full
      batch ``[m]`` and ``[m/2, m]``; a set above a setting's max_batch_size is invalid there
      (:func:`triton_knob_problem`), so every max_batch_size keeps its own meaningful preferences;
    * ``max_batch_size``: ``max_batches`` (ascending), only when there is more than one.
    """
    sizes = list(max_batches)
    if not sizes or sizes != sorted(set(sizes)) or any(
            not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= MAX_TRITON_BATCH for m in sizes):
        raise ConfigError(f"max_batches must be distinct integers in [1, {MAX_TRITON_BATCH}] in ascending order, "
                          f"got {sizes}")
    base = triton_axes(sizes[-1], max_instances=max_instances, queue_delays_us=queue_delays_us)  # checks
    preferred: list[list[int]] = [[]]
    for m in sizes:
        for option in ([m], [m // 2, m]):
            if option[0] >= 1 and option not in preferred and len(set(option)) == len(option):
                preferred.append(option)
    axes: dict[str, tuple] = {"instances": base["instances"], "queue_delay_us": base["queue_delay_us"],
                              "preferred_batch": tuple(preferred)}
    if len(sizes) > 1:
        axes["max_batch_size"] = tuple(sizes)
    return check_axes(axes)
