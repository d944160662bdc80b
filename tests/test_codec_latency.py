"""Latency histogram codec: bucket edges, huge and negative values and labels, each tested compiled and pure."""

from __future__ import annotations

import copy
import pickle

import pytest
from codec_impls import IMPLEMENTATION_NAMES, load_implementation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdsproxy._codec as codec
from rdsproxy import metrics

BOUNDS = metrics.LATENCY_BUCKET_BOUNDS_US
OVERFLOW = len(BOUNDS)  # index of the +Inf bucket
INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request):
    return load_implementation(request.param)


def bucket_of(impl, us: int) -> int:
    """The index of the one bucket a single observation of `us` lands in."""
    latency = impl.Latency()
    latency.observe(us)
    buckets = latency.buckets
    assert sum(buckets) == 1
    return buckets.index(1)


def test_empty_histogram(impl):
    latency = impl.Latency()
    assert latency.count == 0
    assert latency.sum_us == 0
    assert latency.buckets == [0] * (len(BOUNDS) + 1)
    assert latency.average() == 0.0
    assert isinstance(latency.average(), float)
    assert [count for _, count in latency.cumulative_buckets()] == [0] * (len(BOUNDS) + 1)


@pytest.mark.parametrize("index", range(len(BOUNDS)))
def test_a_bound_belongs_to_its_own_bucket_and_one_more_to_the_next(impl, index):
    bound = BOUNDS[index]
    assert bucket_of(impl, bound) == index  # le = less or equal
    assert bucket_of(impl, bound + 1) == index + 1
    assert bucket_of(impl, bound - 1) == index  # the bounds are far apart: bound - 1 is above the previous one


def test_zero_and_observe_zero_are_the_same(impl):
    observed, shortcut = impl.Latency(), impl.Latency()
    observed.observe(0)
    shortcut.observe_zero()
    for latency in (observed, shortcut):
        assert latency.count == 1
        assert latency.sum_us == 0
        assert latency.buckets == [1] + [0] * len(BOUNDS)
        assert latency.average() == 0.0
    assert observed.cumulative_buckets() == shortcut.cumulative_buckets()


@pytest.mark.parametrize("us", [BOUNDS[-1] + 1, 10 * BOUNDS[-1], INT64_MAX, 2**63, 2**64 + 7, 10**40])
def test_overflow_and_huge_values_land_in_the_last_bucket_with_an_exact_sum(impl, us):
    latency = impl.Latency()
    latency.observe(us)
    latency.observe(us)
    assert latency.count == 2
    assert latency.sum_us == 2 * us  # exact, even past 64 bits
    assert latency.buckets[OVERFLOW] == 2
    assert latency.average() == (2 * us) / 2


def test_sum_stays_exact_across_int64_overflow(impl):
    latency = impl.Latency()
    values = [INT64_MAX, INT64_MAX, 1, -(2**63), 5, 2**70, -(2**70), INT64_MAX]
    for value in values:
        latency.observe(value)
    assert latency.sum_us == sum(values)
    assert latency.count == len(values)
    assert latency.average() == sum(values) / len(values)


@pytest.mark.parametrize("us", [-1, -50, -(2**63), -(2**63) - 1, -(10**40)])
def test_negative_values_go_to_the_first_bucket_and_into_the_sum(impl, us):
    # Today's behaviour: bisect_left puts anything below the first bound in bucket 0, and the sum takes it as is.
    latency = impl.Latency()
    latency.observe(us)
    latency.observe(100)
    assert latency.buckets[0] == 1
    assert latency.buckets[1] == 1
    assert latency.sum_us == us + 100
    assert latency.count == 2


def test_booleans_count_as_integers(impl):
    latency = impl.Latency()
    latency.observe(True)
    assert latency.sum_us == 1 and latency.buckets[0] == 1


def test_average(impl):
    latency = impl.Latency()
    for value in (100, 300, 1_000):
        latency.observe(value)
    latency.observe_zero()
    assert latency.average() == 1_400 / 4
    assert latency.sum_us == 1_400


def test_cumulative_buckets_labels_and_order(impl):
    latency = impl.Latency()
    for value in (0, 50, 51, 100, 2_500_000, 60_000_000, 60_000_001, 2**64):
        latency.observe(value)
    pairs = latency.cumulative_buckets()
    labels = [label for label, _ in pairs]
    assert labels[:5] == ["50.0", "100.0", "250.0", "500.0", "1000.0"]
    assert labels[13] == "1e+06"  # Go float form, as prometheus_client writes its own histograms
    assert labels[-2] == "6e+07"
    assert labels[-1] == "+Inf"
    assert len(labels) == len(BOUNDS) + 1
    counts = [count for _, count in pairs]
    assert counts == sorted(counts)
    assert counts[0] == 2 and counts[1] == 4 and counts[-2] == 6 and counts[-1] == latency.count == 8


