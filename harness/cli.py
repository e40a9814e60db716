"""``stagecost``: one command, hyphen-free subcommands; exit codes in ``harness.exit_codes``
(0 ok, 1 error, 2 regression, 3 incomplete, 64 usage error, 130 interrupted).

  stagecost run       run workloads on backends, write a run folder with its report
  stagecost profile   the same under py-spy, with samples attributed to stages
  stagecost report    (re)render the report of one or more run folders
  stagecost compare   per-stage ratios between two run folders; exit 2 on a regression
  stagecost workloads list the workloads and their parameters
  stagecost scheduler start a reference scheduler (for a cluster on several hosts)
  stagecost worker    start a reference worker and connect it to a scheduler
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.exit_codes import ExitCode, StageCostParser, UsageError

__all__ = ["main"]

DEFAULT_WORKLOADS = ["elementwise", "reduction"]
DEFAULT_SIZES = [10_000, 100_000]


def _size(text: str) -> int:
    try:
        value = int(float(text.replace("_", "").replace(",", "")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a task count: {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"a graph needs at least 2 tasks, got {value}")
    return value


def _workload(text: str) -> str:
    from harness.workloads import names

    if ":" in text or text in names():
        return text
    raise argparse.ArgumentTypeError(
        f"unknown workload {text!r}; choose one of {', '.join(names())}, or give your own "
        f"as FILE.py:FUNCTION or package.module:FUNCTION")


def _run_options(p: argparse.ArgumentParser) -> None:
    from harness.backends import BACKENDS

    p.add_argument("-w", "--workload", action="append", type=_workload, metavar="WORKLOAD",
                   help="built-in workload (see 'stagecost workloads') or your own, "
                        "FILE.py:FUNCTION or package.module:FUNCTION, FUNCTION(n_tasks) "
                        "returning Dask collections (repeatable; default: "
                        f"{' '.join(DEFAULT_WORKLOADS)})")
    p.add_argument("-n", "--n-tasks", action="append", type=_size, metavar="N",
                   help="task count, e.g. 100000 or 1e6 (repeatable; default: "
                        f"{' '.join(str(n) for n in DEFAULT_SIZES)})")
    p.add_argument("-b", "--backend", action="append", choices=list(BACKENDS),
                   help="backend (repeatable; the first is the reference of comparisons; "
                        "default: reference)")
    p.add_argument("-r", "--repeats", type=int, default=3, help="measured runs per "
                   "configuration (default 3)")
    p.add_argument("--warmups", type=int, default=1, help="runs dropped before measuring "
                   "(default 1)")
    p.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default 1)")
    p.add_argument("-e", "--encoding", action="append",
                   help="graph encoding: compact, pickle, layers (repeatable: encodings are "
                        "then compared side by side as backends reference/ENCODING; "
                        "default compact)")
    p.add_argument("--fuse", action="store_true", help="fuse blockwise layers and linear "
                   "chains before submitting (off by default, so every task runs)")
    p.add_argument("--no-record", action="store_true", help="record no stage spans (wall "
                   "time only; what speed comparisons use)")
    p.add_argument("--scheduler-address", default=None,
                   help="use an existing cluster at tcp://HOST:PORT instead of starting one")
    p.add_argument("--dask-config", action="append", metavar="KEY=VALUE", default=[],
                   help="Dask setting for the Dask backends' runs and the clusters they "
                        "start (repeatable), e.g. distributed.scheduler.worker-saturation=inf"
                        "; default: Dask's own configuration")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="run folder (default reports/<time>-<workload>-<n>-<backend>)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds after which a configuration is abandoned")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _build_parser() -> argparse.ArgumentParser:
    p = StageCostParser(prog="stagecost", description=(
        "Where does the time go between compute() and the last result, stage by stage?"))
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=StageCostParser)
    run = sub.add_parser("run", help="run workloads and write a stage-cost report")
    _run_options(run)
    prof = sub.add_parser("profile", help="run under py-spy and attribute samples to stages")
    _run_options(prof)
    prof.add_argument("--role", choices=["scheduler", "client", "workers", "all"],
                      default="scheduler", help="processes to profile (default scheduler)")
    prof.add_argument("--rate", type=int, default=200, help="samples per second (default "
                      "200)")
    rep = sub.add_parser("report", help="(re)render the report of run folders")
    rep.add_argument("runs", nargs="+", type=Path, help="run folders")
    rep.add_argument("-o", "--output", type=Path, default=None,
                     help="where to write (default: the run folder, if one)")
    cmp_ = sub.add_parser("compare", help="compare two run folders stage by stage")
    cmp_.add_argument("a", type=Path, help="baseline run folder")
    cmp_.add_argument("b", type=Path, help="new run folder")
    cmp_.add_argument("--factor", type=float, default=1.10,
                      help="ratio beyond which a significant change counts (default 1.10)")
    cmp_.add_argument("-o", "--output", type=Path, default=None,
                      help="also write compare.md/.html here")
    cmp_.add_argument("--json", action="store_true", help="print the table as JSON")
    wl = sub.add_parser("workloads", help="list workloads and their parameters")
    wl.add_argument("--json", action="store_true", help="print JSON")
    sch = sub.add_parser("scheduler", help="start a reference scheduler", add_help=False)
    sch.add_argument("args", nargs=argparse.REMAINDER)
    wk = sub.add_parser("worker", help="start a reference worker", add_help=False)
    wk.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _options(args: argparse.Namespace) -> Any:
    from harness.backends.base import RunOptions

    if args.workers < 1 or args.threads < 1:
        raise UsageError("--workers and --threads must be at least 1")
    from scheduler.wire.encodings import ENCODINGS

    encodings = list(dict.fromkeys(args.encoding or ["compact"]))
    for e in encodings:
        if e not in ENCODINGS:
            raise UsageError(f"unknown encoding {e!r}; choose from {', '.join(ENCODINGS)}")
    if args.dask_config:
        from harness.backends.dask_backends import parse_dask_config

        try:
            parse_dask_config(args.dask_config)  # refuse typos before anything runs
        except ValueError as e:
            raise UsageError(str(e)) from None
    return RunOptions(workers=args.workers, threads=args.threads, encoding=encodings[0],
                      fuse=args.fuse, record=not args.no_record,
                      scheduler_address=args.scheduler_address, timeout=args.timeout,
                      dask_config=tuple(args.dask_config))


def _grid(args: argparse.Namespace) -> tuple[list[str], list[int], list[str], Path]:
    from harness.runner import default_run_dir

    workloads = list(dict.fromkeys(args.workload or DEFAULT_WORKLOADS))
    sizes = list(dict.fromkeys(args.n_tasks or DEFAULT_SIZES))
    backends = list(dict.fromkeys(args.backend or ["reference"]))
    run_dir = args.output or default_run_dir(Path("reports"), workloads, sizes, backends)
    return workloads, sizes, backends, run_dir


def _summary_text(stages: Any, runs: Any) -> str:
    from harness.report.markup import text_table
    from harness.report.tables import run_summary, stage_summary

    s = stage_summary(stages)
    cols = [c for c in ("backend", "workload", "n_tasks", "stage", "seconds_median",
                        "us_per_task_median", "nbytes_median") if c in s.columns]
    r = run_summary(runs)
    return text_table(s[cols]) + "\n\n" + text_table(r)


def _cmd_run(args: argparse.Namespace, profile: bool = False) -> int:
    from harness.runner import run_grid

    workloads, sizes, backends, run_dir = _grid(args)
    options = _options(args)
    params = {"command": "profile" if profile else "run"}
    if profile:
        from harness.profile_run import profile_grid

        run_dir, stages, runs = profile_grid(workloads, sizes, backends, options,
                                             repeats=args.repeats, warmups=args.warmups,
                                             run_dir=run_dir, role=args.role,
                                             rate=args.rate, parameters=params)
    else:
        run_dir, stages, runs = run_grid(workloads, sizes, backends, options,
                                         repeats=args.repeats, warmups=args.warmups,
                                         encodings=list(dict.fromkeys(args.encoding or [])),
                                         run_dir=run_dir, in_process=args.in_process,
                                         timeout=args.timeout, parameters=params)
    if args.json:
        from harness.report.schema import read_run

        stored = read_run(run_dir)  # rows exactly as stages.csv holds them
        doc = {"run_dir": str(run_dir),
               "rows": _records(stored.stages),
               "time_to_first_task_s": _median(runs, "time_to_first_task_s"),
               "wall_s": _median(runs, "wall_s"),
               "runs": json.loads(runs.to_json(orient="records"))}
        print(json.dumps(doc))
    else:
        print(_summary_text(stages, runs))
        print(f"\nreport: {run_dir / 'report.html'}  (and report.md)")
    failed = json.loads((run_dir / "meta.json").read_text()).get("failed_cells") or []
    for f in failed:
        print(f"stagecost {params['command']}: {f['cell']} has no result: {f['error']}",
              file=sys.stderr)
    return ExitCode.INCOMPLETE if failed else ExitCode.OK


def _records(df: Any) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: ints stay ints, missing values become null."""
    import math

    out = []
    for row in df.astype(object).to_dict(orient="records"):
        clean: dict[str, Any] = {}
        for k, v in row.items():
            if v is None or (isinstance(v, float) and math.isnan(v)) or v is __import__("pandas").NA:
                clean[k] = None
            elif hasattr(v, "item"):
                clean[k] = v.item()
            else:
                clean[k] = v
        out.append(clean)
    return out


