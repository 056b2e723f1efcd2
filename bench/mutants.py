"""Mutation check of the glue between trained models and the README's numbers: plant one-line bugs, one at a
time, in a copy of the repository and require that the named tests catch each of them.

    .venv/bin/python bench/mutants.py [--jobs N] [--only NAME ...] [--all-failures] [--list]
    make mutants

Each mutant is a file, an exact snippet of today's code (it must occur exactly once: when the code changes,
the mutant no longer applies and the check fails loudly, naming it, until the snippet is updated), its
replacement, and the tests to run. The script copies ``lib/``, ``tests/`` and ``pyproject.toml`` (not
``.venv``, ``data``, ``reports``) to a temporary folder, runs the union of the named tests there unmutated
(they must pass, or nothing is learnt), then for each mutant applies it to a fresh copy and runs its tests
with ``PYTHONPATH=<copy>/lib`` and this interpreter (the venv's). A mutant is *killed* when at least one test
fails (or a test module no longer imports). It prints a table (mutant, killed?, seconds, failing tests) and
exits non-zero if a mutant survives, does not apply, or its tests are not found.

``--jobs`` mutants run at once (default: one per CPU core, each pytest with ``OMP_NUM_THREADS`` = cores / jobs);
most of a mutant's time is pytest's start (importing torch, open_clip, MONAI), so more cores help nearly
linearly. By default pytest stops at the first failure (``-x``); ``--all-failures`` runs every named test of
every mutant, to see which tests kill it. A mutant may pass extra pytest arguments (``--runxfail`` for the tests
still marked ``xfail(strict=False)``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: what the tests read
COPIED = ("lib", "tests", "bin", "notebooks", "external_weights", "pyproject.toml", "params.yaml", "dvc.yaml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", "*.pyc")
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # exact snippet of today's code, found exactly once
    replacement: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root
    pytest_args: tuple[str, ...] = ()  # e.g. --runxfail: run tests marked xfail(strict=False) as plain tests


ZS, CT, LOAD, EXPL, CLAIMS, WIRING = (
    "tests/test_zero_shot_scoring.py", "tests/test_ct_scoring.py", "tests/test_eval_loaders.py",
    "tests/test_explain_reference.py", "tests/test_claims.py", "tests/test_train_wiring.py")
DDP_CONCEPTCLIP = "tests/test_train_distributed.py::test_two_process_torchrun_matches_one_process[conceptclip]"

MUTANTS: tuple[Mutant, ...] = (
    # -- the three bugs that passed the suite before these tests
    Mutant("zero-shot softmax over images", "lib/medvlp/eval/zero_shot.py",
           'else torch.softmax(logits, dim=1)', 'else torch.softmax(logits, dim=0)', (ZS,)),
    Mutant("CT score is P(not disease)", "lib/medvlp/eval/zero_shot.py",
           'probs = torch.softmax(logits, dim=-1)[..., 0]', 'probs = torch.softmax(logits, dim=-1)[..., 1]', (CT,)),
    Mutant("PC-Align weighted 0 in the step", "lib/medvlp/train/steps.py",
           'total = total + pc_align_weight * pc_align', 'total = total + 0.0 * pc_align', (WIRING,)),
    Mutant("PC-Align weighted 0 in the recipe", "lib/medvlp/train/config.py",
           '"loss": "sigmoid", "pc_align_weight": 0.5}', '"loss": "sigmoid", "pc_align_weight": 0.0}', (WIRING,)),
    # -- 2D zero-shot scoring
    Mutant("local mix weight swapped", "lib/medvlp/eval/zero_shot.py",
           'probs = (1 - local_weight) * probs + local_weight * probabilities(local, c_bias)',
           'probs = local_weight * probs + (1 - local_weight) * probabilities(local, c_bias)', (ZS,)),
    Mutant("local term: max instead of top-k mean", "lib/medvlp/eval/zero_shot.py",
           'return sims.topk(k, dim=1).values.mean(dim=1)', 'return sims.max(dim=1).values', (ZS,)),
    Mutant("local top fraction floored", "lib/medvlp/eval/zero_shot.py",
           'round(float(fraction) * int(n_patches))', 'int(float(fraction) * int(n_patches))', (ZS,)),
    Mutant("findings: local top fraction ignored (top 5)", "lib/medvlp/eval/evaluate.py",
           'top_k = local_top_k(feats.patches.shape[1], local_top_fraction) if local else 1',
           'top_k = 5 if local else 1', (ZS,)),
    Mutant("findings of other modalities scored 0, not NaN", "lib/medvlp/eval/zero_shot.py",
           'out = np.full((len(mods), len(column)), np.nan)', 'out = np.zeros((len(mods), len(column)))', (ZS,)),
    Mutant("prompt ensemble not renormalised", "lib/medvlp/eval/encode.py",
           'return F.normalize(sums, dim=-1)', 'return sums / torch.as_tensor(list(groups)).unsqueeze(1)', (ZS, CT)),
    # -- CT scoring and its evaluation
    Mutant("CT: anatomy without token scored", "lib/medvlp/eval/zero_shot.py",
           'probs[~scored] = np.nan', 'probs[~scored] = 0.5', (CT,)),
    Mutant("CT: studies without truth counted", "lib/medvlp/eval/evaluate.py",
           'pairs = np.repeat(studies.has_truth[:, None], len(studies.abnormality_ids), axis=1)',
           'pairs = np.ones((len(studies), len(studies.abnormality_ids)), dtype=bool)', (CT,)),
    Mutant("CT: anatomies not intact scored", "lib/medvlp/eval/zero_shot.py",
           'probs[~np.asarray(intact, dtype=bool)[:, _anatomy_columns(lexicon)]] = np.nan', 'pass', (CT,)),
    Mutant("operating point argmin -> argmax", "lib/medvlp/eval/metrics.py",
           'best = int(np.argmin(distance))', 'best = int(np.argmax(distance))', (CT,)),
    # -- evaluation sets
    Mutant("compound figure panels not merged", "lib/medvlp/eval/data.py",
           'found.extend(panel.get("findings") or [])', 'pass', (LOAD,)),
    Mutant("CT labels by abnormality id, not (anatomy, id)", "lib/medvlp/eval/data.py",
           'row[:] = [(a.anatomy, a.id) in present for a in abn]',
           'row[:] = [a.id in {x for _, x in present} for a in abn]', (LOAD,)),
    # -- verdicts
    Mutant("verdict: a CI touching 0 counts as above", "lib/medvlp/eval/compare.py",
           'if low > 0.0:', 'if low >= 0.0:', (CLAIMS,)),
    Mutant("verdict: a CI touching 0 counts as below", "lib/medvlp/eval/compare.py",
           'if high < 0.0:', 'if high <= 0.0:', (CLAIMS,)),
    Mutant("claim: method and baseline swapped", "lib/medvlp/eval/stage.py",
           '_task_arrays(scores, (claim.method, claim.baseline),',
           '_task_arrays(scores, (claim.baseline, claim.method),', (CLAIMS,)),
    Mutant("claim: recall@K counts rank < K", "lib/medvlp/eval/stage.py",
           '(ranks[..., 0] <= k)', '(ranks[..., 0] < k)', (CLAIMS,)),
    # -- explain
    Mutant("truth mask value i <-> findings[i]", "lib/medvlp/explain/stage.py",
           'enumerate(rec.get("findings") or [], start=1)', 'enumerate(rec.get("findings") or [], start=0)', (EXPL,)),
    Mutant("pair heatmaps indexed by image number", "lib/medvlp/explain/stage.py",
           'row = np.searchsorted(images, image_index)', 'row = image_index', (EXPL,)),
    Mutant("concept annotation: P(neutral prompt)", "lib/medvlp/explain/stage.py",
           'probs = torch.softmax(scale * sims, dim=-1)[..., 0]', 'probs = torch.softmax(scale * sims, dim=-1)[..., 1]',
           (EXPL,)),
    Mutant("concept annotation: local mix weight swapped", "lib/medvlp/explain/stage.py",
           'probs = (1 - local_weight) * probs + local_weight * torch.softmax(',
           'probs = local_weight * probs + (1 - local_weight) * torch.softmax(', (EXPL,)),
    Mutant("bottleneck fit on figures without truth", "lib/medvlp/explain/stage.py",
           '    keep = train.has_truth\n    s_train', '    keep = np.ones(len(train), dtype=bool)\n    s_train',
           (EXPL,)),
    # -- training glue
    Mutant("concept-head freeze removed", "lib/medvlp/train/loop.py",
           'parts.add("concept_heads")', 'pass', (WIRING,)),
    Mutant("fVLM normal flags not passed to the loss", "lib/medvlp/train/steps.py",
           'batch["is_normal"], batch["text_group"], model.logit_scale_exp(),',
           'torch.zeros_like(batch["is_normal"]), batch["text_group"], model.logit_scale_exp(),', (WIRING,)),
    Mutant("fVLM normal-pair target dropped in the loss", "lib/medvlp/losses/anatomy_contrastive.py",
           'self.normal[start:stop, None] & self.all_normal[None, :]',
           'self.normal[start:stop, None] & self.all_normal[None, :] & False', ("tests/test_losses.py", WIRING)),
    Mutant("fVLM calibration switch ignored", "lib/medvlp/train/steps.py",
           'calibrate=calibration != "none"', 'calibrate=True', (WIRING,)),
    Mutant("grad accumulation: loss not divided", "lib/medvlp/train/loop.py",
           'scaler.scale(terms["loss"] / grad_accum_steps).backward()', 'scaler.scale(terms["loss"]).backward()',
           (WIRING,)),
    Mutant("grad accumulation: logged terms summed", "lib/medvlp/train/loop.py",
           'sums[k] = sums.get(k, 0.0) + v.detach().float() / grad_accum_steps',
           'sums[k] = sums.get(k, 0.0) + v.detach().float()', (WIRING,)),
    Mutant("validation on the train split", "lib/medvlp/train/run_batches.py",
           'index = self.index(stage.collection, "val", stage.modalities)',
           'index = self.index(stage.collection, "train", stage.modalities)', (WIRING,)),
    Mutant("init_from parts matched by name prefix", "lib/medvlp/models/checkpoint.py",
           'if (k.split(".", 1)[0] in prefixes) and k in own}', 'if k.startswith(prefixes) and k in own}', (WIRING,)),
    Mutant("trainer ignores init_from parts", "lib/medvlp/train/loop.py",
           'cfg.init_from.get("parts") or ("image", "text")', '("image", "text")', (WIRING,)),
    Mutant("DDP never synchronises gradients", "lib/medvlp/train/loop.py",
           'wrapped.no_sync() if distributed and not last else', 'wrapped.no_sync() if distributed else',
           (DDP_CONCEPTCLIP,)),
)


# --------------------------------------------------------------------------------------------- machinery


def make_copy(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORED)
        else:
            shutil.copy2(src, dest / name)
    return dest


class NotApplicable(Exception):
    pass


def apply(mutant: Mutant, root: Path) -> None:
    path = root / mutant.file
    if not path.is_file():
        raise NotApplicable(f"{mutant.file} does not exist")
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.original)
    if count != 1:
        raise NotApplicable(f"{mutant.file}: the original snippet occurs {count} times (must be once): "
                            f"{mutant.original!r}")
    path.write_text(text.replace(mutant.original, mutant.replacement), encoding="utf-8")


#: torch threads per pytest process (set from --jobs: the cores are shared between the parallel runs)
THREADS = {"n": 0}


def env_for(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    if THREADS["n"]:
        env["OMP_NUM_THREADS"] = str(THREADS["n"])
    env["PYTHONPATH"] = os.pathsep.join([str(root / "lib"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("MPLBACKEND", "Agg")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_tests(root: Path, tests: tuple[str, ...], stop_first: bool, args: tuple[str, ...] = ()
              ) -> tuple[int, list[str], str, float]:
    """(pytest exit code, failing/erroring test ids, output tail, seconds)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *(["-x"] if stop_first else []),
           *args, *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True, timeout=TIMEOUT_S)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, out = -1, f"timed out after {TIMEOUT_S} s\n{err.stdout or ''}"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.MULTILINE)
    return code, failed, out[-3000:], time.perf_counter() - start


