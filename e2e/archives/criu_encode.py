"""Encode CRIU images for generated archives.

The reference encoder is CRIU's own: Debian's `criu` package ships `crit` and
its library `pycriu`, run by the system python3. Starting that interpreter
costs more than encoding an archive, so one long-lived `/usr/bin/python3`
co-process per process does all the encoding: started on first use, fed one
JSON line per archive (all its images) and answering one, serialized by a lock,
started again if it has died, closed at exit. Where pycriu is not installed
(`crit_available`, probed once per process), or for the CRIU 4.2+ pagemap
layout that Debian's CRIU 3.17 cannot express, a small encoder of our own is
used; tests that check the reader against an independent encoder require
pycriu.
"""

from __future__ import annotations

import atexit
import base64
import functools
import json
import os
import shutil
import struct
import subprocess
import threading
from typing import IO, Any

SYSTEM_PYTHON = "/usr/bin/python3"
IMG_COMMON, IMG_SERVICE = 0x54564319, 0x55105940
MAGICS = {
    "INVENTORY": 0x58313116, "PSTREE": 0x50273030, "CORE": 0x55053847,
    "PAGEMAP": 0x56084025, "MM": 0x57492820, "STATS": 0x57093306, "UTSNS": 0x54473203,
}

# One request per line: {filename: crit-JSON image}; one answer per line:
# {"ok": {filename: base64}} or {"error": traceback}.
_PYCRIU_SERVER = r"""
import io, json, sys, base64, traceback
import pycriu.images as I
for line in sys.stdin:
    try:
        out = {}
        for name, img in json.loads(line).items():
            f = io.BytesIO(); I.dump(img, f); out[name] = base64.b64encode(f.getvalue()).decode()
        answer = {"ok": out}
    except Exception:
        answer = {"error": traceback.format_exc()}
    sys.stdout.write(json.dumps(answer) + "\n"); sys.stdout.flush()
"""


@functools.cache
def crit_available() -> bool:
    """Whether CRIU's own encoder (pycriu, with crit) is installed (probed once)."""
    if not shutil.which("crit"):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import pycriu.images"], capture_output=True)
    return probe.returncode == 0


