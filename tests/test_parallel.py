"""Ordered, bounded thread pools (hbr.parallel)."""

import time

import pytest

from hbr.parallel import map_in_order


def test_results_come_in_order_and_items_are_read_only_as_needed():
    pulled = []

    def items():
        for i in range(50):
            pulled.append(i)
            yield i

    def slow_square(x):
        time.sleep(0.002 * (x % 3))  # later items often finish first
        return x * x

    results = map_in_order(slow_square, items(), 4, "test")
    first = next(results)
    assert first == 0
    assert len(pulled) == 5  # 4 threads busy + 1 waiting, not all 50 items submitted
    assert [first, *results] == [i * i for i in range(50)]


def test_an_error_reaches_the_consumer_at_its_item():
    def fail_on_three(x):
        if x == 3:
            raise ValueError("item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for value in map_in_order(fail_on_three, range(10), 2, "test"):
            got.append(value)
    assert got == [0, 1, 2]
