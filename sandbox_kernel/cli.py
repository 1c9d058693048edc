"""The ``sandbox-kernel`` command (contract 3.4)."""

from __future__ import annotations

import argparse
import json
import sys

from .policy import PolicyError, load_policy_file, secure_default

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNENFORCEABLE = 0, 1, 2, 3


def _readiness(caps, policy):
    """Plan the given policy for a Python kernel in report-only mode: every layer's state,
    mechanism and downgrade, without refusing."""
    from .capabilities import python_runtime_paths
    from .planner import RunSpec, plan

    probe_policy = policy.model_copy(update={"on_unavailable": "degrade"})
    spec = RunSpec(argv=(sys.executable,), staging_dir="/nonexistent", runtime="python", scope="kernel",
                   runtime_paths=python_runtime_paths())
    return plan(probe_policy, caps, spec).report


def cmd_doctor(args) -> int:
    from .capabilities import detect

    caps = detect()
    policy = load_policy_file(args.policy) if args.policy else secure_default()
    report = _readiness(caps, policy)
    enforceable = not report.downgrades
    if args.json:
        out = {"enforceable": enforceable, "policy": "file" if args.policy else "secure-default",
               "report": report.to_dict(), **caps.to_dict()}
        print(json.dumps(out, indent=2))
        return EXIT_OK if enforceable else EXIT_UNENFORCEABLE
    print(f"sandbox-kernel doctor  (probe took {caps.probe_seconds * 1000:.0f} ms, supervisor uid {caps.euid})\n")
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
    for name, cap in caps.items().items():
        mark = "ok  " if cap.ok else "FAIL"
        print(f"  {mark} {name:<16} {cap.evidence if cap.ok else cap.error}")
        if not cap.ok and cap.hint:
            print(f"       {'':<16} hint: {cap.hint}")
    print("\n" + ("the policy is fully enforceable on this host" if enforceable
                  else "NOT fully enforceable: under on_unavailable=fail kernels and runs are refused"))
    return EXIT_OK if enforceable else EXIT_UNENFORCEABLE


def cmd_policy_show(args) -> int:
    from .config import operator_policy

    policy = load_policy_file(args.file) if args.file else operator_policy()
    print(policy.to_json())
    return EXIT_OK


def cmd_policy_validate(args) -> int:
    load_policy_file(args.file)
    print(f"{args.file}: ok")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-kernel", description="Run untrusted notebooks in an OS-level sandbox.")
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="probe this host and show which mechanism enforces each layer")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--policy", metavar="FILE", help="check this policy instead of the secure default")
    doctor.set_defaults(func=cmd_doctor)
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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code not in (0, None) else EXIT_OK
    try:
        return args.func(args)
    except PolicyError as e:
        for field, problem in e.problems:
            print(f"{field}: {problem}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