class PycriuEncoder:
    """A pycriu co-process: `encode` sends one request and reads the answer.

    Thread-safe (one request at a time). The process starts on the first
    request and again on the next one after it died (in this process's
    children, after a fork, too); close() ends it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0  # the process that started _proc

    @property
    def pid(self) -> int | None:
        """The co-process's pid, if one is running for this process."""
        with self._lock:
            alive = self._proc is not None and self._pid == os.getpid() \
                and self._proc.poll() is None
            return self._proc.pid if alive and self._proc is not None else None

    def encode(self, images: dict[str, dict[str, Any]]) -> dict[str, bytes]:
        """Encode ``{filename: crit-JSON image}``; RuntimeError if pycriu fails."""
        request = json.dumps(images).encode() + b"\n"
        with self._lock:
            answer = self._ask(request)
        if "error" in answer:
            raise RuntimeError(f"pycriu failed: {str(answer['error'])[-2000:]}")
        return {k: base64.b64decode(v) for k, v in answer["ok"].items()}

    def close(self) -> None:
        """End the co-process (if any): it sees end of input and exits."""
        with self._lock:
            self._stop()

    def _ask(self, request: bytes) -> dict[str, Any]:
        # A process that died since the last request is replaced once; dying while
        # answering this one is an error (the request itself may be what kills it).
        proc = self._running()
        try:
            stdin, stdout = _pipes(proc)
            stdin.write(request)
            stdin.flush()
            line = stdout.readline()
        except (BrokenPipeError, OSError):
            line = b""
        if not line:
            err = self._stop()
            raise RuntimeError(f"pycriu failed: encoder exited: {err[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._pid != os.getpid() or self._proc.poll() is not None:
            if self._pid == os.getpid():
                self._stop()
            self._proc = subprocess.Popen(
                [SYSTEM_PYTHON, "-c", _PYCRIU_SERVER], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self._pid = os.getpid()
        return self._proc

    def _stop(self) -> str:
        proc, self._proc = self._proc, None
        if proc is None or self._pid != os.getpid():
            return ""
        try:  # closes its input: the loop ends
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return err.decode(errors="replace")


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert proc.stdin is not None and proc.stdout is not None
    return proc.stdin, proc.stdout


_ENCODER = PycriuEncoder()
atexit.register(_ENCODER.close)


def encode_with_pycriu(images: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """Encode ``{filename: crit-JSON image}`` with pycriu (the shared co-process)."""
    return _ENCODER.encode(images)


# --- fallback encoder: field numbers from CRIU's images/*.proto -------------------

_MSG: dict[str, dict[str, tuple[int, str]]] = {
    "pstree": {"pid": (1, "v"), "ppid": (2, "v"), "pgid": (3, "v"), "sid": (4, "v"),
               "threads": (5, "rv")},
    "core": {"mtype": (1, "v"), "tc": (3, "m:tc")},
    "tc": {"task_state": (1, "v"), "exit_code": (2, "v"), "personality": (3, "v"),
           "flags": (4, "v"), "blk_sigset": (5, "v"), "comm": (6, "s")},
    "pagemap_head": {"pages_id": (1, "v")},
    "pagemap": {"vaddr": (1, "v"), "nr_pages": (2, "v"), "compat_nr_pages": (2, "v"),
                "in_parent": (3, "v"), "flags": (4, "v"), "nr_pages_u64": (5, "v")},
    "mm": {k: (i, "v") for i, k in enumerate(
        ("mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data", "mm_start_stack",
         "mm_start_brk", "mm_brk", "mm_arg_start", "mm_arg_end", "mm_env_start",
         "mm_env_end", "exe_file_id"), start=1)},
    "utsns": {"nodename": (1, "s"), "domainname": (2, "s")},
    "stats": {"dump": (1, "m:dump_stats")},
    "dump_stats": {k: (i, "v") for i, k in enumerate(
        ("freezing_time", "frozen_time", "memdump_time", "memwrite_time", "pages_scanned",
         "pages_skipped_parent", "pages_written", "irmap_resolve", "pages_lazy"), start=1)},
    "inventory": {"img_version": (1, "v"), "fdinfo_per_id": (2, "v"), "ns_per_id": (4, "v")},
}
_ENTRY = {"PSTREE": "pstree", "CORE": "core", "MM": "mm", "UTSNS": "utsns",
          "STATS": "stats", "INVENTORY": "inventory"}
_MTYPES = {"X86_64": 1, "AARCH64": 3}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_message(kind: str, values: dict[str, Any]) -> bytes:
    """Protobuf-encode ``values`` as message ``kind`` of the table above."""
    out = bytearray()
    for key, value in values.items():
        number, how = _MSG[kind][key]
        if key == "mtype" and isinstance(value, str):
            value = _MTYPES[value]
        items = value if how == "rv" else [value]
        for item in items:
            if how in ("v", "rv"):
                out += _varint(number << 3) + _varint(int(item))
            else:
                payload = (item.encode() if how == "s"
                           else encode_message(how[2:], item))
                out += _varint(number << 3 | 2) + _varint(len(payload)) + payload
    return bytes(out)


def encode_own(image: dict[str, Any], *, pagemap_u64: bool = False) -> bytes:
    """Encode one crit-JSON image without CRIU.

    ``pagemap_u64`` writes the CRIU 4.2+ pagemap layout: the page count in the
    u64 ``nr_pages`` (field 5) and ``compat_nr_pages`` (field 2, required) as 0.
    """
    magic = image["magic"]
    out = bytearray()
    if magic != "INVENTORY":
        out += struct.pack("<I", IMG_SERVICE if magic == "STATS" else IMG_COMMON)
    out += struct.pack("<I", MAGICS[magic])
    for i, entry in enumerate(image["entries"]):
        if magic == "PAGEMAP":
            if i == 0:
                payload = encode_message("pagemap_head", entry)
            else:
                entry = dict(entry)
                if pagemap_u64:
                    # CRIU 4.2 sets only the u64 count; the required field 2 goes out as 0.
                    entry["nr_pages_u64"] = entry.pop("nr_pages")
                    entry["compat_nr_pages"] = 0
                payload = encode_message("pagemap", entry)
        else:
            payload = encode_message(_ENTRY[magic], entry)
        out += struct.pack("<I", len(payload)) + payload
    return bytes(out)


def encode_images(
    images: dict[str, dict[str, Any]], *, use_crit: bool | None = None, pagemap_u64: bool = False
) -> dict[str, bytes]:
    """Encode every image, with CRIU's encoder unless told otherwise or unavailable."""
    if pagemap_u64:
        use_crit = False
    if use_crit is None:
        use_crit = crit_available()
    if use_crit:
        return encode_with_pycriu(images)
    return {name: encode_own(img, pagemap_u64=pagemap_u64) for name, img in images.items()}
