"""``stagecost``: one command, hyphen-free subcommands; exit codes in ``harness.exit_codes``
(0 ok, 1 error, 2 regression, 3 incomplete, 64 usage error, 130 interrupted).

  stagecost run       run workloads on backends, write a run folder with its report
  stagecost profile   the same under py-spy, with samples attributed to stages
  stagecost report    (re)render the report of one or more runs (folders or stored runs)
  stagecost compare   per-stage ratios between two runs; exit 2 on a regression
  stagecost history   list the runs of the results store, their trends; asv export/import
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

__all__ = ["main", "store_run"]

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
    p.add_argument("-r", "--repeats", type=int, default=5, help="measured runs per "
                   "configuration, each with stage recording on and again off (default 5, "
                   "the fewest at which compare can decide)")
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
                   help="run folder (default reports/<time>-<workload>-<n>-<backend>); an "
                        "existing one is refused unless --force")
    p.add_argument("--force", action="store_true",
                   help="replace the run in an existing -o folder")
    _store_option(p)
    p.add_argument("--no-store", action="store_true",
                   help="do not record the run in the results store")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds after which a configuration is abandoned")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=None, metavar="FILE",
                   help="results store (sqlite; default $STAGECOST_STORE, else "
                        "reports/stagecost.sqlite)")


RUN_REF_HELP = ("a run folder, or a stored run: @ID, @last, @last~K (K runs before the "
                "latest), @NAME (folder name)")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("stagecost")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _build_parser() -> argparse.ArgumentParser:
    p = StageCostParser(prog="stagecost", description=(
        "Where does the time go between compute() and the last result, stage by stage?"),
        epilog="exit codes: 0 ok, 1 error, 2 regression (compare), 3 incomplete, "
               "64 usage error, 130 interrupted")
    p.add_argument("--version", action="version", version=f"stagecost {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=StageCostParser)
    run = sub.add_parser("run", help="run workloads and write a stage-cost report")
    _run_options(run)
    prof = sub.add_parser("profile", help="run under py-spy and attribute samples to stages")
    _run_options(prof)
    prof.add_argument("--role", choices=["scheduler", "client", "workers", "all"],
                      default="scheduler", help="processes to profile (default scheduler)")
    prof.add_argument("--rate", type=int, default=200, help="samples per second (default "
                      "200)")
    rep = sub.add_parser("report", help="(re)render the report of runs")
    rep.add_argument("runs", nargs="+", metavar="RUN", help=RUN_REF_HELP)
    rep.add_argument("-o", "--output", type=Path, default=None,
                     help="where to write (default: the run folder, if one)")
    _store_option(rep)
    cmp_ = sub.add_parser("compare", help="compare two runs stage by stage")
    cmp_.add_argument("a", metavar="A", help="baseline: " + RUN_REF_HELP)
    cmp_.add_argument("b", metavar="B", help="new run: " + RUN_REF_HELP)
    _store_option(cmp_)
    cmp_.add_argument("--factor", type=float, default=1.10,
                      help="ratio beyond which a significant change counts (default 1.10)")
    cmp_.add_argument("-o", "--output", type=Path, default=None,
                      help="also write compare.md/.html here")
    cmp_.add_argument("--json", action="store_true", help="print the table as JSON")
    hist = sub.add_parser("history", help="list stored runs; trends; asv export/import")
    _store_option(hist)
    hist.add_argument("-w", "--workload", action="append", help="only this workload "
                      "(repeatable)")
    hist.add_argument("-b", "--backend", action="append", help="only this backend "
                      "(repeatable)")
    hist.add_argument("-n", "--n-tasks", action="append", type=_size, metavar="N",
                      help="only this real task count (repeatable)")
    hist.add_argument("--commit", default=None, help="only commits starting with this")
    hist.add_argument("--machine", default=None, help="only this machine (hostname)")
    hist.add_argument("--last", type=int, default=None, metavar="K",
                      help="only the K latest runs")
    hist.add_argument("--add", action="append", type=Path, default=[], metavar="DIR",
                      help="record run folder DIR in the store first (repeatable)")
    hist.add_argument("--trend", action="store_true",
                      help="write history.html/.md with a trend figure per configuration "
                           "(needs -o)")
    hist.add_argument("-o", "--output", type=Path, default=None,
                      help="folder for --trend")
    hist.add_argument("--factor", type=float, default=1.10,
                      help="ratio beyond which a significant change is marked (default 1.10)")
    hist.add_argument("--asv-export", type=Path, default=None, metavar="DIR",
                      help="write the listed runs as asv results into DIR (then `asv publish "
                           "--config DIR/asv.conf.json` draws them)")
    hist.add_argument("--json", action="store_true", help="print the listing as JSON")
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


def _cmd_run(args: argparse.Namespace, profile: bool = False) -> int:
    from harness.output_paths import check_writable_file, prepare_folder
    from harness.runner import run_grid
    from harness.store.db import default_store_path

    workloads, sizes, backends, run_dir = _grid(args)
    options = _options(args)
    store = None if args.no_store else default_store_path(args.store)
    if store is not None:
        check_writable_file(store, "--store")
    folder = prepare_folder(run_dir, refuse_existing=True, force=args.force)
    params = {"command": "profile" if profile else "run"}
    try:
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
                                             timeout=args.timeout, parameters=params,
                                             render=False)
    except KeyboardInterrupt:
        folder.discard_if_empty()
        print(f"stagecost {params['command']}: interrupted before any run finished; nothing "
              "was written", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BaseException:
        folder.discard_if_empty()
        raise
    if store is not None:
        store_run(store, run_dir)
    from harness.report.render import render_report, terminal_summary

    render_report([run_dir], run_dir, store=store)
    if args.json:
        from harness.report.schema import read_run
        from harness.report.tables import recorded_runs, run_summary, speed_runs

        stored = read_run(run_dir)  # rows exactly as stages.csv holds them
        summary = run_summary(stored.runs)[["backend", "workload", "n_tasks", "repeats",
                                            "wall_s_median", "recorded_repeats",
                                            "wall_recorded_s_median", "record_overhead",
                                            "record_overhead_cpu"]]
        doc = {"run_dir": str(run_dir),
               "rows": _records(stored.stages),
               "time_to_first_task_s": _median(recorded_runs(stored.runs),
                                               "time_to_first_task_s"),
               "wall_s": _median(speed_runs(stored.runs), "wall_s"),
               "record_overhead": _records(summary),
               "runs": json.loads(runs.to_json(orient="records"))}
        print(json.dumps(doc))
    else:
        print(terminal_summary([run_dir], store=store))
        print(f"\nreport: {run_dir / 'report.html'}  (and report.md)")
    meta = json.loads((run_dir / "meta.json").read_text())
    for f in meta.get("failed_cells") or []:
        print(f"stagecost {params['command']}: {f['cell']} has no result: {f['error']}",
              file=sys.stderr)
    stop = meta.get("interrupted")
    if stop:
        print(f"stagecost {params['command']}: interrupted during {stop['cell']}; the report "
              f"holds what finished ({stop['repeats_kept']} repeat(s) of that configuration, "
              f"{len(stop['not_run'])} configuration(s) not run)", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.INCOMPLETE if meta.get("failed_cells") else ExitCode.OK


def store_run(store: Path, run_dir: Path) -> None:
    """Record ``run_dir`` in the store; a store that fails loses no run (the folder is
    written): say so and go on."""
    from harness.store.db import ResultsStore, StoreError

    try:
        with ResultsStore(store) as db:
            run_id, _ = db.add_folder(run_dir)
        print(f"stored as @{run_id} in {store}", file=sys.stderr)
    except (StoreError, OSError) as e:
        print(f"stagecost: warning: the run was not recorded in the results store: {e}",
              file=sys.stderr)


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
    from harness.output_paths import prepare_folder
    from harness.report.render import render_report
    from harness.store.db import default_store_path
    from harness.store.refs import is_store_ref, load_runs

    out = args.output
    if out is None:
        if len(args.runs) != 1:
            raise UsageError("with several runs, say where the report goes with -o")
        if is_store_ref(args.runs[0]):
            raise UsageError("for a stored run, say where the report goes with -o")
        out = Path(args.runs[0])
    store = default_store_path(args.store)
    runs = load_runs(args.runs, store)
    prepare_folder(out)
    html, md = render_report(runs, out, store=store)
    print(f"report: {html}  (and {md.name})")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from harness.output_paths import prepare_folder
    from harness.report.compare import (
        compare_measures,
        compare_text,
        exit_code,
        machine_of,
        render_compare,
        withhold_for_machine,
    )
    from harness.report.tables import measures
    from harness.store.db import default_store_path
    from harness.store.refs import load_runs

    if not args.factor > 1.0 or args.factor == float("inf"):
        raise UsageError(f"--factor must be a finite number above 1, got {args.factor}")
    if args.output is not None:
        prepare_folder(args.output)
    a, b = load_runs([args.a, args.b], default_store_path(args.store))
    table = compare_measures(measures(a.stages, a.runs), measures(b.stages, b.runs),
                             factor=args.factor, names=(a.name, b.name))
    table = withhold_for_machine(table, machine_of(a.runs, b.runs, args.factor))
    if args.output is not None:
        render_compare(table, args.output, a.name, b.name, args.factor)
    if args.json:
        print(table.to_json(orient="records"))
    else:
        print(compare_text(table))
    return exit_code(table)


def _cmd_history(args: argparse.Namespace) -> int:
    from harness.history import history_command

    return history_command(args)


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
        if args.command == "history":
            return _cmd_history(args)
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
