"""Benchmark ``migrate build --encrypt-for`` against the unencrypted native build.

Issue 18's target: encrypting the layer (ocicrypt's format: AES-256-CTR,
HMAC-SHA256 over the ciphertext, the key wrapped in a JWE) stays one
streaming pass, at most 1.3x the time of the same native build without it.

On one generated checkpoint archive (``e2e.archives.archivegen``, 512 MiB of bulk
memory by default), pushed to a loopback registry (Debian's
``docker-registry``), side by side in one run:

- ``migrate build --compression none`` and the same with ``--encrypt-for
  jwe:RSA.pub --encrypt-for jwe:EC.pub`` (two recipients: one RSA-OAEP, one
  ECDH-ES+A256KW): the ratio is the target (the hard case: without
  compression, hashing and encrypting are all the CPU work there is);
- the same pair with ``--compression zstd``, for context.

Every push is cold, exactly as in ``build_bench.py`` (whose ``Bench`` this
reuses): the registry's storage is deleted and the registry restarted before
each build, migrate's layer-digest cache is a new empty directory, and
``sync`` runs before each timed command. Commands are interleaved (the order
rotates each repetition) after one untimed warm-up run each, and medians are
compared. The keys are generated in the work directory (removed at the end).

A report, not a test: exit 0 whether or not the target is met; non-zero only
when it could not measure. Run from the repository root:
``.venv/bin/python bench/encrypt_bench.py [--big-mib 512] [--reps 3]``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from build_bench import Bench, Command, DiskWatch, fmt_opt, ratio_row
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import (
    MIB,
    MIGRATE,
    BenchError,
    archive_args,
    check,
    fmt_s,
    generate,
    measure,
    render,
    with_registry,
)

from e2e.services.registry import Registry

TARGET = 1.3  # t(encrypted) / t(plain) <=


def _public_keys(work: Path) -> list[Path]:
    """An RSA 2048 and an EC P-256 public key (their private halves are not kept)."""
    out = []
    for name, key in (("rsa", rsa.generate_private_key(65537, 2048)),
                      ("ec", ec.generate_private_key(ec.SECP256R1()))):
        path = work / f"{name}.pub"
        path.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        out.append(path)
    return out


def bench(work: Path, big_mib: int, reps: int) -> None:
    free = shutil.disk_usage(work).free
    need = 2 * big_mib * MIB + 64 * MIB  # the archive and one upload (storage is emptied)
    print(f"disk: {work}: {free // MIB} MiB free, this run needs about {need // MIB} MiB")
    if free < need:
        raise BenchError(f"{work}: {free // MIB} MiB free, the run needs about {need // MIB}")
    archive = work / "checkpoint.tar"
    print(f"generating the archive in {work} ...", flush=True)
    t_gen = generate(archive, big_mib)
    size = archive.stat().st_size
    print(f"  {size / MIB:.1f} MiB archive, generated in {t_gen:.1f} s")
    recipients = [a for key in _public_keys(work) for a in ("--encrypt-for", f"jwe:{key}")]

    def build(compression: str, encrypted: bool) -> Command:
        kind = "encrypted" if encrypted else "plain"

        def argv(tag: str, host: str) -> list[str]:
            image = f"{host}/bench/{kind}-{compression}-{tag}:latest"
            return [str(MIGRATE), "build", str(archive), "--image", image, "--compression",
                    compression, "--no-tls-verify", "-o", "json",
                    *(recipients if encrypted else [])]
        return Command(f"migrate build {compression} {kind}", argv, registry=True, build=True)

    pairs = {c: (build(c, False), build(c, True)) for c in ("none", "zstd")}
    floor = Command("migrate --version", lambda tag, host: [str(MIGRATE), "--version"])
    commands = [floor, *(cmd for pair in pairs.values() for cmd in pair)]
    registry = Registry(work / "registry")
    registry.start()
    b = Bench(work, registry)
    try:
        with DiskWatch([work]):
            print(f"measuring: {reps} interleaved repetitions after one warm-up run each "
                  f"({len(commands)} commands, every push to an emptied registry) ...",
                  flush=True)
            measure(commands, reps, b.run, progress=True)
    finally:
        registry.stop()
    _sanity(pairs, size)
    _report(pairs, floor, size, reps)


def _sanity(pairs: dict[str, tuple[Command, Command]], size: int) -> None:
    plain, encrypted = pairs["none"]
    check(all(int(r["layer_size"]) == size for r in plain.reports),
          "plain none: the layer is the archive")
    # CTR keeps the size: the encrypted uncompressed layer is exactly as big.
    check(all(int(r["layer_size"]) == size and len(r["encrypted_for"]) == 2
              for r in encrypted.reports), "encrypted none: the layer size and recipients")
    digests = [r["digest"] for r in encrypted.reports]
    check(len(set(digests)) == len(digests), "encrypted builds: a new key (digest) every time")


def _report(pairs: dict[str, tuple[Command, Command]], floor: Command, size: int,
            reps: int) -> None:
    f = floor.median
    rows = []
    for compression, (plain, encrypted) in pairs.items():
        target = TARGET if compression == "none" else float("inf")
        row = ratio_row(f"t(encrypted) / t(plain), {compression}", encrypted.median,
                        plain.median, f, target, True)
        if compression != "none":
            row[-2:] = ["(info)", "-"]
        rows.append(row)
    rows.append(["start-up floor: migrate --version", fmt_s(f), "-", "-", "-", "(info)", "-"])
    print()
    print(f"RESULTS ({size / MIB:.0f} MiB archive; medians of {reps}; ratio = A / B; net = "
          "the same with\n  the start-up floor taken off both)")
    print(render(["metric", "A", "B", "ratio", "net", "target", "result"], rows,
                 lambda i: i in (1, 2, 3, 4)))
    commands = [floor, *(c for pair in pairs.values() for c in pair)]
    print()
    print("RAW (seconds; CPU = user + system of the command's tree; registry CPU its own)")
    print(render(
        ["command", "median", "min", "max", "MiB/s", "CPU", "registry CPU", "peak RSS"],
        [[c.label, f"{c.median:.3f}", f"{min(c.times):.3f}", f"{max(c.times):.3f}",
          "-" if c is floor else f"{size / MIB / c.median:.0f}", f"{c.cpu:.2f}",
          fmt_opt(getattr(c, "registry_cpu", None), "{:.2f}"), f"{c.peak_rss_mb:.1f} MB"]
         for c in commands], lambda i: 0 < i < 7))
    builds = [c for pair in pairs.values() for c in pair]
    steps = list(dict.fromkeys(k for c in builds for r in c.reports for k in r["timings"]))
    print()
    print("STEPS (migrate build's own timings, medians, seconds)")
    print(render(["step", *(c.label.removeprefix("migrate build ") for c in builds)],
                 [[s, *(fmt_opt(c.timing(s)) for c in builds)] for s in steps],
                 lambda i: i > 0))


def main(argv: Sequence[str] | None = None) -> int:
    args = archive_args(argv, __doc__, 512, "where the archive, keys and registry storage go")
    return with_registry("encrypt-bench-", args.workdir,
                         lambda work: bench(work, args.big_mib, args.reps))


if __name__ == "__main__":
    sys.exit(main())
