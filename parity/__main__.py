"""``python -m parity``: compare ``tkfac_ms`` with ``reference_torch`` and print the table.

Usage::

    python -m parity --model resnet20 --approximation tkfac_new [--batch 4] [--steps 10]
                     [--out outputs/parity] [--free-running]
    python -m parity --model all --approximation all --out outputs/parity   # docs/parity.md

Prints one row per layer and quantity (max relative error, tolerance, pass/fail), writes
``<out>/<model>_<approximation>.json`` and ``.md`` for every case and ``<out>/summary.md``
(``summary.json``) with the worst error per group. Exits 1 if any row fails, 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from parity.compare import (
    APPROXIMATIONS,
    GROUPS,
    MODELS,
    Case,
    CaseResult,
    load_result,
    run_case,
)
from parity.tolerances import attach, tolerance

_STATS = {
    "both": ("empirical", "true"),
    "true": ("true",),
    "empirical": ("empirical",),
    "none": (),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m parity",
        description="Per-layer parity of tkfac_ms against the reference_torch oracle.",
    )
    p.add_argument(
        "--model", required=True, choices=[*MODELS, "all"], help="network to compare, or all"
    )
    p.add_argument(
        "--approximation",
        required=True,
        choices=[*APPROXIMATIONS, "all"],
        help="TKFAC approximation to compare, or all",
    )
    p.add_argument("--batch", type=int, default=4, help="samples per batch (default 4)")
    p.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    p.add_argument("--image-size", type=int, default=32, help="input height = width (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
    p.add_argument(
        "--stats",
        choices=list(_STATS),
        default="both",
        help="which Fisher's batch statistics to compare (default both)",
    )
    p.add_argument(
        "--free-running",
        action="store_true",
        help="do not re-anchor float32 nets on torch after each step",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("outputs/parity"),
        help="folder for the JSON and Markdown tables (default outputs/parity)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="DIR",
        help="do not run: rebuild the tables from the JSON of an earlier run in DIR "
        "(with the current tolerances)",
    )
    return p


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def case_table(result: CaseResult) -> list[list[str]]:
    """Header + one row per compared quantity."""
    out = [["layer", "quantity", "max rel err", "tolerance", "result"]]
    for r in result.rows:
        out.append([r.layer, r.quantity, _fmt(r.err), _fmt(r.tol), "pass" if r.passed else "FAIL"])
    return out


def summary_table(results: list[CaseResult]) -> list[list[str]]:
    """Header + one row per case: the worst error of every group (``*`` marks a failure)."""
    out = [["model", "approximation", *GROUPS, "result"]]
    for res in results:
        cells = []
        for group in GROUPS:
            rows = [r for r in res.rows if r.group == group]
            if not rows:
                cells.append("n/a")
                continue
            worst = max(r.err for r in rows)
            cells.append(_fmt(worst) + ("" if all(r.passed for r in rows) else " *"))
        ok = all(r.passed for r in res.rows)
        out.append([res.case.model, res.case.approximation, *cells, "pass" if ok else "FAIL"])
    return out


def markdown(table: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines) + "\n"


def text(table: list[list[str]]) -> str:
    """A fixed-width text table."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return (
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        )
        + "\n"
    )


def _case_markdown(res: CaseResult) -> str:
    c = res.case
    head = (
        f"# Parity: {c.model} / {c.approximation}\n\n"
        f"batch {c.batch}, {c.image_size}x{c.image_size}, {c.steps} steps, "
        f"{'float64' if c.float64 else 'float32'}, "
        f"{'re-anchored' if c.resync else 'free-running'}; {res.draws} batches drawn, "
        f"ReLU/max-pool branches differing between MindSpore, torch float32 and float64 in "
        f"the batches used: {'-' if res.flips is None else res.flips}; smallest kink margin "
        f"{_fmt(res.min_margin)}; {res.seconds:.0f} s.\n\n"
    )
    return head + markdown(case_table(res))


def main(argv: list[str] | None = None) -> int:
    """Run the requested cases; returns the exit status."""
    args = _parser().parse_args(argv)
    models = MODELS if args.model == "all" else (args.model,)
    approximations = APPROXIMATIONS if args.approximation == "all" else (args.approximation,)
    try:
        cases = [
            Case(
                m,
                a,
                batch=args.batch,
                steps=args.steps,
                image_size=args.image_size,
                seed=args.seed,
                resync=False if args.free_running else None,
                statistics=_STATS[args.stats],
            )
            for m in models
            for a in approximations
        ]
    except ValueError as err:
        print(f"python -m parity: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = []
    start = time.perf_counter()
    for case in cases:
        if args.from_json is not None:
            res = load_result(args.from_json / f"{case.model}_{case.approximation}.json")
        else:
            res = run_case(case, log=log)
        attach(res.rows)
        results.append(res)
        stem = args.out / f"{case.model}_{case.approximation}"
        stem.with_suffix(".json").write_text(json.dumps(res.as_dict(), indent=1) + "\n")
        stem.with_suffix(".md").write_text(_case_markdown(res))
        if not args.quiet:
            print(
                f"\n== {case.label}  ({res.seconds:.0f} s, {res.draws} batches drawn, "
                f"branch flips {'-' if res.flips is None else res.flips}, smallest kink margin "
                f"{_fmt(res.min_margin)})"
            )
            print(text(case_table(res)), end="")
    summary = summary_table(results)
    (args.out / "summary.md").write_text(markdown(summary))
    (args.out / "summary.json").write_text(
        json.dumps(
            {
                "groups": list(GROUPS),
                "tolerances": {m: {g: tolerance(m, g).value for g in GROUPS} for m in models},
                "cases": [
                    {**r.as_dict(), "rows": None}
                    | {
                        "worst": {
                            g: max((x.err for x in r.rows if x.group == g), default=None)
                            for g in GROUPS
                        }
                    }
                    for r in results
                ],
            },
            indent=1,
        )
        + "\n"
    )
    print("\n== summary: worst max relative error per group (* = over tolerance)")
    print(text(summary), end="")
    failed = sum(not r.passed for res in results for r in res.rows)
    total = sum(len(res.rows) for res in results)
    print(
        f"{total - failed}/{total} rows pass; {time.perf_counter() - start:.0f} s; "
        f"tables in {args.out}/"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
