"""Runner: the one shape of every loop that works and waits (processing, outbox, IMAP).

A runner does a step of work, then waits until it is woken (`wake`), until the step's own
wait is over, or until it is told to stop (`stop`: it returns after the step in hand). A
step that fails with one of the runner's retryable errors is tried again after a backoff
shared by all runners; a new config that the daemon has checked comes in by `reload`.

Which process hosts which runner:

| runner                     | process                      | claims            |
|----------------------------|------------------------------|-------------------|
| `MailboxWatcher` (IMAP)    | the daemon (`supportd run`)  | -                 |
| `Processor`                | the worker (`supportd worker`) | inbox rows      |
| `OutboxWorker`             | the worker                   | effects of `mail` |

SMTP and LMTP intake are not runners: aiosmtpd serves them in the daemon. A site may run
more `supportd worker --standalone` processes on the same store: claims keep them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import timedelta

from supportd.config import Config

log = logging.getLogger("supportd.runner")

BACKOFF_FIRST, BACKOFF_MAX = 1.0, 300.0
POLL = 1.0  # seconds between looks for work that others (another process) may have added


def backoff_delay(failures: int, jitter: float) -> float:
    """Seconds before try number `failures` + 1 (1, 2, ...): doubling, capped, jittered.

    `jitter` is a number in [0, 1); the delay is spread over its upper half so that several
    runners cut off together do not come back in step.
    """
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (failures - 1))
    return ceiling * (0.5 + jitter / 2)


def retry_after(attempts: int) -> timedelta:
    """Delay before an effect's next try after `attempts` failures: 1 min doubling to 4 h."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 240))


class Runner:
    """Subclasses give `step`, and `retryable`: the errors that mean "try again later"."""

    retryable: tuple[type[BaseException], ...] = ()
    retrying = "trying again"  # what the log says it does after a failure

    def __init__(self, name: str, *, jitter: Callable[[], float] = random.random) -> None:
        self.name = name
        self.jitter = jitter
        self.failures = 0  # steps failed in a row
        self.stopped = asyncio.Event()
        self._woken = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    def wake(self) -> None:
        """There may be work now: end the wait."""
        self._woken.set()

    def stop(self) -> None:
        """Make run() return after the step in hand (SIGTERM)."""
        self.stopped.set()
        self._woken.set()

    def reload(self, config: Config) -> None:
        """Take a new config, already checked by the daemon."""

    async def step(self) -> float:
        """Do the work there is; return the seconds to wait before the next step."""
        raise NotImplementedError

    async def run(self) -> None:
        while not self.stopping:
            self._woken.clear()
            try:
                wait = await self.step()
                self.failures = 0
            except self.retryable as error:
                self.failures += 1
                wait = backoff_delay(self.failures, self.jitter())
                log.warning("%s %s: %s; %s in %.1fs (attempt %d)", self.name,
                            type(error).__name__, error, self.retrying, wait, self.failures)
            if not self.stopping and wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), timeout=wait)
        log.info("%s stopped", self.name)
