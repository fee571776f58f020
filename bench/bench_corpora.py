"""Real mail through the pipeline: mails/s and the share of wall time in each stage.

Every file of `../shared/corpora` (or `--synthetic N` smtp-source-like mails) is accepted into
a fresh store, then the inbox rows are claimed (`claim_inbox`) and run through
`TicketService.process_batch` in batches, as the worker does, and the mails each batch queued
are rendered and composed, as the outbox does before it sends (sending itself is left out:
before effects, rendering ran inside processing, so this is the same work as then). The
stages are timed by wrapping the functions the service calls: `prepare` (of it, `parse`:
`parse_mail`), `facts` (the reads a decision needs), `decide`, `apply` (the writes), `render`
(`render_mail`); `store` is the rest (claims, the commit). A cProfile summary of the same run
follows: of `prepare` and of the transaction, where the service does all of its work, and of
rendering, with the time that profiling costs in the mails/s (about half of it).
Baseline: the same mails only parsed (`parse_mail`), the least any pipeline must do.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from supportd.clock import SystemClock
from supportd.config import load_config
from supportd.mail.parse import dedupe_key, parse_mail
from supportd.outbound import outbox as outbox_module
from supportd.outbound.templates import load_renderer
from supportd.store.api import open_store
from supportd.tickets import decide as decide_module
from supportd.tickets import prepare as prepare_module
from supportd.tickets import service as service_module
from supportd.tickets.service import TicketService
from supportd.worker import BATCH_BYTES, BATCH_MAILS, LEASE

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
T = TypeVar("T")

CONFIG = """
[support]
addresses = ["support@example.com"]
auto_mail_limit = 1000000
hmac_key_file = "hmac.key"
[store]
path = "bench.sqlite3"
[outbound]
templates = "{templates}"
[[groups]]
name = "tier1"
[[agents]]
email = "alice@example.com"
name = "Alice"
"""


def corpus_mails() -> list[bytes]:
    skip = {".json", ".md", ".py", ".txt"}
    return [p.read_bytes() for p in sorted(CORPORA.rglob("*"))
            if p.is_file() and p.suffix not in skip]


def synthetic_mails(count: int) -> list[bytes]:
    """Like smtp-source's: fixed sender, a unique Message-Id, a 2 KB body."""
    return [(f"From: <bench@customer.example>\r\nTo: <support@example.com>\r\n"
             f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-Id: <{i}.bench@customer.example>"
             f"\r\nSubject: mail {i}\r\n\r\n" + "La la la la la la la la la la la la la la\r\n"
             * 48).encode() for i in range(count)]


class StageClock:
    def __init__(self) -> None:
        # "parse" is part of "prepare": its share is shown, not added.
        self.seconds: dict[str, float] = {"prepare": 0.0, "parse": 0.0, "facts": 0.0,
                                          "decide": 0.0, "apply": 0.0, "render": 0.0}

    def sync(self, stage: str, func: Callable[..., T]) -> Callable[..., T]:
        @wraps(func)
        def timed(*args: Any, **kwargs: Any) -> T:
            start = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
        return timed


def profiled(profile: cProfile.Profile, func: Callable[..., T]) -> Callable[..., T]:
    """`func` with `profile` on while it runs, in whichever thread that is."""
    @wraps(func)
    def run_profiled(*args: Any, **kwargs: Any) -> T:
        profile.enable()
        try:
            return func(*args, **kwargs)
        finally:
            profile.disable()
    return run_profiled


