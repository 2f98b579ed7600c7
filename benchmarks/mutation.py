"""Mutation testing of the code that decides what the registry holds: the gate, the promotion and
its commit path, approval, and the checks every incoming shard goes through.

    .venv/bin/python benchmarks/mutation.py [--only promotion,incoming,...] [--max-children 2] [--keep]
    .venv/bin/python benchmarks/mutation.py --review-only   # re-read mutation_reviewed.json only

Targets: gate, promotion, "commit log", approval, incoming.

For each target, mutmut mutates only its modules (every operator, constant and call it knows how
to change, one at a time) and runs the fast tests that cover the mutated function, stopping at the
first failure. A mutant the tests notice is killed; one they pass with is a survivor. Each target
runs in its own copy of the tree under .local/mutation/<target>/ (mutmut works in a `mutants/`
copy there), with only the non-slow tests of its own test files selected, fake-gcs-server
variants left out (the local store runs the same code), and at most two workers. Every test run
loads `mutation_cache.py`, a pytest plugin that keeps by content what each mutant's tests would
rebuild identically (MNIST, read once; the duplicate index over its 70,000 images), filled before
mutmut forks a process per mutant: the same tests and assertions, less repeated work.

`--only` measures the targets named and keeps every other target as the last results hold it
(each target's results are written as soon as it is measured):
benchmarks/results/mutation.json always holds every target measured (each with its own date, CPU
and survivors), and its total and mutation_survivors.md are computed over all of them, with the
survivors' reasons as mutation_reviewed.json gives them at the time of writing.

Target: at least 95% of all mutants killed (a timeout counts as killed: the mutant never
finished). Prints a table and writes benchmarks/results/mutation.json and, for every survivor, its
diff and why it survives to benchmarks/results/mutation_survivors.md: an equivalent mutant (no
test can tell it apart: the reason says why) or a gap (no test checks that behaviour yet).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS, cpu_model, mnist_source, write_result

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".local" / "mutation"
MUTMUT = Path(sys.executable).parent / "mutmut"
TARGET_SCORE = 0.95
# What the tests need besides the package and the tests: the DAG files some of them parse.
COPIED = ("mnist_pipeline", "tests", "dags", "plugins")
# Every target: the fast tests only, on the local store (the gcs variants, and the 32 writers on
# fake-gcs-server, run the same code; the local race tests cover a lost commit race).
SELECTION = ("-m", "not slow", "-k", "not gcs and not 32_concurrent_writers")
KILLED = {"killed", "timeout"}
# Loaded into every test run of the benchmark: keeps what each mutant's tests rebuild identically
# (MNIST, the duplicate index over it) by content; see its docstring.
CACHE_PLUGIN = Path(__file__).resolve().parent / "mutation_cache.py"


@dataclass(frozen=True)
class Target:
    name: str
    modules: tuple[str, ...]
    tests: tuple[str, ...]


TARGETS = (
    Target("gate", ("mnist_pipeline/registry/gate.py",), ("tests/test_gate.py", "tests/test_promotion.py")),
    Target(
        "promotion",
        ("mnist_pipeline/registry/promotion.py",),
        ("tests/test_promotion.py", "tests/test_registry_log.py", "tests/test_release.py"),
    ),
    Target(
        "commit log",
        ("mnist_pipeline/registry/log.py", "mnist_pipeline/registry/state.py"),
        ("tests/test_registry_log.py", "tests/test_aliases.py", "tests/test_records.py"),
    ),
    Target(
        "approval",
        ("mnist_pipeline/registry/approval.py",),
        ("tests/test_release.py", "tests/test_registry_log.py"),
    ),
    Target(
        "incoming",
        (
            "mnist_pipeline/data/incoming.py",
            "mnist_pipeline/data/screening.py",
            "mnist_pipeline/data/names.py",
        ),
        (
            "tests/test_incoming.py",
            "tests/test_incoming_safety.py",
            "tests/test_poison_pill.py",
            "tests/test_yardstick.py",
        ),
    ),
)

# Survivors reviewed by hand, in mutation_reviewed.json: mutant name -> the mutated line (stripped)
# and why it survives. A reason holds only while the mutated line is the same; a survivor not
# listed there, or whose line changed, is reported as not yet reviewed.
REVIEWED_FILE = Path(__file__).resolve().parent / "mutation_reviewed.json"


def reviewed() -> dict[str, tuple[str, str]]:
    entries = json.loads(REVIEWED_FILE.read_text()) if REVIEWED_FILE.exists() else {}
    return {name: (entry["line"], entry["reason"]) for name, entry in entries.items()}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def prepare(target: Target) -> Path:
    """A fresh copy of the tree for `target`, with mutmut's settings in its pyproject.toml."""
    work = WORK / slug(target.name)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in COPIED:
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(CACHE_PLUGIN, work / CACHE_PLUGIN.name)
    settings = {
        "source_paths": ["mnist_pipeline"],
        "only_mutate": list(target.modules),
        "also_copy": ["dags", "plugins", CACHE_PLUGIN.name],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:randomly", "-p", CACHE_PLUGIN.stem],
        "pytest_add_cli_args_test_selection": [*target.tests, *SELECTION],
    }
    section = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    (work / "pyproject.toml").write_text(f"{(REPO / 'pyproject.toml').read_text()}\n[tool.mutmut]\n{section}")
    return work


