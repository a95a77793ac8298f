"""`syncd demo`: no config needed; the simulator and the daemon on free loopback ports."""

from __future__ import annotations

from pathlib import Path

import click

from syncd.config_values import parse_duration


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("demo")
@click.option(
    "--duration", default="60s", show_default=True, callback=_duration, help="How long the workload runs."
)
@click.option(
    "--rate",
    default=50.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Changes per second upstream.",
)
@click.option(
    "--faults",
    type=click.Choice(["default", "none", "harsh"]),
    default="default",
    show_default=True,
    help="Upstream fault preset: lost, duplicated, late webhooks; 429s, 5xx, hangs, visibility lag.",
)
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Where to keep the mirror."
)
@click.option("--seed", default=1, show_default=True, type=int, help="Workload seed.")
@click.option(
    "--poll-interval",
    default="10s",
    show_default=True,
    callback=_duration,
    help="poll.interval of the daemon.",
)
@click.option(
    "--compare", is_flag=True, help="Run push mode, then poll-only mode, on the same workload and compare."
)
def demo(
    duration: float, rate: float, faults: str, db: Path | None, seed: int, poll_interval: float, compare: bool
) -> None:
    """Run the simulator and the daemon together and show the mirror converge."""
    from syncd.demo.run import DemoOptions, run_demo

    options = DemoOptions(
        duration=duration, rate=rate, faults=faults, db=db, seed=seed, poll_interval=poll_interval
    )
    raise SystemExit(run_demo(options, compare=compare))


commands = [demo]
