"""Bench: our grader against math-verify and the book's grader on the labelled table.

Every grader (ours included) runs in its own subprocess, one case at a time, with a per-case
wall-clock limit: a case that overruns is a hang, the process is killed and restarted, and the
bench goes on. Each process works in an empty scratch directory, so code that a grader executes
from a model's answer (the injection cases write a file named `pwned`) shows up there and is
counted. Peers are bench-only dependencies: math-verify from the venv, the book's grader
(`reasoning-from-scratch`, install it with `pip install --no-deps --target DIR reasoning-from-scratch`)
from --book-path or $RFS_PATH; a peer that cannot be imported is skipped with a message.

Prints accuracy against the labels, the agreement matrix, the disagreements, throughput
(answers/s, measured inside each grader's process, start-up excluded) and hangs/crashes/executions.
The last line is one JSON object.

    python -m bench.grader [--cases tests/grader_cases.jsonl] [--book-path /tmp/rfs] [--timeout 10]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each worker reads {"pred", "gold"} lines and answers {"ok", "error", "s"} lines.
_WORKER = r"""
import json, sys, time
peer = sys.argv[1]
if peer == "ours":
    from reasoning.grading import grade
    def check(pred, gold):
        return bool(grade(pred, gold))
elif peer == "math_verify":
    from math_verify import parse, verify
    def check(pred, gold):
        wrapped = gold if "$" in gold or "\\boxed" in gold else "$" + gold + "$"
        return bool(verify(parse(wrapped), parse(pred)))
elif peer == "book":
    from reasoning_from_scratch.ch03 import extract_final_candidate, grade_answer
    def check(pred, gold):
        return bool(grade_answer(extract_final_candidate(pred), gold))
out = sys.stdout
sys.stdout = sys.stderr
check(r"so $\boxed{x^2-1}$", "(x-1)(x+1)")  # warm-up (lazy imports, ours' sympy child) outside the timings
out.write('{"ready": true}\n')
out.flush()
for line in sys.stdin:
    case = json.loads(line)
    t = time.perf_counter()
    try:
        resp = {"ok": check(case["pred"], case["gold"]), "error": None}
    except BaseException as e:
        resp = {"ok": False, "error": type(e).__name__ + ": " + str(e)[:200]}
    resp["s"] = time.perf_counter() - t
    out.write(json.dumps(resp) + "\n")
    out.flush()
