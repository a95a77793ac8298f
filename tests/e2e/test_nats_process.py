"""syncd past one machine, as real processes: a three-node nats-server cluster with
JetStream (shared by the module; each test's streams are deleted after it), `syncd receive`
processes in front of it and `syncd run` mirrors consuming the R3 inbox stream.

- two receivers and one mirror; the provider delivers every event to both (and duplicates
  some); one receiver and one NATS node are killed with SIGKILL mid-load: every delivery
  answered 2xx reaches the mirror, none is applied twice, drift 0;
- a mirror restarted mid-stream resumes from its durable consumer with nothing lost, and a
  second mirror with its own consumer converges too;
- the nats sink under SIGKILL of the daemon: the changes stream holds every change once
  (deduplicated by Msg-Id), in seq order per record.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.e2e.conftest import (
    START_TIMEOUT,
    WEBHOOK_PATH,
    WEBHOOK_SECRET,
    DaemonProcess,
    SimProcess,
    daemon_sections,
    to_toml,
    wait_until,
)
from tests.nats_support import NatsCluster, free_port, running_cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats"), 3) as c:
        yield c


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _delete_streams(urls: list[str]) -> None:
    nc = await nats.connect(urls)
    js = nc.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)
    await nc.close()


@pytest.fixture
def nats_urls(cluster: NatsCluster) -> Iterator[list[str]]:
    for node in cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            node.start(cluster.binary)
    cluster.wait_healthy()
    yield cluster.urls
    # A node killed by the test is back before the cleanup (and the next test).
    for node in cluster.nodes:
        if node.proc is None or node.proc.poll() is not None:
            node.start(cluster.binary)
    cluster.wait_healthy()
    _run(_delete_streams(cluster.urls))


class ReceiveProcess:
    """`syncd receive` with a generated config (JSON logs), on a fixed webhook port."""

    def __init__(self, workdir: Path, urls: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = workdir / "receive.toml"
        self.config.write_text(
            to_toml(
                {
                    "webhook": {"listen": f"127.0.0.1:{self.port}", "path": WEBHOOK_PATH},
                    "admin": {"listen": "127.0.0.1:0"},
                    "log": {"level": "info", "format": "json"},
                    "nats": {"servers": urls, "replicas": 3},
                }
            )
        )
        self.log_path = workdir / "receive.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PETSTORE_WEBHOOK_SECRET": WEBHOOK_SECRET, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "receive", "--config", str(self.config)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"
        wait_until(
            lambda: self._logged("JetStream reachable"), START_TIMEOUT, what="the receiver's JetStream"
        )

    def _logged(self, text: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"syncd receive exited: {self.log_path.read_text()[-3000:]}")
        return text in self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[[list[str]], ReceiveProcess]]:
    started: list[ReceiveProcess] = []

    def start(urls: list[str]) -> ReceiveProcess:
        r = ReceiveProcess(tmp_path / f"receive{len(started)}", urls)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def mirror_sections(sim: SimProcess, workdir: Path, urls: list[str], **nats_keys: Any) -> dict[str, Any]:
    sections: dict[str, Any] = daemon_sections(sim.url, workdir)
    sections["webhook"]["inbox"] = "nats"
    # Every simulator here runs with --max-lag 1s: relists need not wait out the real API's 10 s.
    sections["api"]["visibility_lag"] = "1s"
    # A batch pulled by a mirror killed before its commit comes again after ack_wait.
    sections["nats"] = {"servers": urls, "replicas": 3, "ack_wait": "3s", **nats_keys}
    # Polls (safety poll, relists) catch what no delivery brought, as they would in
    # production; what the stream delivered is told apart by _events, which only deliveries
    # write.
    sections["poll"].update(
        {"safety_interval": "3s", "interval": "2s", "full_relist_interval": "5s", "max_tombstone_ratio": 1.0}
    )
    sections["fallback"] = {"silence": "1h", "missed_ratio": 0.5, "recover_after": 2}
    return sections


def start_mirror(sim: SimProcess, workdir: Path, urls: list[str], **nats_keys: Any) -> DaemonProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(workdir, mirror_sections(sim, workdir, urls, **nats_keys))


def read(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def wait_every_ack_reached(sim: SimProcess, db: Path, timeout: float = 30.0) -> int:
    """Every delivery the provider got a 2xx for is decided in the mirror (a batch a killed
    mirror had pulled comes again after ack_wait, hence the wait). Returns how many."""
    acked = sim.http.get("/_sim/acked").json()
    assert acked["complete"]
    ids = set(acked["event_ids"])
    lost: list[str] = []

    def reached() -> bool:
        decided = {eid for (eid,) in read(db, "SELECT event_id FROM _events WHERE outcome != 'pending'")}
        lost[:] = sorted(ids - decided)
        return not lost

    try:
        wait_until(reached, timeout, what="every acknowledged delivery in the mirror")
    except AssertionError:
        raise AssertionError(
            f"{len(lost)} acknowledged deliveries never reached the mirror: {lost[:5]}"
        ) from None
    return len(ids)


def assert_nothing_applied_twice(db: Path) -> None:
    twice = read(
        db,
        "SELECT resource, record_id, version, COUNT(*) FROM _changes"
        " WHERE kind IN ('created', 'updated') GROUP BY resource, record_id, version HAVING COUNT(*) > 1",
    )
    assert not twice, f"states applied more than once: {twice[:5]}"


async def _stream_info(urls: list[str], name: str) -> Any:
    nc = await nats.connect(urls)
    try:
        return await nc.jetstream().stream_info(name)
    finally:
        await nc.close()


def test_two_receivers_one_mirror_survive_a_receiver_and_a_node_killed(
    nats_urls: list[str],
    cluster: NatsCluster,
    start_sim: Callable[..., SimProcess],
    start_receiver: Callable[[list[str]], ReceiveProcess],
    tmp_path: Path,
) -> None:
    sim = start_sim(
        "--rate", "40", "--seed", "14", "--time-scale", "0.01", "--max-lag", "1s",
        "--duplicate-rate", "0.2", "--preload-orders", "50", "--preload-customers", "10",
    )  # fmt: skip
    a, b = start_receiver(nats_urls), start_receiver(nats_urls)
    mirror = start_mirror(sim, tmp_path / "mirror", nats_urls)
    try:
        info = _run(_stream_info(nats_urls, "SYNCD_INBOX"))
        assert info.config.num_replicas == 3
        # Every event goes to both receivers: a load balancer's spread, with duplicates.
        sim.register_webhook(a.url)
        sim.register_webhook(b.url)
        db = mirror.workdir / "mirror.db"
        wait_until(lambda: read(db, "SELECT COUNT(*) FROM _events")[0][0] > 50, 30, what="deliveries flowing")
        a.proc.kill()
        a.proc.wait()
        # The node the mirror or a receiver may be connected to: they fail over.
        cluster.nodes[0].kill()
        acked_then = len(sim.http.get("/_sim/acked").json()["event_ids"])
        wait_until(
            lambda: len(sim.http.get("/_sim/acked").json()["event_ids"]) > acked_then + 100,
            60,
            what="deliveries acknowledged after the kills",
        )
        sim.control(action="quiesce", timeout=30, drop_retries=True)
        wait_until(lambda: mirror.mirror() == sim.truth(), 90, interval=0.5, what="zero drift")
        assert wait_every_ack_reached(sim, db) > 100
        assert_nothing_applied_twice(db)
        # Polls apply many records first (a delivery is then a duplicate): count what came.
        counts = dict(read(db, "SELECT outcome, COUNT(*) FROM _events GROUP BY outcome"))
        assert sum(counts.values()) > 100, counts
        verify = mirror.verify()
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        mirror.stop()


def test_a_restarted_mirror_resumes_and_two_mirrors_converge(
    nats_urls: list[str],
    start_sim: Callable[..., SimProcess],
    start_receiver: Callable[[list[str]], ReceiveProcess],
    tmp_path: Path,
) -> None:
    sim = start_sim("--rate", "40", "--seed", "15", "--time-scale", "0.01", "--max-lag", "1s")
    receiver = start_receiver(nats_urls)
    first = start_mirror(sim, tmp_path / "first", nats_urls, consumer="mirror-first")
    second = start_mirror(sim, tmp_path / "second", nats_urls)
    try:
        sim.register_webhook(receiver.url)
        db1, db2 = first.workdir / "mirror.db", second.workdir / "mirror.db"
        wait_until(lambda: read(db1, "SELECT COUNT(*) FROM _events")[0][0] > 30, 30, what="deliveries")
        first.proc.kill()
        first.proc.wait()
        during = len(sim.http.get("/_sim/acked").json()["event_ids"])
        wait_until(
            lambda: len(sim.http.get("/_sim/acked").json()["event_ids"]) > during + 100,
            60,
            what="deliveries acknowledged while the first mirror is down",
        )
        first.stop()
        first = DaemonProcess(first.workdir, first.sections)
        resumed = first.wait_log(lambda r: "consuming stream" in r.get("msg", ""), 30)
        assert "as mirror-first" in resumed["msg"]
        sim.control(action="quiesce", timeout=30, drop_retries=True)
        truth = sim.truth()
        for mirror in (first, second):
            wait_until(lambda m=mirror: m.mirror() == truth, 90, interval=0.5, what="zero drift")
        for db in (db1, db2):
            assert wait_every_ack_reached(sim, db) > 100
            assert_nothing_applied_twice(db)
        # The second mirror's consumer is its own: syncd-<its mirror_id>.
        mirror_id = read(db2, "SELECT value FROM _meta WHERE key = 'mirror_id'")[0][0]
        assert any(f"as syncd-{mirror_id}" in r.get("msg", "") for r in second.logs())
    finally:
        first.stop()
        second.stop()


def _changes_stream(urls: list[str]) -> list[tuple[str, dict[str, Any]]]:
    async def read_all() -> list[tuple[str, dict[str, Any]]]:
        nc = await nats.connect(urls)
        try:
            js = nc.jetstream()
            info = await js.stream_info("SYNCD_CHANGES")
            sub = await js.pull_subscribe("syncd.changes.>", stream="SYNCD_CHANGES")
            out: list[tuple[str, dict[str, Any]]] = []
            while len(out) < info.state.messages:
                for msg in await sub.fetch(1000, timeout=5):
                    assert msg.headers is not None
                    out.append((msg.headers["Nats-Msg-Id"], json.loads(msg.data)))
                    assert msg.subject == f"syncd.changes.{out[-1][1]['resource']}.{out[-1][1]['event']}"
            return out
        finally:
            await nc.close()

    result: list[tuple[str, dict[str, Any]]] = _run(read_all())
    return result


def test_the_nats_sink_under_sigkill_holds_every_change_once_in_order(
    nats_urls: list[str], start_sim: Callable[..., SimProcess], tmp_path: Path
) -> None:
    sim = start_sim("--rate", "60", "--seed", "16", "--time-scale", "0.01", "--max-lag", "1s")
    workdir = tmp_path / "feed"
    workdir.mkdir()
    sections: dict[str, Any] = daemon_sections(sim.url, workdir, mode="poll")
    sections["poll"].update(
        {"interval": "300ms", "lookback": "2s", "full_relist_interval": "5s", "max_tombstone_ratio": 1.0}
    )
    sections["api"]["visibility_lag"] = "1s"  # the simulator's --max-lag
    sections["nats"] = {"servers": nats_urls, "replicas": 3}
    sections["sinks"] = [{"name": "bus", "type": "nats", "start": "beginning", "batch_size": 50}]
    daemon = DaemonProcess(workdir, sections)
    db = workdir / "mirror.db"
    try:
        for _ in range(3):
            wait_until(
                lambda: (read(db, "SELECT MAX(delivered_seq) FROM _sink_offsets")[0][0] or 0) > 0,
                30,
                what="the sink delivering",
            )
            time.sleep(0.7)
            daemon.proc.kill()
            daemon.proc.wait()
            daemon.stop()
            daemon = DaemonProcess(workdir, sections)
        sim.control(action="quiesce", timeout=30, drop_retries=True)
        wait_until(lambda: daemon.mirror() == sim.truth(), 60, interval=0.5, what="zero drift")
        head = wait_until(
            lambda: (
                (h := read(db, "SELECT MAX(seq) FROM _changes")[0][0])
                and read(db, "SELECT delivered_seq FROM _sink_offsets WHERE sink = 'bus'")[0][0] == h
                and h
            ),
            60,
            what="the sink caught up with the log",
        )
        mirror_id = read(db, "SELECT value FROM _meta WHERE key = 'mirror_id'")[0][0]
        stored = _changes_stream(nats_urls)
        assert [msg_id for msg_id, _ in stored] == [f"{mirror_id}-{c['seq']}" for _, c in stored]
        seqs = [c["seq"] for _, c in stored]
        assert sorted(seqs) == list(range(1, head + 1)), "every change exactly once"
        per_record: dict[tuple[str, str], list[int]] = {}
        for _, change in stored:
            per_record.setdefault((change["resource"], str(change["record_id"])), []).append(change["seq"])
        assert all(s == sorted(s) for s in per_record.values()), "in seq order per record"
        assert len(per_record) > 10
    finally:
        daemon.stop()
