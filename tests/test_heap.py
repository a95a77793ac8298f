import gc

from syncd.heap import GC_GEN0_THRESHOLD, LISTING_GEN0_THRESHOLD, listing_heap, serving_heap


def test_serving_heap_freezes_startup_objects_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    startup_object = [["allocated before serving"]]
    assert gc.is_tracked(startup_object)
    with serving_heap():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
        # Frozen objects are out of every generation a collection walks.
        assert not any(startup_object is o for o in gc.get_objects())
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert any(startup_object is o for o in gc.get_objects())


def test_serving_heap_restores_the_collector_when_serving_fails() -> None:
    before = gc.get_threshold()
    try:
        with serving_heap():
            raise RuntimeError("listener failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_listing_heap_raises_the_threshold_for_the_longest_listing_and_restores_it() -> None:
    before = gc.get_threshold()
    with listing_heap():
        assert gc.get_threshold() == (LISTING_GEN0_THRESHOLD, *before[1:])
        with listing_heap():  # a second resource lists meanwhile
            assert gc.get_threshold()[0] == LISTING_GEN0_THRESHOLD
        # The first listing is still running: the second one's end changes nothing.
        assert gc.get_threshold()[0] == LISTING_GEN0_THRESHOLD
    assert gc.get_threshold() == before


def test_listing_heap_restores_the_threshold_when_a_listing_fails() -> None:
    before = gc.get_threshold()
    try:
        with listing_heap():
            raise RuntimeError("API down")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before


def test_listing_heap_and_serving_heap_in_any_order() -> None:
    before = gc.get_threshold()
    with serving_heap():
        with listing_heap():
            assert gc.get_threshold()[0] == LISTING_GEN0_THRESHOLD
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    assert gc.get_threshold() == before
    # A listing that outlives serving keeps its threshold until it ends.
    listing = listing_heap()
    with serving_heap():
        listing.__enter__()
    assert gc.get_threshold()[0] == LISTING_GEN0_THRESHOLD
    listing.__exit__(None, None, None)
    assert gc.get_threshold() == before
    # A listing that started before serving ends inside it: serving's threshold stays.
    listing = listing_heap()
    listing.__enter__()
    with serving_heap():
        assert gc.get_threshold()[0] == LISTING_GEN0_THRESHOLD
        listing.__exit__(None, None, None)
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
    assert gc.get_threshold() == before


def test_a_higher_threshold_set_before_is_kept() -> None:
    before = gc.get_threshold()
    gc.set_threshold(200_000, *before[1:])
    try:
        with serving_heap(), listing_heap():
            assert gc.get_threshold()[0] == 200_000
        assert gc.get_threshold()[0] == 200_000
    finally:
        gc.set_threshold(*before)
