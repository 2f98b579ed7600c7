"""A client of Airflow's REST API, as the UI's own client talks to it: a token from /auth/token,
then Bearer requests to /api/v2."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

__all__ = ["AirflowApi", "wait_until"]


class AirflowApi:
    """Requests to the api-server at `address`, signed once `sign_in` has fetched a token."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.token: str | None = None

    @classmethod
    def signed_in(cls, address: str, username: str, password: str) -> AirflowApi:
        api = cls(address)
        api.sign_in(username, password)
        return api

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """The status and body of any answer, an error status included."""
        try:
            with self._open(method, path, body) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON of a successful answer; `urllib.error.HTTPError` for an error status."""
        with self._open(method, path, body) as response:
            return json.load(response)

    def sign_in(self, username: str, password: str) -> None:
        status, body = self.request("POST", "/auth/token", {"username": username, "password": password})
        assert status in (200, 201), f"/auth/token answered {status}: {body[:300]!r}"
        self.token = json.loads(body)["access_token"]

    def dag_ids(self) -> list[str]:
        status, body = self.request("GET", "/api/v2/dags?limit=100")
        assert status == 200, f"/api/v2/dags answered {status}: {body[:300]!r}"
        return [dag["dag_id"] for dag in json.loads(body)["dags"]]

    def _open(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        request = urllib.request.Request(self.address + path, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        data = json.dumps(body).encode() if body is not None else None
        return urllib.request.urlopen(request, data=data, timeout=30)


def wait_until(condition: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    """`condition()`'s first truthy value within `timeout_s`, else its last value."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every_s)
    return value
