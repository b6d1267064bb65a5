"""`pybert serve --ray`: two replicas of the server behind Ray Serve's proxy on a local Ray
cluster answer as the single server does (the same routes and JSON), and a replica killed
while clients are sending loses no request: each one is answered (by the other replica, a
retry, or an error status), none hangs or is dropped, and Ray Serve replaces the replica."""

import collections
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")  # Ray Serve's own dependency

import pybert  # noqa: E402

from test_serve import Server, request  # noqa: E402

pytestmark = pytest.mark.slow
TEXTS = ["the list is sorted", "it is then returned to the caller", "a b c"]


def replicas() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "ray::ServeReplica:pybert" in line]


def test_two_replicas_answer_as_one_server_and_survive_a_kill(text_checkpoint):
    model = pybert.TextModel.load(text_checkpoint)
    server = Server(text_checkpoint, "--ray", "--ray-replicas", "2",
                    env={"RAY_AUTH_MODE": "disabled"})
    try:
        status, vectors, _ = request(server, "POST", "/embed", {"inputs": TEXTS})
        assert status == 200
        np.testing.assert_allclose(np.array(vectors), model.encode(TEXTS), atol=1e-5)
        status, reply, _ = request(server, "POST", "/v1/embeddings", {"input": TEXTS[0]})
        np.testing.assert_allclose(reply["data"][0]["embedding"], model.encode(TEXTS[0]),
                                   atol=1e-5)
        status, err, _ = request(server, "POST", "/embed", {"inputs": []})
        assert status == 422 and "must not be empty" in err["error"]
        victims = replicas()
        assert len(victims) == 2

        answers, lock = collections.Counter(), threading.Lock()
        stop_at = time.time() + 8

        def client():
            body = json.dumps({"inputs": TEXTS}).encode()
            while time.time() < stop_at:
                req = urllib.request.Request(server.url + "/embed", data=body,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=60) as response:
                        response.read()
                        answer = response.status
                except urllib.error.HTTPError as err:
                    answer = err.code
                except OSError as err:  # no answer at all: what must not happen
                    answer = type(err).__name__
                with lock:
                    answers[answer] += 1

        clients = [threading.Thread(target=client) for _ in range(6)]
        for c in clients:
            c.start()
        time.sleep(2)
        os.kill(victims[0], signal.SIGKILL)
        for c in clients:
            c.join()
        assert set(answers) <= {200, 500, 503}, answers  # every request answered
        assert answers[200] > 10 * sum(n for s, n in answers.items() if s != 200), answers
        deadline = time.time() + 60
        while len(replicas()) < 2 and time.time() < deadline:
            time.sleep(1)
        assert len(replicas()) == 2 and victims[0] not in replicas()
        assert request(server, "POST", "/embed", {"inputs": TEXTS})[0] == 200
    finally:
        server.stop()
    assert server.proc.returncode == 0
