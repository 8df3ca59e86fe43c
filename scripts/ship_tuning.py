#!/usr/bin/env python3
"""Merge recorded Triton autotune choices into the shipped tuning of their GPU.

The autotuner writes its choices to ``$SAMSPARSE_HOME/triton/autotune.json`` (key: GPU name and compute
capability, Triton version, dtype, head dim and the shape class; value: the chosen config and the timed
candidates). The package ships such choices under ``samsparse/backends/triton/tuned/`` so that a cold
first call on a measured GPU skips the candidate compiles (``configs.py``). This script files every
recorded entry into the shipped file of its GPU and Triton version, replacing an entry of the same key::

    python scripts/ship_tuning.py autotune_recorded.json            # into samsparse/backends/triton/tuned/
    python scripts/ship_tuning.py autotune_recorded.json --dry-run  # only say what would change

File names: ``<gpu>_sm<cc>_triton<major.minor>.json``, e.g. ``NVIDIA H100 80GB HBM3/sm90|triton3.6.0|...``
goes to ``h100_sm90_triton3.6.json``. Entries whose key does not have that form are reported and skipped.
Files are written atomically (a reader never sees half a file).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from samsparse._atomic import atomic_path  # noqa: E402

TUNED = ROOT / "samsparse" / "backends" / "triton" / "tuned"
_KEY = re.compile(r"^(?P<gpu>[^/|]+)/sm(?P<cc>\d+)\|triton(?P<major>\d+)\.(?P<minor>\d+)[^|]*\|")


def shipped_file_name(key: str) -> str | None:
    """``h100_sm90_triton3.6.json`` for a key of an H100 under Triton 3.6.x; None for a key of another form."""
    m = _KEY.match(key)
    if m is None:
        return None
    words = m["gpu"].split()
    if words and words[0].upper() == "NVIDIA":
        words = words[1:]
    gpu = re.sub(r"[^a-z0-9]+", "-", (words[0] if words else m["gpu"]).lower()).strip("-")
    if not gpu:
        return None
    return f"{gpu}_sm{m['cc']}_triton{m['major']}.{m['minor']}.json"


def _valid_entry(entry) -> bool:
    config = entry.get("config") if isinstance(entry, dict) else None
    return isinstance(config, dict) and {"block_m", "block_n", "num_warps", "num_stages"} <= set(config)


def merge(recorded: dict, tuned_dir: Path, dry_run: bool = False) -> dict[str, dict[str, int]]:
    """File ``recorded`` ({key: entry}) into ``tuned_dir``; {file name: {"added": n, "replaced": n, "same": n}}."""
    by_file: dict[str, dict] = {}
    skipped = []
    for key, entry in recorded.items():
        name = shipped_file_name(key)
        if name is None or not _valid_entry(entry):
            skipped.append(key)
            continue
        by_file.setdefault(name, {})[key] = entry
    if skipped:
        print(f"skipped {len(skipped)} entries that are not autotune records: {skipped[:3]}", file=sys.stderr)
    report = {}
    for name, entries in sorted(by_file.items()):
        path = tuned_dir / name
        try:
            shipped = json.loads(path.read_text())
        except FileNotFoundError:
            shipped = {}
        except ValueError as exc:
            raise SystemExit(f"error: {path} is not valid JSON ({exc}); fix or remove it first")
        counts = {"added": 0, "replaced": 0, "same": 0}
        for key, entry in entries.items():
            old = shipped.get(key)
            counts["added" if old is None else "same" if old == entry else "replaced"] += 1
            shipped[key] = entry
        report[name] = counts
        if not dry_run and (counts["added"] or counts["replaced"]):
            tuned_dir.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(shipped, indent=1, sort_keys=True) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recorded", type=Path, help="an autotune.json written by the autotuner")
    parser.add_argument("--tuned-dir", type=Path, default=TUNED, help="where the shipped files live")
    parser.add_argument("--dry-run", action="store_true", help="report, write nothing")
    args = parser.parse_args(argv)
    try:
        recorded = json.loads(args.recorded.read_text())
    except FileNotFoundError:
        print(f"error: {args.recorded} not found", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {args.recorded} is not valid JSON ({exc})", file=sys.stderr)
        return 2
    if not isinstance(recorded, dict):
        print(f"error: {args.recorded} holds no {{key: entry}} object", file=sys.stderr)
        return 2
    report = merge(recorded, args.tuned_dir, args.dry_run)
    for name, c in report.items():
        verb = "would add" if args.dry_run else "added"
        print(f"{name}: {verb} {c['added']}, replaced {c['replaced']}, unchanged {c['same']}")
    if not report:
        print("nothing to merge")
    return 0


if __name__ == "__main__":
    sys.exit(main())
