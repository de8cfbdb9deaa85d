"""A fake Kaggle API server on 127.0.0.1 for driving the real kaggle package (CLI and Python API) offline.

The client is pointed at it through a sitecustomize.py (written by :func:`cli_env`) that sets
kagglesdk's LOCAL endpoint to this server, plus KAGGLE_API_ENVIRONMENT=LOCALHOST; the client
itself is the unmodified installed one (../shared/facts/kaggle-cli.md).
"""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SITECUSTOMIZE = """
import os
_ep = os.environ.get("SONOKIT_TEST_KAGGLE_ENDPOINT")
if _ep:
    from kagglesdk import kaggle_env
    kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.LOCAL] = _ep
"""


class FakeKaggle:
    """mode: ok | http400 | error_exit0 (the server answers with an error the CLI prints and exits 0)
    | invalid_sources (a push is saved, but its dataset and kernel sources are rejected)
    | score_error (the submission is accepted, then fails to score).

    GetSubmission answers PENDING ``pending_polls`` times, then COMPLETE with ``public_score``."""

    def __init__(self, mode: str = "ok", pending_polls: int = 2, public_score: str = "0.87654"):
        self.mode = mode
        self.pending_polls = pending_polls
        self.public_score = public_score
        self.requests: list[tuple[str, str, bytes]] = []
        self.uploads: dict[str, bytes] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _json(self, code: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                body = self._body()
                fake.requests.append(("PUT", self.path, body))
                fake.uploads[self.path] = body
                self._json(200, {})

            def do_POST(self):
                body = self._body()
                fake.requests.append(("POST", self.path, body))
                method = self.path.rsplit("/", 1)[-1]
                if fake.mode == "http400" and method in ("StartSubmissionUpload", "SaveKernel"):
                    return self._json(400, {"code": 400, "message": "You must accept this competition's rules before submitting."})
                if method == "StartSubmissionUpload":
                    port = self.server.server_address[1]
                    return self._json(200, {"token": "tok-1", "createUrl": f"http://127.0.0.1:{port}/upload/tok-1"})
                if method == "CreateSubmission":
                    if fake.mode == "error_exit0":
                        return self._json(200, {"message": "Submission error: file could not be parsed", "ref": 0})
                    return self._json(200, {"message": "Successfully submitted to fake-comp", "ref": 4242})
                if method == "GetSubmissionLimits":
                    return self._json(200, {"numAllowedNow": 4})
                if method == "GetSubmission":
                    ref = json.loads(body or b"{}").get("ref")
                    polls = len(fake.calls("GetSubmission"))
                    if polls <= fake.pending_polls:
                        return self._json(200, {"ref": ref, "status": "PENDING"})
                    if fake.mode == "score_error":
                        return self._json(200, {"ref": ref, "status": "ERROR", "errorDescription": "Submission must have 3 rows"})
                    return self._json(200, {"ref": ref, "status": "COMPLETE", "publicScore": fake.public_score})
                if method == "SaveKernel":
                    if fake.mode == "error_exit0":
                        return self._json(200, {"error": "Notebook not found or slug taken"})
                    req = json.loads(body or b"{}")
                    slug = req.get("slug", "me/x")
                    ans = {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}", "versionNumber": 3}
                    if fake.mode == "invalid_sources":
                        ans["invalidDatasetSources"] = req.get("datasetDataSources", [])
                        ans["invalidKernelSources"] = req.get("kernelDataSources", [])
                    return self._json(200, ans)
                return self._json(404, {"code": 404, "message": f"no fake for {method}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str) -> list[dict]:
        return [json.loads(b or b"{}") for verb, p, b in self.requests if verb == "POST" and p.endswith("/" + method)]


def cli_env(tmp: Path, endpoint: str, credentials: bool = True) -> dict:
    """Environment for a subprocess that runs the real kaggle CLI against ``endpoint``."""
    site = tmp / "fake_site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    home = tmp / "home"
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(
        HOME=str(home), KAGGLE_CONFIG_DIR=str(home / ".kaggle"), XDG_CONFIG_HOME=str(home / ".config"),
        KAGGLE_API_ENVIRONMENT="LOCALHOST", SONOKIT_TEST_KAGGLE_ENDPOINT=endpoint,
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    if credentials:
        env.update(KAGGLE_USERNAME="tester", KAGGLE_KEY="0123456789abcdef")
    return env
