"""The pycriu co-process (e2e/archives/criu_encode.py): same bytes as a fresh pycriu, survives its death."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from typing import Any

import pytest

from e2e.archives.criu_encode import SYSTEM_PYTHON, PycriuEncoder, crit_available, encode_images

IMAGES: dict[str, dict[str, Any]] = {
    "pstree.img": {"magic": "PSTREE", "entries": [
        {"pid": 1, "ppid": 0, "pgid": 1, "sid": 1, "threads": [1]},
        {"pid": 7, "ppid": 1, "pgid": 1, "sid": 1, "threads": [7, 8]}]},
    "utsns-12.img": {"magic": "UTSNS", "entries": [{"nodename": "n1", "domainname": "(none)"}]},
    "core-1.img": {"magic": "CORE", "entries": [{"mtype": "X86_64", "tc": {
        "task_state": 1, "exit_code": 0, "personality": 0, "flags": 0x402100,
        "blk_sigset": 0, "comm": "counter"}}]},
}

# What the encoder did before the co-process: one fresh interpreter per request.
_ONE_SHOT = r"""
import io, json, sys, base64
import pycriu.images as I
out = {}
for name, img in json.load(sys.stdin).items():
    f = io.BytesIO(); I.dump(img, f); out[name] = base64.b64encode(f.getvalue()).decode()
json.dump(out, sys.stdout)
"""


def _fresh_pycriu(images: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    proc = subprocess.run([SYSTEM_PYTHON, "-c", _ONE_SHOT], input=json.dumps(images).encode(),
                          capture_output=True, check=True)
    return {k: base64.b64decode(v) for k, v in json.loads(proc.stdout).items()}


@pytest.fixture
def encoder() -> Any:
    enc = PycriuEncoder()
    yield enc
    enc.close()


def test_same_bytes_as_a_fresh_pycriu(encoder: PycriuEncoder) -> None:
    expected = _fresh_pycriu(IMAGES)
    assert encoder.encode(IMAGES) == expected
    assert encoder.encode(IMAGES) == expected  # the second request, same process
    assert encode_images(IMAGES, use_crit=True) == expected  # the shared one


def test_one_process_serves_many_requests(encoder: PycriuEncoder) -> None:
    encoder.encode(IMAGES)
    pid = encoder.pid
    assert pid is not None
    encoder.encode({"u": IMAGES["utsns-12.img"]})
    assert encoder.pid == pid


def test_restarted_after_being_killed(encoder: PycriuEncoder) -> None:
    encoder.encode(IMAGES)
    pid = encoder.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
    assert encoder.encode(IMAGES) == _fresh_pycriu(IMAGES)
    assert encoder.pid not in (None, pid)


def test_a_bad_image_is_an_error_and_the_process_stays(encoder: PycriuEncoder) -> None:
    encoder.encode(IMAGES)
    pid = encoder.pid
    with pytest.raises(RuntimeError, match=r"pycriu failed: .*Traceback"):
        encoder.encode({"x": {"magic": "NO-SUCH-MAGIC", "entries": []}})
    assert encoder.pid == pid
    assert encoder.encode(IMAGES) == _fresh_pycriu(IMAGES)


def test_close_ends_the_process(encoder: PycriuEncoder) -> None:
    encoder.encode(IMAGES)
    pid = encoder.pid
    assert pid is not None
    encoder.close()
    assert encoder.pid is None
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped by close()


def test_crit_available_is_probed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(args: list[str], **kwargs: Any) -> Any:
        calls.append(args)
        return real_run(args, **kwargs)

    crit_available.cache_clear()
    monkeypatch.setattr(subprocess, "run", counting_run)
    try:
        assert crit_available() and crit_available()
    finally:
        crit_available.cache_clear()
    assert len(calls) == 1