def check_imports_from(root: Path) -> None:
    """The copy's lib must shadow the editable install of the repository."""
    probe = "import medvlp, sys; sys.stdout.write(medvlp.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env_for(root), capture_output=True,
                         text=True, check=True).stdout
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"mutants: medvlp imports from {out}, not from the copy {root}; check PYTHONPATH handling")


def evaluate(mutant: Mutant, work: Path, index: int, stop_first: bool) -> dict:
    root = make_copy(work / f"m{index:02d}")
    try:
        apply(mutant, root)
    except NotApplicable as err:
        shutil.rmtree(root, ignore_errors=True)
        return {"mutant": mutant, "status": "NOT APPLIED", "failed": [], "seconds": 0.0, "detail": str(err)}
    code, failed, tail, seconds = run_tests(root, mutant.tests, stop_first, mutant.pytest_args)
    shutil.rmtree(root, ignore_errors=True)
    # pytest exit codes: 0 passed, 1 tests failed, 2 interrupted (a collection error: the mutant broke an
    # import), 3 internal error, 4 usage error (e.g. a test id that no longer exists), 5 no test collected
    if code == 1 or (code == 2 and failed):
        status = "killed"
    elif code == 0:
        status = "SURVIVED"
    elif code == -1:
        status = "TIMEOUT"
    else:
        status = "NO TESTS" if code in (4, 5) else f"ERROR {code}"
    return {"mutant": mutant, "status": status, "failed": failed, "seconds": seconds,
            "detail": "" if status == "killed" else tail}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="mutants run in parallel (default: one per CPU core)")
    parser.add_argument("--only", nargs="+", default=None, help="run only mutants whose name contains one of these")
    parser.add_argument("--all-failures", action="store_true", help="run every test of a mutant (no -x)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the tests unmutated first")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if args.only is None or any(s in m.name for s in args.only)]
    if args.list:
        for m in mutants:
            print(f"{m.name:50s} {m.file}  ->  {' '.join(m.tests)}")
        return 0
    if not mutants:
        print("mutants: no mutant selected", file=sys.stderr)
        return 2
    THREADS["n"] = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medvlp-mutants-") as tmp:
        work = Path(tmp)
        baseline_root = make_copy(work / "baseline")
        check_imports_from(baseline_root)
        if not args.skip_baseline:  # the named tests pass unmutated, with the arguments the mutants use
            groups: dict[tuple[str, ...], dict[str, None]] = {}
            for m in mutants:
                groups.setdefault(m.pytest_args, {}).update(dict.fromkeys(m.tests))
            for extra, tests in groups.items():
                code, failed, tail, seconds = run_tests(baseline_root, tuple(tests), False, extra)
                print(f"baseline (unmutated{', ' + ' '.join(extra) if extra else ''}): "
                      f"{'pass' if code == 0 else 'FAIL'} in {seconds:.0f} s", flush=True)
                if code != 0:
                    print(f"mutants: the unmutated tests fail ({failed or 'exit ' + str(code)}); fix them first\n"
                          f"{tail}", file=sys.stderr)
                    return 2
        shutil.rmtree(baseline_root, ignore_errors=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(evaluate, m, work, i, not args.all_failures) for i, m in enumerate(mutants)]
            results = []
            for f in futures:
                r = f.result()
                results.append(r)
                print(f"  {r['status']:11s} {r['seconds']:6.1f} s  {r['mutant'].name}", flush=True)

    width = max(len(r["mutant"].name) for r in results)
    print(f"\n{'mutant':{width}s} | {'result':11s} | {'s':>6s} | killed by")
    print(f"{'-' * width}-|-{'-' * 11}-|-{'-' * 6}-|-{'-' * 40}")
    shown = None if args.all_failures else 3
    for r in results:
        failed = r["failed"]
        killers = ", ".join(t.split("/")[-1] for t in failed[:shown])
        if shown is not None and len(failed) > shown:
            killers += " ..."
        if args.all_failures and failed:
            killers = f"{len(failed)} tests: {killers}"
        print(f"{r['mutant'].name:{width}s} | {r['status']:11s} | {r['seconds']:6.1f} | {killers}")
    bad = [r for r in results if r["status"] != "killed"]
    for r in bad:
        print(f"\n{r['status']}: {r['mutant'].name} ({r['mutant'].file})\n{r['detail']}", file=sys.stderr)
    total = time.perf_counter() - started
    print(f"\n{len(results) - len(bad)}/{len(results)} mutants killed in {total:.0f} s"
          + (f"; {len(bad)} not killed or not applied" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
