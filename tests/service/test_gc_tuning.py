import gc

from syncd.service.gc_tuning import GC_GEN0_THRESHOLD, serving_heap


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
