"""What a reload makes of `[changes]` and `[[sinks]]`: sinks are keys of their own (added,
removed, changed, their secrets by value), `changes.enabled` waits for a restart."""

from __future__ import annotations

from pathlib import Path

from syncd.service.reload import apply_live, changed_keys, restart_only_changes, secret_values
from syncd.sim.server import SimHandle
from tests.service.feed_support import feed_config, load, rewrite


def test_sinks_and_changes_keys_as_a_reload_sees_them(tmp_path: Path, sim: SimHandle) -> None:
    path = feed_config(tmp_path, sim, {"a": ("http://127.0.0.1:9/a", {}), "b": ("http://127.0.0.1:9/b", {})})
    before = load(path, sim)
    rewrite(
        path,
        {"b": ("http://127.0.0.1:9/b", {"events": ["order.*"]}), "c": ("http://127.0.0.1:9/c", {})},
        changes='enabled = false\ninclude_initial = true\nretention = "1d"',
    )
    after = load(path, sim)
    changed = changed_keys(before, after)
    assert {"sinks.a", "sinks.b", "sinks.c", "changes.enabled", "changes.include_initial"} <= set(changed)
    assert "changes.retention" in changed
    assert restart_only_changes(before, after) == ["changes.enabled"]
    live = apply_live(before, after)
    assert live.changes.enabled is True
    assert live.changes.include_initial is True
    assert live.changes.retention == 86400.0
    assert [s.name for s in live.sinks] == ["b", "c"]
    # The sinks' signing secrets are redacted from logs like every other secret.
    assert set(live.secrets.sink_secrets.values()) <= set(secret_values(live))
