"""A JSON API client that behaves like a browser's fetch(): one cookie jar,
the CSRF token in X-CSRF-Token on state-changing requests."""

from __future__ import annotations

import secrets

import requests

# The password of every test account (long enough for the password policy).
PASSWORD = "correct horse battery"


class ApiClient:
    def __init__(self, base_url: str, cookie_name: str = "session", forwarded_for: str | None = None):
        self.base = base_url
        self.cookie_name = cookie_name
        self.http = requests.Session()
        self.csrf: str | None = None
        if forwarded_for:  # the test service trusts 127.0.0.1 as its proxy
            self.http.headers["X-Forwarded-For"] = forwarded_for

    def close(self):
        self.http.close()

    @property
    def sid(self) -> str | None:
        return self.http.cookies.get(self.cookie_name)

    def fetch_csrf(self) -> str:
        self.csrf = self.http.get(self.base + "/api/csrf", timeout=10).json()["csrf_token"]
        return self.csrf

    def request(self, method: str, path: str, json=None, csrf: bool = True, **kwargs):
        headers = kwargs.pop("headers", {})
        if method not in ("GET", "HEAD") and csrf:
            headers["X-CSRF-Token"] = self.csrf or self.fetch_csrf()
        response = self.http.request(method, self.base + path, json=json, headers=headers,
                                     timeout=10, **kwargs)
        if response.headers.get("Content-Type", "").startswith("application/json"):
            token = response.json().get("csrf_token") if isinstance(response.json(), dict) else None
            if token:
                self.csrf = token
        return response

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, json=None, **kwargs):
        return self.request("POST", path, json=json, **kwargs)

    def delete(self, path, json=None, **kwargs):
        return self.request("DELETE", path, json=json, **kwargs)

    # -- the flows most tests need ----------------------------------------------
    def register(self, username: str, password: str):
        return self.post("/api/auth/register", {"username": username, "password": password})

    def login(self, username: str, password: str):
        return self.post("/api/auth/login", {"username": username, "password": password})

    def logout(self):
        return self.post("/api/auth/logout")


def new_username(prefix: str = "user") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"
