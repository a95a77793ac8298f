"""`syncd receive`: the stateless webhook receiver that publishes to JetStream."""

from __future__ import annotations

import asyncio
import sys

import click

from syncd.cli.common import config_option, load
from syncd.cli.run import _loop_factory
from syncd.config import load_config
from syncd.logs import setup_logging
from syncd.service.receive import ReceiveServer
from syncd.service.reload import secret_values


@click.command("receive")
@config_option
def receive(config_path: str | None) -> None:
    """Receive webhooks and publish them to the [nats] inbox stream (no store, no API key).

    Every check of `syncd run`'s receiver; 200 only after JetStream's PubAck, 503 with
    Retry-After when JetStream is unreachable or slower than webhook.ack_timeout.
    """
    # No API key: a receiver never calls the API. The webhook secret is checked below.
    cfg = load(config_path, require_secrets=False)
    setup_logging(cfg.log, secrets=secret_values(cfg))
    server = ReceiveServer(cfg, load=lambda: load_config(cfg.source, require_secrets=False))
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        code = runner.run(server.serve())
    sys.exit(code)


commands = [receive]
