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


def test_listing_heap_inside_serving_heap_and_outliving_it() -> None:
    before = gc.get_threshold()
    with serving_heap():
        with listing_heap():
            assert gc.get_threshold()[0] == LISTING_GEN0_THRESHOLD
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    # A listing still running when the daemon leaves serving_heap does not put the serving
    # threshold back when it ends: what serving_heap restored stays.
    listing = listing_heap()
    with serving_heap():
        listing.__enter__()
    assert gc.get_threshold() == before
    listing.__exit__(None, None, None)
    assert gc.get_threshold() == before
