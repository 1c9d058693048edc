"""The ``sandbox-kernel`` command (also ``jupyter sandbox-kernel``): ``doctor``, ``run``,
``install``, ``policy show|validate``; ``--generate-config``, ``--help-all``, ``--version``.
The operator's policy comes from the Jupyter config files the server reads
(``config.command_line_app``), so ``doctor`` checks what the server enforces.

Exit codes and output are a contract (``docs/architecture.md``, "The command line"): 0 ok,
1 a notebook failed, 2 bad usage or a bad policy (``field: problem`` lines on stderr), 3 the
policy cannot be enforced on this host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from .policy import PolicyError, load_policy_file

TABLE_FORMATS = ("text", "markdown", "csv")  # executor.TABLE_FORMATS, without importing it for --help

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNENFORCEABLE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # Ctrl-C, SIGTERM: as a shell reports them


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping `run` as Ctrl-C does: its kernels shut down through the normal path."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _readiness(caps, policy):
    """Every layer's state, mechanism and downgrade for a kernel under ``policy``, planned in
    report-only mode (never refusing)."""
    from .kernel_sandbox import plan_kernel

    report = plan_kernel(policy.model_copy(update={"on_unavailable": "degrade"}), caps).report
    # Report the policy that was asked about, not the report-only copy planned above.
    report.requested = policy.to_dict()
    return report


def doctor_hints(platform: str, report) -> list[str]:
    """What an operator can do about a gap: run on Linux, or knowingly accept it."""
    hints = []
    if platform != "linux":
        hints.append(f"enforcement needs Linux (this host is {platform or 'unknown'}): no layer can be enforced here; "
                     "run the kernels on a Linux host or VM")
    not_a_boundary = "it is not a security boundary: a layer that is not enforced protects nothing"
    if report.downgrades and report.requested.get("on_unavailable") == "degrade":
        hints.append(f'this policy has on_unavailable = "degrade": kernels and runs start with the gaps above, '
                     f"each reported in cell.metadata.sandbox; {not_a_boundary}")
    elif report.downgrades:
        hints.append('on_unavailable = "degrade" in the policy lets kernels and runs start anyway, with each gap '
                     f"reported in cell.metadata.sandbox; {not_a_boundary}")
    return hints


def doctor_data(caps, policy, policy_source: str) -> dict:
    """``doctor --json``'s answer (also served by the server extension at /api/sandbox/doctor)."""
    from . import host_shape

    report = _readiness(caps, policy)
    unavailable = {name: {"error": cap.error, "hint": cap.hint}
                   for name, cap in caps.probes().items() if not cap.ok}
    return {"enforceable": not report.downgrades, "policy": policy_source, "hints": doctor_hints(caps.platform, report),
            "report": report.to_dict(), "unavailable": unavailable, **caps.to_dict(),
            "host_shape": [f.to_dict() for f in host_shape.detect(caps)]}


def configured_policy():
    """The operator's policy from the Jupyter config files, and where it came from."""
    from .config import SandboxPolicyConfig, command_line_app, operator_policy

    config = command_line_app().config
    source = "jupyter-config" if SandboxPolicyConfig.__name__ in config else "secure-default"
    return operator_policy(config), source


