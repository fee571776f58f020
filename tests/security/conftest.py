"""Security tests: each reproduces one finding of the hardening review against the real daemon.

Every test names its finding and scenario in its docstring; the fixtures are the integration
tests' (the real `supportd run` on free loopback ports).
"""

from __future__ import annotations

from tests.integration.conftest import daemon

__all__ = ["daemon"]