async def run(mails: list[bytes], folder: Path, profile: cProfile.Profile) -> dict[str, Any]:
    (folder / "supportd.toml").write_text(CONFIG.format(templates=REPO / "templates"))
    config = load_config(folder / "supportd.toml")
    store = await open_store(config.store_path)
    clock = SystemClock()
    renderer = load_renderer(config)
    stages = StageClock()
    # The service calls these by module name, so timing them means wrapping them there.
    setattr(service_module, "prepare", stages.sync("prepare", prepare_module.prepare))  # noqa: B010
    setattr(prepare_module, "parse_mail", stages.sync("parse", parse_mail))  # noqa: B010
    setattr(service_module, "decide", stages.sync("decide", decide_module.decide))  # noqa: B010
    setattr(TicketService, "_facts", stages.sync("facts", TicketService._facts))  # noqa: B010
    setattr(TicketService, "apply", stages.sync("apply", TicketService.apply))  # noqa: B010
    render = profiled(profile, stages.sync("render", outbox_module.render_mail))
    # Preparing runs on the event loop, the transaction on the store's writer thread.
    setattr(TicketService, "_prepare", profiled(profile, TicketService._prepare))  # noqa: B010
    setattr(TicketService, "_apply_rows",  # noqa: B010
            profiled(profile, TicketService._apply_rows))
    service = TicketService(config, store, clock)
    for raw in mails:
        # No envelope sender (as from IMAP): human mail is answered, so composing is measured.
        await store.accept(raw, key=dedupe_key(raw), source="bench", mail_from=None,
                           rcpt_to=["support@example.com"], at=datetime.now(UTC))
    outcomes: dict[str, int] = {}
    processed = 0
    start = time.perf_counter()
    while rows := await store.claim_inbox("bench", now=clock.now(), lease=LEASE,
                                          limit=BATCH_MAILS, max_bytes=BATCH_BYTES):
        while rows:  # a batch may end early, as when intake waits: the rest is still ours
            done = await service.process_batch(rows)
            for outcome in done:
                kind = "failed" if outcome.failed else "stored"
                outcomes[kind] = outcomes.get(kind, 0) + 1
            processed += len(done)
            rows = rows[len(done):]
        # Claimed and never marked done: held for the lease, so each is rendered once.
        while queued := await store.claim_due("mail", "bench", now=clock.now(), lease=LEASE):
            for effect in queued:
                render(effect.payload, renderer)
    total = time.perf_counter() - start
    await store.close()
    start = time.perf_counter()
    for raw in mails:
        parse_mail(raw)
    parse_only = time.perf_counter() - start
    shares = {k: v / total for k, v in stages.seconds.items()}
    shares["store"] = 1.0 - sum(v for k, v in shares.items() if k != "parse")
    return {"mails": processed, "seconds": total, "parse_only": parse_only,
            "outcomes": outcomes, "shares": shares}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=0,
                        help="use N smtp-source-like mails instead of the corpora")
    parser.add_argument("--top", type=int, default=15, help="cProfile lines to print")
    args = parser.parse_args()
    if args.synthetic:
        mails, name = synthetic_mails(args.synthetic), f"{args.synthetic} synthetic mails"
    elif CORPORA.is_dir():
        mails, name = corpus_mails(), f"corpora ({CORPORA})"
    else:
        print(f"skipped: no corpora at {CORPORA}", file=sys.stderr)
        return 0
    profile = cProfile.Profile()
    with tempfile.TemporaryDirectory() as folder:
        result = asyncio.run(run(mails, Path(folder), profile))
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
    print(f"pipeline over {name}: {result['mails']} mails, outcomes {result['outcomes']}",
          file=sys.stderr)
    print(out.getvalue(), file=sys.stderr)
    rate = result["mails"] / result["seconds"]
    base = result["mails"] / result["parse_only"]
    shares = result["shares"]
    print(json.dumps({
        "bench": "pipeline", "what": f"{name} through parse→apply, mails/s",
        "value": round(rate, 1), "baseline": round(base, 1), "baseline_is": "parse only",
        "ratio": round(rate / base, 3), "target": None,
        "note": " / ".join(f"{k} {v:.0%}" + (f" (parse {shares['parse']:.0%})"
                                              if k == "prepare" else "")
                           for k, v in shares.items() if k != "parse"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