def cmd_doctor(args) -> int:
    from . import host_shape
    from .capabilities import detect

    policy, source = (load_policy_file(args.policy), "file") if args.policy else configured_policy()
    caps = detect(policy.resources.cgroup_parent)
    if args.json:
        out = doctor_data(caps, policy, source)
        print(json.dumps(out, indent=2))
        return EXIT_OK if out["enforceable"] else EXIT_UNENFORCEABLE
    report = _readiness(caps, policy)
    enforceable = not report.downgrades
    shape = host_shape.detect(caps)
    print(f"sandbox-kernel doctor  (probe took {caps.probe_seconds * 1000:.0f} ms, supervisor uid {caps.euid}, "
          f"policy: {args.policy or source})\n")
    print(f"{'layer':<11} {'state':<14} mechanism / reason")
    for name, layer in report.layers.items():
        reasons = [d.reason for d in report.downgrades if d.layer == name]
        print(f"{name:<11} {layer.state:<14} {layer.mechanism or '-'}")
        for r in reasons:
            print(f"{'':<27}downgrade: {r}")
        if name == "resources":
            for control, c in layer.detail.get("controls", {}).items():
                print(f"{'':<27}{control} = {c['limit']}: {c['mechanism'] or 'NOT ENFORCED'}")
    if report.notes:
        print("\nnotes:")
        for n in report.notes:
            print(f"  {n.layer}: {n.note}")
    print("\nprobes:")
    for name, cap in caps.probes().items():
        mark = "ok  " if cap.ok else "FAIL"
        print(f"  {mark} {name:<16} {cap.evidence if cap.ok else cap.error}")
        if not cap.ok and cap.hint:
            print(f"       {'':<16} hint: {cap.hint}")
    print("\nhost shape ([tested]: CI runs the integration suite on this shape; [probed]: run-time probes only):")
    for f in shape:
        print(f"  {f.name:<18} {'[tested]' if f.tested_in_ci else '[probed]'} {f.detected}")
        print(textwrap.fill(f.meaning, 100, initial_indent=" " * 21, subsequent_indent=" " * 21))
        if f.hint:
            print(textwrap.fill(f"hint: {f.hint}", 100, initial_indent=" " * 21, subsequent_indent=" " * 27))
    hints = doctor_hints(caps.platform, report)
    if hints:
        print()
    for hint in hints:
        print(textwrap.fill(f"hint: {hint}", 100, subsequent_indent="      "))
    # The verdict is the last line, whatever came before (scripts read it with tail -1).
    print("\n" + verdict(enforceable, [name for name, cap in caps.probes().items() if not cap.ok]))
    return EXIT_OK if enforceable else EXIT_UNENFORCEABLE


def verdict(enforceable: bool, failed_probes: list[str]) -> str:
    """doctor's last line: never "fully enforceable" after a failed probe (a probe this policy
    does not need still limits what other policies, a kernelspec's or a cell's, may ask for)."""
    if not enforceable:
        return "NOT fully enforceable: under on_unavailable=fail kernels and runs are refused"
    if failed_probes:
        return (f"the policy is enforceable on this host, but {len(failed_probes)} probe(s) failed "
                f"({', '.join(failed_probes)}): a policy that needs them is refused here")
    return "the policy is fully enforceable on this host"


def cmd_delegate(args) -> int:
    from .launch.cgroup import CgroupError, delegate, undelegate

    if os.geteuid() != 0:
        print("delegate: must run as root (it creates cgroups and gives them to --user)", file=sys.stderr)
        return EXIT_USAGE
    try:
        paths = undelegate(args.user) if args.remove else delegate(args.user)
    except KeyError:
        print(f"--user: no such user {args.user!r}", file=sys.stderr)
        return EXIT_USAGE
    except CgroupError as e:
        print(str(e), file=sys.stderr)
        return EXIT_UNENFORCEABLE
    for path in paths:
        print(f"{'removed' if args.remove else 'delegated to ' + args.user}: {path}")
    return EXIT_OK


def cmd_policy_show(args) -> int:
    policy = load_policy_file(args.file) if args.file else configured_policy()[0]
    print(policy.to_json())
    return EXIT_OK


def cmd_policy_validate(args) -> int:
    load_policy_file(args.file)
    print(f"{args.file}: ok")
    return EXIT_OK