"""


class Peer:
    """One grader in a subprocess; `check` returns (verdict, error, seconds, status)."""

    def __init__(self, name: str, env: dict[str, str], startup_s: float = 180.0):
        self.name, self.env, self.startup_s = name, env, startup_s
        self.scratch = Path(tempfile.mkdtemp(prefix=f"grader-bench-{name}-"))
        # stderr goes to a file: a chatty peer must not block on a full pipe and look hung
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen | None = None
        self.buf = b""

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, self.name], cwd=self.scratch,
                                     env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)
        self.buf = b""
        line = self.read(self.startup_s)
        if line is None or not line.get("ready"):
            self.stop()
            self.log.seek(0)
            err = self.log.read().decode(errors="replace")[-500:].strip()
            raise RuntimeError(f"{self.name} did not start: {err or 'no answer'}")

    def read(self, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def check(self, pred: str, gold: str, timeout_s: float) -> tuple[bool, str | None, float, str]:
        if self.proc is None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold}).encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.stop()
            return False, "crash", 0.0, "crash"
        resp = self.read(timeout_s)
        if resp is None:
            status = "hang" if self.proc.poll() is None else "crash"
            self.stop()
            return False, status, timeout_s, status
        return bool(resp["ok"]), resp["error"], resp["s"], "error" if resp["error"] else "ok"

    def executed(self) -> bool:
        """Whether the last case left files behind in the scratch directory (then cleared)."""
        leftovers = list(self.scratch.iterdir())
        for p in leftovers:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return bool(leftovers)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def peer_env(name: str, book_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([book_path] if name == "book" and book_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run(cases: list[dict], names: list[str], book_path: str | None, timeout_s: float) -> dict:
    results: dict[str, list[dict]] = {}
    for name in names:
        if name == "book" and not (book_path and Path(book_path, "reasoning_from_scratch").is_dir()):
            print("[skip] book: reasoning_from_scratch not found (pass --book-path DIR or set RFS_PATH;"
                  " install it with `pip install --no-deps --target DIR reasoning-from-scratch`)",
                  file=sys.stderr)
            continue
        peer = Peer(name, peer_env(name, book_path))
        try:
            peer.start()
        except RuntimeError as e:
            print(f"[skip] {e}", file=sys.stderr)
            peer.close()
            continue
        rows = []
        t0 = time.perf_counter()
        for c in cases:
            ok, err, secs, status = peer.check(c["pred"], c["gold"], timeout_s)
            rows.append({"ok": ok, "error": err, "s": secs, "status": status, "executed": peer.executed()})
        print(f"[{name}] {len(cases)} cases in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        peer.close()
        results[name] = rows
    return results


def summarize(cases: list[dict], results: dict[str, list[dict]]) -> dict:
    labels = [bool(c["expected"]) for c in cases]
    summary: dict = {"n_cases": len(cases), "graders": {}, "agreement": {}, "families": {}}
    for name, rows in results.items():
        right = [r["ok"] == y for r, y in zip(rows, labels)]
        done = [r for r in rows if r["status"] in ("ok", "error")]
        summary["graders"][name] = {
            "accuracy": round(sum(right) / len(cases), 4),
            "correct": sum(right),
            "hangs": sum(r["status"] == "hang" for r in rows),
            "crashes": sum(r["status"] in ("crash", "error") for r in rows),
            "executions": sum(r["executed"] for r in rows),
            "slow_cases": sum(r["s"] > 1.0 for r in done),  # answered, but after more than a second
            "answers_per_s": round(len(done) / max(sum(r["s"] for r in done), 1e-9), 1),
            "median_ms": round(1000 * statistics.median([r["s"] for r in done]), 3) if done else None,
        }
        for fam in sorted({c["family"] for c in cases}):
            idx = [i for i, c in enumerate(cases) if c["family"] == fam]
            summary["families"].setdefault(fam, {"n": len(idx)})[name] = sum(right[i] for i in idx)
    for a, b in combinations(results, 2):
        ra = [r["ok"] == y for r, y in zip(results[a], labels)]
        rb = [r["ok"] == y for r, y in zip(results[b], labels)]
        pairs = list(zip(ra, rb))
        summary["agreement"][f"{a}|{b}"] = {
            "both_right": sum(x and y for x, y in pairs),
            f"only_{a}": sum(x and not y for x, y in pairs),
            f"only_{b}": sum(y and not x for x, y in pairs),
            "both_wrong": sum(not (x or y) for x, y in pairs),
            "same_verdict": sum(r1["ok"] == r2["ok"] for r1, r2 in zip(results[a], results[b])),
        }
    return summary


def short(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n // 2 - 2] + " ... " + text[-(n // 2 - 3):]


def report(cases: list[dict], results: dict[str, list[dict]], summary: dict) -> None:
    names = list(results)
    print(f"\n{'grader':<12} {'accuracy':>9} {'correct':>9} {'hangs':>6} {'crashes':>8} {'executions':>11} "
          f"{'slow>1s':>8} {'answers/s':>10} {'median ms':>10}")
    for name, g in summary["graders"].items():
        print(f"{name:<12} {g['accuracy']:>9.1%} {g['correct']:>5}/{len(cases):<3} {g['hangs']:>6} "
              f"{g['crashes']:>8} {g['executions']:>11} {g['slow_cases']:>8} {g['answers_per_s']:>10} "
              f"{g['median_ms']:>10}")
    print("\nagreement (right/wrong against the labels):")
    for pair, m in summary["agreement"].items():
        print(f"  {pair:<24} " + "  ".join(f"{k}={v}" for k, v in m.items()))
    print("\nper family (cases right):")
    print(f"  {'family':<12} {'n':>4} " + " ".join(f"{n:>12}" for n in names))
    for fam, row in summary["families"].items():
        print(f"  {fam:<12} {row['n']:>4} " + " ".join(f"{row.get(n, '-'):>12}" for n in names))
    print("\ncases some grader gets wrong, hangs on, fails on or executes (label, then each grader's verdict;"
          " * = wrong, H = hang, E = crash/error, X = executed code):")
    for i, c in enumerate(cases):
        verdicts = [results[n][i] for n in names]
        if all(v["ok"] == c["expected"] and v["status"] == "ok" and not v["executed"] for v in verdicts):
            continue
        marks = []
        for n, v in zip(names, verdicts):
            flag = {"hang": "H", "crash": "E", "error": "E"}.get(v["status"], "")
            flag += "X" if v["executed"] else ""
            marks.append(f"{n}={int(v['ok'])}{'*' if v['ok'] != c['expected'] else ''}{flag}")
        print(f"  #{i:<3} {c['family']:<10} label={int(c['expected'])} {' '.join(marks):<40} "
              f"gold={short(c['gold'], 30)!r} pred={short(c['pred'])!r}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=str(ROOT / "tests" / "grader_cases.jsonl"))
    ap.add_argument("--book-path", default=os.environ.get("RFS_PATH"),
                    help="directory holding the reasoning_from_scratch package (default: $RFS_PATH)")
    ap.add_argument("--peers", default="ours,math_verify,book",
                    help="comma-separated: ours, math_verify, book")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-case wall-clock limit in seconds")
    ap.add_argument("--out", help="also write the summary and per-case results to this JSON file")
    args = ap.parse_args(argv)
    cases = [json.loads(line) for line in Path(args.cases).read_text().splitlines() if line.strip()]
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = set(names) - {"ours", "math_verify", "book"}
    if unknown:
        ap.error(f"unknown peers {sorted(unknown)}; choose from ours, math_verify, book")
    results = run(cases, names, args.book_path, args.timeout)
    summary = summarize(cases, results)
    report(cases, results, summary)
    if args.out:
        from reasoning.files import write_json

        write_json(args.out, {"summary": summary, "results": results})
    print(json.dumps(summary["graders"] | {"n_cases": len(cases)}, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
