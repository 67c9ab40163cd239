"""Two of the main bench's tmpfs rows, measured alone for ``python -m bench.scale --point``:
a 1 MiB ``bytes`` get against a 1 MiB memcpy (``point_ops`` measures it among every system), and
a get among 100,000 variables against one among 10 (``fill_curve``'s), each as the main bench
times it (one operation per timed bracket, medians, the two systems interleaved round by round),
the second with the machine's cold-read floor beside it.
"""

from __future__ import annotations

from bench.coldread import floor_stats
from bench.peers import FACTORIES
from bench.scratch import Scratch
from bench.targets import MEMCPY, TMPFS, Row, floor_note
from bench.timing import Stats, bracket_ns, time_gets, to_us
from bench.values import SMALL, VALUES, Picks

__all__ = ["among_row", "bytes1m_row"]


def bytes1m_row(scratch: Scratch, rounds: int = 21, batch: int = 30) -> Row:
    """``tmpfs get 1 MiB bytes <= 1.5x a 1 MiB memcpy``."""
    value, bracket = VALUES["bytes1m"], bracket_ns()
    systems = [FACTORIES[name](scratch) for name in (TMPFS, MEMCPY)]
    samples: dict[str, list[float]] = {system.name: [] for system in systems}
    try:
        for system in systems:
            system.ops.put(1, value)
            time_gets(system.ops.get, [1] * batch)  # warm: a second get maps the file
        for round_no in range(rounds):
            for system in systems if round_no % 2 else systems[::-1]:
                samples[system.name] += to_us(time_gets(system.ops.get, [1] * batch), bracket)
    finally:
        for system in systems:
            system.close()
    ours, floor = Stats.of(samples[TMPFS]), Stats.of(samples[MEMCPY])
    r = ours.ratio(floor)
    return Row(
        "tmpfs get 1 MiB bytes <= 1.5x a 1 MiB memcpy",
        f"{ours.median:.2f} / {floor.median:.2f} µs = {r:.2f}x",
        r <= 1.5,
    )


def among_row(scratch: Scratch, variables: int, rounds: int = 9, batch: int = 300) -> Row:
    """``tmpfs get with 100k variables <= 1.5x get with 10``, at ``variables``."""
    system, bracket = FACTORIES[TMPFS](scratch), bracket_ns()
    value = VALUES[SMALL]
    got: dict[int, list[float]] = {10: [], variables: []}
    try:
        system.fill(range(variables), value)
        for round_no in range(rounds):
            for among in got:
                picks = Picks(batch, among, seed=round_no * 2 + among)
                got[among] += to_us(time_gets(system.ops.get, picks.indices(1)), bracket)
        footprint = system.footprint()
    finally:
        system.close()
    many, ten = Stats.of(got[variables]), Stats.of(got[10])
    r = many.ratio(ten)
    text = f"{many.median:.2f} / {ten.median:.2f} µs = {r:.2f}x ({variables:,} variables)"
    if footprint is not None:
        floor = floor_stats(scratch.shm_path("floor"), footprint.bytes, rounds * batch, 1)
        text += floor_note(
            many.median,
            ten.median,
            {"floor_cold": floor["cold"].median, "floor_hot": floor["hot"].median},
        )
    return Row(f"tmpfs get with {variables:,} variables <= 1.5x get with 10", text, r <= 1.5)
