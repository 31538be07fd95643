"""The hive's connection out to the queen: register, heartbeat, reconnect with back-off.

The hive always calls the queen, never the other way round for liveness, so a restarted
queen, or one behind a NAT, finds its hives again: each heartbeat carries the full report
(devices, engine, models, running workers with their keys), and a queen that does not know
this hive any more (it restarted) gets a fresh registration.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from rbee.common import tls
from rbee.contracts.hives import HiveAck
from rbee.hive.config import HiveConfig
from rbee.hive.service import Hive

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0
REFUSED_RETRY_S = 30.0


class QueenLink:
    def __init__(self, hive: Hive, config: HiveConfig) -> None:
        self._hive = hive
        self._config = config
        self.registered = False
        self.last_ack: HiveAck | None = None
        self.last_problem: str | None = None

    async def _post(self, client: httpx.AsyncClient, path: str) -> HiveAck:
        report = await self._hive.report(self._config.port)
        resp = await client.post(f"{self._config.queen_url}{path}", content=report.model_dump_json(),
                                 headers={"Authorization": f"Bearer {self._config.token}",
                                          "Content-Type": "application/json",
                                          "X-Rbee-Hive-Alias": self._config.alias})  # names it in refusals
        if resp.status_code in (400, 401, 403):
            raise _Refused(_message(resp))
        if resp.status_code == 404 and path.endswith("heartbeat"):
            raise _Unknown()
        resp.raise_for_status()
        return HiveAck.model_validate_json(resp.content)

    async def run(self) -> None:
        """Runs for the hive's lifetime."""
        backoff = 1.0
        files = self._config.tls_files()
        async with httpx.AsyncClient(timeout=10.0, verify=files.client_context() if files else True) as client:
            while True:
                try:
                    path = "/v1/hives/heartbeat" if self.registered else "/v1/hives/register"
                    ack = await self._post(client, path)
                    if not self.registered:
                        log.info("registered with the queen at %s as '%s'", self._config.queen_url,
                                 self._config.alias)
                        if ack.message:
                            log.warning("the queen says: %s", ack.message)
                    self.registered, self.last_ack, self.last_problem = True, ack, None
                    backoff = 1.0
                    await asyncio.sleep(ack.heartbeat_s)
                except _Unknown:
                    log.info("the queen does not know this hive any more (it restarted?): registering again")
                    self.registered = False
                except _Refused as exc:
                    self.registered = False
                    self._problem(f"the queen at {self._config.queen_url} refused this hive: {exc}. Re-run "
                                  f"`rbee hive install {self._config.alias}` on the queen's machine for a new token")
                    await asyncio.sleep(REFUSED_RETRY_S)
                except (httpx.HTTPError, ValueError) as exc:
                    self.registered = False
                    problem = tls.certificate_problem(exc)
                    self._problem(f"the queen at {self._config.queen_url} failed the TLS check: {problem}; its "
                                  "certificate must come from the cluster CA in this hive's tls folder (after "
                                  "`rbee tls init --force` on the queen's machine, run `rbee tls rotate` there); "
                                  f"retrying in {backoff:.0f} s" if problem else
                                  f"cannot reach the queen at {self._config.queen_url} "
                                  f"({type(exc).__name__}: {exc}); retrying in {backoff:.0f} s")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _problem(self, message: str) -> None:
        if message != self.last_problem:  # once per change, not once per retry
            log.warning("%s", message)
        self.last_problem = message


class _Refused(Exception):
    pass


class _Unknown(Exception):
    pass


def _message(resp: httpx.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {resp.status_code}"
