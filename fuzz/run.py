"""Run one fuzz target under atheris (libFuzzer): ``python -m fuzz.run NAME [libFuzzer args]``.

``NAME`` is a key of :data:`fuzz.targets.TARGETS`. Everything after it goes to libFuzzer, e.g.
``-runs=2000 -seed=1 fuzz/corpus/query`` (the short deterministic run of ``make test``) or
``-max_total_time=300 .fuzz/query fuzz/corpus/query`` (``make fuzz``: new inputs go to the
first, git-ignored folder). sipcert, asn1crypto and the target module are instrumented for
coverage; a crash writes ``crash-<sha1>`` in the working folder (``-artifact_prefix=``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["sipcert", "asn1crypto", "fuzz"]):
    from fuzz.targets import TARGETS


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz.run {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