def cmd_run(args) -> int:
    from .startup import skip_unused_format_checkers

    skip_unused_format_checkers()  # before the executor imports nbformat (and so jsonschema)
    from .executor import DEFAULT_NOTEBOOK_SECONDS, batch_exit_code, default_notebook_output, format_table, run_batch
    from .capabilities import detect
    from .kernel_sandbox import plan_kernel
    from .launch.results import ResultDir, UnsafeResultPath
    from .policy import parse_size
    from .report import SandboxUnavailable

    policy = load_policy_file(args.policy) if args.policy else configured_policy()[0]
    names = {}
    for nb in args.notebooks:
        problem = _notebook_problem(nb, args.any_language)
        if problem:
            print(f"notebook: {nb!r}: {problem}", file=sys.stderr)
            return EXIT_USAGE
        other = names.setdefault(os.path.basename(nb), nb)
        if other != nb:
            print(f"notebook: {other!r} and {nb!r} would both be written as {os.path.basename(nb)!r} in the output dir", file=sys.stderr)
            return EXIT_USAGE
    for path in args.data:
        if not os.path.exists(path):
            print(f"--data: {path!r} does not exist", file=sys.stderr)
            return EXIT_USAGE
    if args.jobs < 1:
        print("--jobs: must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    from .parameters import ParameterError, collect

    try:
        parameters = collect(files=args.parameters_file, yamls=args.parameters_yaml, values=args.parameters, raws=args.parameters_raw)
    except ParameterError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    for name in ("cell_timeout", "notebook_timeout"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"--{name.replace('_', '-')}: must be a positive number of seconds", file=sys.stderr)
            return EXIT_USAGE
    cell_cap = policy.resources.max_output_bytes
    try:
        notebook_cap = parse_size(args.max_notebook_output) if args.max_notebook_output else default_notebook_output(cell_cap)
        if notebook_cap < 1:
            raise ValueError("must be at least 1 byte")
    except ValueError as e:
        print(f"--max-notebook-output: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not args.dask_scheduler:
        problem = _runner_memory_problem(cell_cap, notebook_cap, args.jobs, "--max-notebook-output" if args.max_notebook_output else None)
        if problem:
            print(problem, file=sys.stderr)
            return EXIT_USAGE
    try:
        if not args.dask_scheduler:
            plan_kernel(policy, detect(policy.resources.cgroup_parent))  # refuse before any kernel starts
    except SandboxUnavailable as e:
        print(str(e), file=sys.stderr)
        return EXIT_UNENFORCEABLE
    # Where results go is checked before anything runs: a planted link or a directory that
    # is not ours refuses the run (the runner is often root).
    summary_dir = None
    try:
        if args.summary:
            summary_dir = ResultDir.open(os.path.dirname(os.path.abspath(args.summary)))
            summary_dir.check_replaceable(os.path.basename(args.summary))
    except UnsafeResultPath as e:
        print(f"--summary: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
            raise UnsafeResultPath(f"{args.output_dir} is a file; give a directory (it is created if missing)")
        output_dir = ResultDir.open(args.output_dir)
        try:
            _check_output_dir(output_dir, args.notebooks)
        except UnsafeResultPath:
            output_dir.close()
            raise
    except UnsafeResultPath as e:
        if summary_dir is not None:
            summary_dir.close()
        print(f"--output-dir: {e}", file=sys.stderr)
        return EXIT_USAGE
    progress = _Progress(len(args.notebooks), log_output=args.log_output)
    import signal

    # A killed runner's kernels die with it and their janitors clean up; stopping lets each
    # kernel, also one being started, be shut down in order instead.
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        results = run_batch(
            args.notebooks, policy=policy, output_dir=output_dir, jobs=args.jobs, dask_scheduler=args.dask_scheduler,
            on_result=progress, cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout or DEFAULT_NOTEBOOK_SECONDS,
            allow_errors=args.allow_errors, inputs=args.inputs, data=tuple(args.data), summary=args.summary,
            max_notebook_output=notebook_cap, parameters=parameters, any_language=args.any_language,
            on_progress=progress.event, full_reports=args.full_reports,
        )
    except KeyboardInterrupt as e:  # every kernel of the run, also those started ahead, is shut down by now
        terminated = isinstance(e, Terminated)
        print(f"run: {'terminated' if terminated else 'interrupted'}; notebooks that had not finished were not saved",
              file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    finally:
        progress.close()
        output_dir.close()
    code = batch_exit_code(results)
    print(format_table(results, args.table_format))
    if code == EXIT_UNENFORCEABLE:
        for r in results:
            if r.status == "refused":
                print(f"{r.path}: {r.reason}", file=sys.stderr)
    if summary_dir is not None:
        with summary_dir:
            summary_dir.write_json(os.path.basename(args.summary), {
                "exit_code": code, "policy": policy.to_dict(), "notebooks": [r.to_dict() for r in results]})
    return code


def _notebook_problem(path: str, any_language: bool) -> str | None:
    """What makes ``path`` no notebook to run, found before anything starts; None when it
    looks runnable. A notebook that cannot be read is left to its row (status ``invalid``):
    in a batch of untrusted notebooks one bad file must not stop the others."""
    from .intake import UntrustedInput, language_problem, read_notebook

    if not os.path.lexists(path):
        return "it does not exist (give the path of an .ipynb file)"
    if os.path.isdir(path):
        return f"it is a directory; give the notebooks in it (e.g. {os.path.join(path, '*.ipynb')})"
    if any_language:
        return None
    try:
        return language_problem(read_notebook(path))
    except UntrustedInput:
        return None


def _check_output_dir(output_dir, notebooks: list[str]) -> None:
    """Raise UnsafeResultPath when results could not go into ``output_dir``, or would replace
    one of the input notebooks. Something not ours under one notebook's name (a planted link)
    is that notebook's row, not a refusal of the batch: the dir may be shaped by submitters."""
    from .launch.results import UnsafeResultPath

    output_dir.check_writable()
    for nb in notebooks:
        name = os.path.basename(nb)
        if os.path.realpath(os.path.join(output_dir.path, name)) == os.path.realpath(nb):
            raise UnsafeResultPath(f"{output_dir.path} holds {nb!r} itself, which its executed copy would replace; "
                                   "give another directory")


def _runner_memory_problem(cell_cap, notebook_cap: int, jobs: int, field: str | None) -> str | None:
    """Refuse caps this host could not hold: each running notebook's kernel may make the
    runner hold its whole output and then some (executor.runner_memory_bound)."""
    from .executor import runner_memory_bound
    from .policy import format_size

    available = _available_memory()
    need = jobs * runner_memory_bound(cell_cap, notebook_cap) + 256 * 2**20
    if available is None or need <= available:
        return None
    shown = lambda n: f"{n / 2**30:.1f}G"  # noqa: E731
    field = field or "resources.max_output_bytes"
    return (f"{field}: {format_size(cell_cap) if cell_cap else 'unlimited'} per cell and {format_size(notebook_cap)} per notebook "
            f"with --jobs {jobs} can make this runner hold up to {shown(need)}; the host has {shown(available)} available "
            "(lower the caps or --jobs)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


LOG_LINE_CHARS = 64 * 1024  # --log-output holds at most this much of an unfinished line per stream


class _Progress:
    """Progress on stderr: on a terminal a tqdm bar for the batch and one per running notebook
    (its code cells); otherwise one plain line per cell and per notebook. ``--log-output``
    also copies each notebook's stream output, prefixed with its name. Everything a notebook
    printed is shown as plain text: a notebook must not drive the operator's terminal."""

    def __init__(self, total: int, log_output: bool = False):
        import threading

        self.total, self.done, self.log_output = total, 0, log_output
        self.lock = threading.Lock()  # events come from each notebook's runner thread
        self.bar, self.cell_bars, self.partial = None, {}, {}
        if sys.stderr.isatty():
            from tqdm import tqdm

            # A terminal that does not say its size (0x0) would get no bars at all from tqdm.
            size = os.get_terminal_size(sys.stderr.fileno())
            self.tqdm = lambda **kw: tqdm(file=sys.stderr, ncols=size.columns or 100, nrows=size.lines or 24, **kw)
            self.bar = self.tqdm(total=total, unit="notebook", position=0)

    def __call__(self, result) -> None:
        with self.lock:
            self.done += 1
            self._flush_output(result.path)
            cell_bar = self.cell_bars.pop(result.path, None)
            if cell_bar is not None:
                cell_bar.close()
            line = f"[{self.done}/{self.total}] {result.path}: {result.status} ({result.duration:.1f}s)"
            if self.bar is not None:
                self.bar.set_postfix_str(f"{os.path.basename(result.path)}: {result.status}")
                self.bar.update(1)
            else:
                print(line, file=sys.stderr, flush=True)

    def event(self, event: dict) -> None:
        from .executor import plain_text

        with self.lock:
            path = event["path"]
            if event["event"] == "output":
                if self.log_output:
                    # whole lines only, so that two notebooks' (or streams') output never mixes in a line
                    key = (path, event["stream"])
                    text = self.partial.pop(key, "") + plain_text(event["text"] or "").replace("\r", "")
                    *lines, self.partial[key] = text.split("\n")
                    if len(self.partial[key]) > LOG_LINE_CHARS:  # a line without end is shown in pieces
                        lines.append(self.partial.pop(key))
                    for line in lines:
                        self._write(f"[{os.path.basename(path)}] {line}")
                return
            self._flush_output(path)
            if self.bar is None:
                self._write(f"{path}: cell {event['index']}/{event['of']} {event['status']}")
                return
            cell_bar = self.cell_bars.get(path)
            if cell_bar is None:
                cell_bar = self.cell_bars[path] = self.tqdm(
                    total=event["of"], unit="cell", desc=os.path.basename(path), leave=False,
                    position=1 + len(self.cell_bars))
            cell_bar.update(1)

    def _flush_output(self, path: str) -> None:
        for stream in ("stdout", "stderr"):
            rest = self.partial.pop((path, stream), "")
            if rest:
                self._write(f"[{os.path.basename(path)}] {rest}")

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        for cell_bar in self.cell_bars.values():
            cell_bar.close()
        if self.bar is not None:
            self.bar.close()


def cmd_install(args) -> int:
    import re

    from .kernelspec import install

    if not re.fullmatch(r"[a-zA-Z0-9._-]+", args.name):  # what jupyter_client accepts as a kernelspec name
        print(f"--name: {args.name!r} is not a kernelspec name (letters, digits, '.', '_', '-')", file=sys.stderr)
        return EXIT_USAGE
    env = {}
    for item in args.env:
        key, eq, value = item.partition("=")
        if not eq or not key:
            print(f"--env: {item!r} is not KEY=VALUE", file=sys.stderr)
            return EXIT_USAGE
        env[key] = value
    try:
        path = install(name=args.name, user=args.user, sys_prefix=args.sys_prefix, prefix=args.prefix, policy_file=args.policy,
                       display_name=args.display_name, env=env, operator=configured_policy()[0])
    except OSError as e:
        print(f"install: cannot write the kernelspec ({e.strerror}: {e.filename}); try --user", file=sys.stderr)
        return EXIT_USAGE
    print(f"installed kernelspec {args.name!r} ({args.display_name}) in {path}")
    return EXIT_OK


def cmd_generate_config(args) -> int:
    """Write the policy's config file (every trait, commented out) into the user's Jupyter
    config dir; never over an existing one."""
    from .config import SandboxPolicyConfig, command_line_app

    app = command_line_app()
    path = os.path.join(app.config_dir, app.config_file_name + ".py")
    if os.path.lexists(path):
        print(f"--generate-config: {path} exists; edit it, or move it away and run again", file=sys.stderr)
        return EXIT_USAGE
    os.makedirs(app.config_dir, exist_ok=True)
    with open(path, "x") as f:
        f.write(app.generate_config_file(classes=[SandboxPolicyConfig]))
    print(f"wrote {path}")
    return EXIT_OK


def cmd_help_all(parser) -> int:
    """The command's help, then every config trait (``c.SandboxPolicyConfig.<trait>``)."""
    from .config import SandboxPolicyConfig

    parser.print_help()
    print("\nConfiguration: c.SandboxPolicyConfig.<trait> in jupyter_server_config.py (or "
          "jupyter_sandbox_kernel_config.py) in a Jupyter config dir (jupyter --paths):\n")
    print(SandboxPolicyConfig.class_get_help())
    return EXIT_OK


def build_parser(prog: str = "sandbox-kernel") -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog=prog, description="Run untrusted notebooks in an OS-level sandbox.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--help-all", action="store_true", help="this help and every config trait of the policy")
    parser.add_argument("--generate-config", action="store_true",
                        help="write jupyter_sandbox_kernel_config.py (every policy trait) into the Jupyter config dir")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="execute untrusted notebooks, each in its own sandboxed kernel")
    run.add_argument("notebooks", nargs="+", metavar="NOTEBOOK")
    run.add_argument("--policy", metavar="FILE", help="policy file (default: the Jupyter config's policy, else the secure default)")
    run.add_argument("--output-dir", default="sandbox-out", metavar="DIR", help="where executed notebooks go (default: ./sandbox-out)")
    run.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks run at once (default 1)")
    run.add_argument("--cell-timeout", type=float, metavar="S",
                     help="wall-clock seconds per cell; can only lower the policy's wall_seconds (secure default 600)")
    run.add_argument("--notebook-timeout", type=float, metavar="S", help="wall-clock seconds per notebook (default 3600)")
    run.add_argument("--inputs", choices=("dir", "none"), default="dir",
                     help="what each notebook sees: its directory minus dotfiles, links, the run's other notebooks and "
                          "output paths (dir, the default), or nothing (none)")
    run.add_argument("--data", action="append", default=[], metavar="PATH",
                     help="a file or directory every notebook sees read-only under its name (repeatable)")
    run.add_argument("--max-notebook-output", metavar="SIZE",
                     help="output kept per notebook (default: 4 times the policy's max_output_bytes, at most 1G)")
    run.add_argument("--summary", metavar="FILE.json", help="also write the result table as JSON")
    run.add_argument("--allow-errors", action="store_true", help="keep going after a failing cell; exit 0 if only cells errored")
    run.add_argument("--full-reports", action="store_true",
                     help="save the full report in every cell instead of the compact form (the kernel report once)")
    run.add_argument("--log-output", action="store_true",
                     help="also copy each notebook's printed output to stderr as it runs, prefixed with its name (as papermill's)")
    run.add_argument("--table-format", choices=TABLE_FORMATS, default="text",
                     help="the result table on stdout: text (default), markdown (e.g. for a CI job summary) or csv")
    run.add_argument("--any-language", action="store_true",
                     help="run notebooks whose kernelspec language is not Python (their cells run as Python)")
    run.add_argument("--dask-scheduler", metavar="ADDRESS", help="run each notebook as a task on this Dask cluster")
    # papermill's parameter options, with its meaning (sandbox_kernel/parameters.py)
    run.add_argument("-p", "--parameters", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a notebook parameter, typed like papermill's -p (repeatable)")
    run.add_argument("-r", "--parameters-raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a notebook parameter, always a string (repeatable)")
    run.add_argument("-f", "--parameters-file", action="append", default=[], metavar="FILE.yaml",
                     help="notebook parameters from a YAML file (repeatable)")
    run.add_argument("-y", "--parameters-yaml", action="append", default=[], metavar="YAML",
                     help="notebook parameters as a YAML string (repeatable)")
    run.set_defaults(func=cmd_run)
    install = sub.add_parser("install", help="install the python3-sandboxed kernelspec")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for the current user")
    where.add_argument("--sys-prefix", action="store_true", help="into this Python environment")
    where.add_argument("--prefix", metavar="DIR", help="into DIR/share/jupyter/kernels (e.g. another environment's prefix)")
    install.add_argument("--name", default="python3-sandboxed", help="kernelspec name (default python3-sandboxed)")
    install.add_argument("--display-name", default="Python 3 (sandboxed)", metavar="TEXT",
                         help="the name shown in Jupyter's launcher and kernel menu (default 'Python 3 (sandboxed)')")
    install.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                         help="an environment variable of the kernel (repeatable; the sandbox's env policy still applies)")
    install.add_argument("--policy", metavar="FILE",
                         help="policy keys that tighten the operator's policy for this kernelspec (refused if they loosen it)")
    install.set_defaults(func=cmd_install)
    doctor = sub.add_parser("doctor", help="probe this host and show which mechanism enforces each layer")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--policy", metavar="FILE", help="check this policy file instead of the Jupyter config's policy")
    doctor.set_defaults(func=cmd_doctor)
    delegate = sub.add_parser("delegate", help="(root) give a user's rootless supervisor a cgroup of its own for its kernels")
    delegate.add_argument("--user", required=True, help="the account the user's Jupyter server runs as")
    delegate.add_argument("--remove", action="store_true", help="remove the user's delegated cgroup instead")
    delegate.set_defaults(func=cmd_delegate)
    policy = sub.add_parser("policy", help="show or validate a policy")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    show = psub.add_parser("show", help="print the effective policy (defaults merged) as JSON")
    show.add_argument("file", nargs="?", help="policy file (default: the Jupyter config's policy)")
    show.set_defaults(func=cmd_policy_show)
    validate = psub.add_parser("validate", help="exit 0 if FILE is a valid policy, else 2 with 'field: problem' lines")
    validate.add_argument("file")
    validate.set_defaults(func=cmd_policy_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    # `jupyter sandbox-kernel` runs the `jupyter-sandbox-kernel` script: say that name back.
    script = os.path.basename(sys.argv[0])
    parser = build_parser("jupyter sandbox-kernel" if script.startswith("jupyter-") else "sandbox-kernel")
    try:
        args = parser.parse_args(argv)
        if args.command is None and not (args.help_all or args.generate_config):
            parser.error("a command is required (doctor, run, install, policy)")
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    try:
        if args.help_all:
            return cmd_help_all(parser)
        if args.generate_config:
            return cmd_generate_config(args)
        return args.func(args)
    except PolicyError as e:
        for field, problem in e.problems:
            print(f"{field}: {problem}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