def test_buckets_is_a_list_of_ints(impl):
    latency = impl.Latency()
    latency.observe(75)
    buckets = latency.buckets
    assert type(buckets) is list and all(type(count) is int for count in buckets)
    assert len(buckets) == len(BOUNDS) + 1
    assert buckets[1] == 1


def test_compiled_buckets_is_a_fresh_list_each_time():
    latency = load_implementation("compiled").Latency()
    latency.observe(75)
    buckets = latency.buckets
    assert buckets is not latency.buckets
    buckets[1] = 99  # the counts live in a C array: a returned list is a copy
    assert latency.buckets[1] == 1


def test_unknown_attributes_are_rejected(impl):
    with pytest.raises(AttributeError):
        impl.Latency().counts = 1  # type: ignore[attr-defined]


def test_compiled_twin_rejects_non_integers_without_counting():
    compiled = load_implementation("compiled")
    latency = compiled.Latency()
    with pytest.raises(TypeError):
        latency.observe(1.5)
    assert latency.count == 0 and latency.sum_us == 0 and sum(latency.buckets) == 0


def test_public_api_and_bounds_are_shared():
    compiled, pure = load_implementation("compiled"), load_implementation("pure")
    assert compiled.latency.__all__ == pure.latency.__all__
    # One definition of the bounds and labels: the compiled twin takes the pure module's objects.
    assert compiled.latency.LATENCY_BUCKET_BOUNDS_US is pure.latency.LATENCY_BUCKET_BOUNDS_US
    assert compiled.latency.BUCKET_LABELS is pure.latency.BUCKET_LABELS
    assert metrics.LATENCY_BUCKET_BOUNDS_US is pure.latency.LATENCY_BUCKET_BOUNDS_US


def test_metrics_uses_the_selected_implementation():
    active = codec.IMPLEMENTATIONS["pure" if codec.extensions_disabled() else "compiled"]
    assert metrics.Latency is codec.Latency is active.Latency is active.latency.Latency
    assert type(metrics.Metrics("p").endpoint("e").QueryResponseLatency) is active.Latency
    if not codec.extensions_disabled():
        assert active.latency.__file__.endswith((".so", ".pyd"))


# Mostly realistic latencies and every bound's neighbourhood, with huge and negative values mixed in.
latencies = st.one_of(
    st.integers(min_value=0, max_value=120_000_000),
    st.sampled_from(BOUNDS).flatmap(lambda bound: st.integers(bound - 2, bound + 2)),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, INT64_MAX, 2**63, -(2**63), -(2**63) - 1]),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(st.one_of(latencies, st.none()), max_size=60))
def test_twins_agree_on_random_sequences(values):
    compiled, pure = load_implementation("compiled"), load_implementation("pure")
    twins = [compiled.Latency(), pure.Latency()]
    for value in values:
        for latency in twins:
            if value is None:
                latency.observe_zero()
            else:
                latency.observe(value)
    first, second = twins
    assert first.count == second.count == len(values)
    assert first.sum_us == second.sum_us
    assert first.buckets == second.buckets
    assert first.average() == second.average()
    assert first.cumulative_buckets() == second.cumulative_buckets()


def test_copy_and_pickle_keep_the_state(impl):
    latency = impl.Latency()
    for value in (0, 75, 2**70, -3):
        latency.observe(value)
    state = (latency.count, latency.sum_us, latency.buckets)
    for clone in (copy.copy(latency), copy.deepcopy(latency), pickle.loads(pickle.dumps(latency))):
        assert type(clone) is type(latency)
        assert (clone.count, clone.sum_us, clone.buckets) == state
    # Independent of the original (copy.copy is left out: the pure twin's shallow copy shares its buckets list).
    for clone in (copy.deepcopy(latency), pickle.loads(pickle.dumps(latency))):
        clone.observe(100)
        assert (latency.count, latency.sum_us, latency.buckets) == state


@pytest.mark.parametrize("value", [1.5, "7", None])
def test_non_integer_is_refused_before_counting(impl, value):
    latency = impl.Latency()
    with pytest.raises(TypeError):
        latency.observe(value)
    assert latency.count == 0 and latency.sum_us == 0 and sum(latency.buckets) == 0