def run_mutmut(work: Path, max_children: int) -> float:
    env = os.environ | {"MNIST_SOURCE": mnist_source(), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)  # the tests must import the mutated copy, never this tree
    started = time.perf_counter()
    with (work / "mutmut.log").open("w") as log:
        result = subprocess.run(
            [str(MUTMUT), "run", "--max-children", str(max_children)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if result.returncode != 0:
        tail = (work / "mutmut.log").read_text()[-3000:]
        raise SystemExit(f"mutmut failed in {work} (exit {result.returncode}):\n{tail}")
    return time.perf_counter() - started


def statuses(work: Path) -> dict[str, str]:
    """Each mutant and what became of it, as mutmut reports it."""
    listed = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True
    )
    found = {}
    for line in listed.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            found[name] = status
    return found


# Asks mutmut, inside the working copy, for the diff of each mutant named on stdin.
_DIFFS = (
    "import json, sys\n"
    "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
    "print(json.dumps({name: get_diff_for_mutant(name) for name in json.load(sys.stdin)}))\n"
)


def diffs_of(work: Path, mutants: list[str]) -> dict[str, str]:
    if not mutants:
        return {}
    shown = subprocess.run(
        [sys.executable, "-c", _DIFFS],
        cwd=work,
        input=json.dumps(mutants),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(shown.stdout)


def mutated_line(diff: str) -> str:
    added = [line[1:].strip() for line in diff.splitlines() if line[:1] == "+" and line[:3] != "+++"]
    return added[0] if added else ""


def review(mutant: str, diff: str, status: str) -> tuple[str, str]:
    """(kind, reason) of a survivor: equivalent, gap, or not yet reviewed."""
    line, known = mutated_line(diff), reviewed()
    if mutant in known and known[mutant][0] == line:
        reason = known[mutant][1]
        return ("equivalent" if reason.startswith("equivalent") else "gap"), reason
    if status == "no tests":
        return "gap", "no fast test of this target reaches the function"
    return "unreviewed", "not yet reviewed"


def measure(target: Target, max_children: int, keep: bool) -> dict[str, Any]:
    work = prepare(target)
    seconds = run_mutmut(work, max_children)
    found = statuses(work)
    counts = Counter(found.values())
    survivors = []
    diffs = diffs_of(work, sorted(name for name, status in found.items() if status not in KILLED))
    for mutant, diff in diffs.items():
        status = found[mutant]
        kind, reason = review(mutant, diff, status)
        survivors.append({"mutant": mutant, "status": status, "kind": kind, "reason": reason, "diff": diff})
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    killed = counts["killed"] + counts["timeout"]
    return {
        "target": target.name,
        "modules": list(target.modules),
        "tests": list(target.tests),
        "mutants": len(found),
        "killed": counts["killed"],
        "timeout": counts["timeout"],
        "survived": len(found) - killed,
        "statuses": dict(counts),
        "score": round(killed / len(found), 4) if found else None,
        "seconds": round(seconds, 1),
        "survivors": survivors,
    }


def table(rows: list[dict[str, Any]], total: dict[str, Any]) -> str:
    columns = ("mutants", "killed", "survived", "timeout", "score", "seconds")
    header = f"{'target':<12}" + "".join(f" {column:>9}" for column in columns)
    lines = [header, "-" * len(header)]
    for row in [*rows, total]:
        score = f"{row['score']:.1%}" if row["score"] is not None else "-"
        values = (row["mutants"], row["killed"], row["survived"], row["timeout"], score, row["seconds"])
        lines.append(f"{row['target']:<12}" + "".join(f" {value!s:>9}" for value in values))
    return "\n".join(lines)


def survivors_markdown(rows: list[dict[str, Any]], total: dict[str, Any]) -> str:
    out = [
        "# Surviving mutants",
        "",
        "Written by `benchmarks/mutation.py`: every mutant the fast tests did not kill, its diff, and",
        "why it survives: *equivalent* (no test can tell it apart from the original) or *gap* (no",
        "test checks that behaviour yet).",
        "",
        f"Score: {total['killed'] + total['timeout']} of {total['mutants']} mutants killed "
        f"({total['score']:.1%}; target {TARGET_SCORE:.0%}).",
    ]
    for row in rows:
        out += ["", f"## {row['target']} ({', '.join(row['modules'])})", ""]
        if not row["survivors"]:
            out.append("No survivors.")
        for survivor in row["survivors"]:
            out += [
                f"### `{survivor['mutant']}` ({survivor['status']}, {survivor['kind']})",
                "",
                survivor["reason"],
                "",
                "```diff",
                survivor["diff"],
                "```",
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


def merged(measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets just measured, with every other target kept as the last results hold it, in
    the order of TARGETS: a run of some targets updates them without losing the others."""
    path = RESULTS / "mutation.json"
    earlier = json.loads(path.read_text()).get("targets", []) if path.exists() else []
    names = [target.name for target in TARGETS]
    fresh = {row["target"] for row in measured}
    kept = [row for row in earlier if row["target"] in set(names) - fresh and "survivors" in row]
    return sorted([*kept, *measured], key=lambda row: names.index(row["target"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated target names (default: all)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel workers (default 2)")
    parser.add_argument("--keep", action="store_true", help=f"keep the working copies under {WORK}")
    parser.add_argument(
        "--review-only",
        action="store_true",
        help="measure nothing: rewrite the results with the reasons mutation_reviewed.json gives now",
    )
    args = parser.parse_args()
    if args.review_only:
        write_results([], args.max_children)
        return
    chosen = [t for t in TARGETS if not args.only or t.name in args.only.split(",")]
    for target in chosen:  # each target's results are written as soon as it is measured
        row = measure(target, args.max_children, args.keep)
        when = {
            "cpu_model": cpu_model(),
            "max_children": args.max_children,
            "date": time.strftime("%Y-%m-%d"),
        }
        write_results([row | when], args.max_children)


def write_results(measured: list[dict[str, Any]], max_children: int) -> None:
    """Merge `measured` into the results (`merged`), print the table and write both files."""
    rows = merged(measured)
    for row in rows:  # reasons as reviewed now, for the kept targets too
        for found in row["survivors"]:
            found["kind"], found["reason"] = review(found["mutant"], found["diff"], found["status"])
    mutants = sum(row["mutants"] for row in rows)
    killed, timeout = sum(row["killed"] for row in rows), sum(row["timeout"] for row in rows)
    total = {
        "target": "all",
        "mutants": mutants,
        "killed": killed,
        "timeout": timeout,
        "survived": mutants - killed - timeout,
        "score": round((killed + timeout) / mutants, 4) if mutants else None,
        "seconds": round(sum(row["seconds"] for row in rows), 1),
    }
    print(table(rows, total))
    kinds = Counter(s["kind"] for row in rows for s in row["survivors"])
    # The same score with the equivalent mutants left out: no test could ever kill those.
    judged = mutants - kinds["equivalent"]
    total["score_without_equivalent"] = round((killed + timeout) / judged, 4) if judged else None
    payload = {
        "cpu_model": cpu_model(),
        "tool": f"mutmut {_mutmut_version()}",
        "selection": list(SELECTION),
        "max_children": max_children,
        "target_score": TARGET_SCORE,
        "total": total,
        "survivor_kinds": dict(kinds),
        "targets": rows,
    }
    print("wrote", write_result("mutation", payload))
    path = RESULTS / "mutation_survivors.md"
    path.write_text(survivors_markdown(rows, total))
    print("wrote", path)


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    main()
