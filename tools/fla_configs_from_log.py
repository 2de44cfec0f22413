"""Turn the autotuning choices printed by a run (``TRITON_PRINT_AUTOTUNING=1``) into fla configuration files.

    python tools/fla_configs_from_log.py run.log src/gendistill/ops/fla_config_files/NVIDIA_H200

Each ``Triton autotuning for function K, with key as (...), ... best config selected: ...;`` record becomes an entry
of ``DIR/K.json`` (merged with what is there). The same files as ``train_throughput.py --dump-fla-configs`` writes in
the process that autotuned; this works from any log, after the fact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gendistill.ops.fla_configs import parse_autotune_log, write_config_files  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", type=Path, help="a run's output with TRITON_PRINT_AUTOTUNING=1")
    ap.add_argument("out", type=Path, help="folder of <kernel>.json files (created; existing files are merged)")
    ap.add_argument("--triton-version", required=True, help="the Triton version of the run (written into each file)")
    ap.add_argument("--keep-existing", action="store_true",
                    help="a key DIR already holds keeps its configuration: only keys new to DIR are added (several "
                         "logs, or another card's, into the shipped folder)")
    args = ap.parse_args()
    entries = parse_autotune_log(args.log.read_text(errors="replace"))
    if not entries:
        sys.exit(f"error: {args.log}: no 'Triton autotuning for function ...' records (was TRITON_PRINT_AUTOTUNING=1 set?)")
    for kernel, n in write_config_files(entries, args.out, args.triton_version, args.keep_existing).items():
        print(f"{kernel}: {n} key(s)")


if __name__ == "__main__":
    main()