def _median(runs: Any, col: str) -> float | None:
    if col not in runs or runs[col].dropna().empty:
        return None
    return float(runs[col].median())


def _cmd_report(args: argparse.Namespace) -> int:
    from harness.report.render import render_report

    out = args.output
    if out is None:
        if len(args.runs) != 1:
            raise UsageError("with several run folders, say where the report goes with -o")
        out = args.runs[0]
    html, md = render_report(args.runs, out)
    print(f"report: {html}  (and {md.name})")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.report.compare import compare_runs, compare_text, exit_code, render_compare

    if args.factor <= 1.0:
        raise UsageError(f"--factor must be above 1, got {args.factor}")
    table = compare_runs(args.a, args.b, factor=args.factor)
    if args.output is not None:
        render_compare(table, args.output, args.a.name, args.b.name, args.factor)
    if args.json:
        print(table.to_json(orient="records"))
    else:
        print(compare_text(table))
    return exit_code(table)


def _cmd_workloads(args: argparse.Namespace) -> int:
    from harness.workloads import describe

    items = describe()
    if args.json:
        print(json.dumps(items))
        return 0
    heads = {"synthetic": "synthetic (the reference's own layers; the same structure on Dask)",
             "seed": "the seed example (layers on the reference, dask.array on Dask)",
             "dask": "realistic, written with Dask's APIs (Dask's graph on every backend)"}
    kind = None
    for w in items:
        if w["kind"] != kind:
            kind = w["kind"]
            print(f"{'' if kind == items[0]['kind'] else chr(10)}{heads[kind]}:")
        params = ", ".join(f"{k}={v!r}" for k, v in w["parameters"].items()) or "-"
        only = f"; runs on {', '.join(w['only_on'])} only" if w.get("only_on") else ""
        print(f"  {w['name']:16s} {w['summary']}{only}\n  {'':16s} parameters: {params}")
    print("\nyour own: -w FILE.py:FUNCTION or -w package.module:FUNCTION, where "
          "FUNCTION(n_tasks) returns a Dask collection, a list of them, or (graph, keys)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "scheduler":
        from scheduler.runtime.scheduler_server import main as scheduler_main

        scheduler_main(argv[1:])
        return 0
    if argv and argv[0] == "worker":
        from scheduler.runtime.worker import main as worker_main

        worker_main(argv[1:])
        return 0
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "profile":
            return _cmd_run(args, profile=True)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "workloads":
            return _cmd_workloads(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except UsageError as e:
        print(f"stagecost {args.command}: usage error: {e}", file=sys.stderr)
        return ExitCode.USAGE
    except (ValueError, OSError, RuntimeError, TimeoutError) as e:
        print(f"stagecost {args.command}: error: {e}", file=sys.stderr)
        return ExitCode.ERROR
    parser.error(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
