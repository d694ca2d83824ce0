"""How tight are the certificates?  The library's bounds against a dense float64 reference.

    python benchmarks/certificate_tightness.py [--quick] [--out results/benchmarks]

For every registered problem, on small float64 instances (x with at most ~1500
entries) and a grid of hyperparameters that includes hard corners (small TV
smoothing, small logistic-regression ridge weights, a learned fields-of-experts
theta), the reference x*, q* and grad F come from :mod:`bilevel.reference`
(damped Newton on the dense Hessian, dense adjoint solve: no certificate, no CG,
no bound constant).  Then, for eps = delta in {1e-2, 1e-4, 1e-6, 1e-8}, from a
cold start and from a warm start near the reference,
``bilevel.hypergradient(problem, theta, eps, delta)`` gives x~, z and their
bounds, and we record

- the lower-level certificate over the true error ||x~ - x*||,
- omega over the true hypergradient error ||z - grad F||,

and flag a *violation* where a bound is below the true error (beyond rounding
and the reference's own uncertainty).  A ratio of 1 is a perfect bound; the
larger it is, the more work MAID spends for accuracy it already has.

Writes ``certificate_tightness.json`` (per-problem summaries and every row: one
per problem, theta, accuracy and start) and ``certificate_tightness.md`` (the
table) under ``--out`` (default results/benchmarks); ``--replot`` rewrites the
table from the JSON.
"""
from __future__ import annotations

import math
import statistics
import subprocess
import time
from pathlib import Path

import torch

import bilevel
from bilevel import experiment
from bilevel.contract import check_mu
from bilevel.reference import reference_solution
from bilevel.results import environment

ROOT = Path(__file__).resolve().parents[1]

ACCURACIES = (1e-2, 1e-4, 1e-6, 1e-8)
QUICK_ACCURACIES = (1e-2, 1e-6)
QUICK_LABELS = ("quadratic", "tv_denoising/isotropic", "logistic_regression/feature",
                "spline_regression", "lipschitz_regression")
MAX_X = 1500
#: Relative slack of the violation test: a bound equal to the error up to rounding is no
#: violation.
REL_SLACK = 1e-9
#: Absolute floor of the violation test (times max(1, ||grad F||) for omega): rounding.
ABS_FLOOR = 1e-13
#: Below this (times max(1, ||grad F||)) the true hypergradient error is rounding noise
#: and a ratio to it says nothing: such cases are counted but not summarised.
ROUNDING = 1e-14


# ------------------------------------------------------------------ instances and thetas
def _perturbed(theta, count, std, gen):
    return [theta + std * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
            for _ in range(count)]


def _tv_thetas(problem, gen):
    # (log weight, log smoothing); a small smoothing makes the Hessian vary fast (L_A ~
    # 1/nu^2): the hardest corner for every term of omega.
    return [(f"theta=({a:g},{b:g})", torch.tensor([a, b], dtype=torch.float64))
            for a in (-4.0, -3.0, -2.0) for b in (-6.0, -4.0, -2.0)]


def _logreg_thetas(problem, gen):
    # Log ridge weights around -3 (the paper's start); mu = exp(min theta), so the
    # perturbations (std 1) push mu down to ~exp(-6) on the per-weight layout.
    theta = problem.initial_theta()
    return [("initial", theta)] + [(f"random{i}", t)
                                   for i, t in enumerate(_perturbed(theta, 2, 1.0, gen))]


def _foe_thetas(problem, gen, iterations=20):
    theta = problem.initial_theta()
    # A short run does not converge, and is not meant to: the runner records its warning.
    learned = experiment.run_method(problem, experiment.Run("learned"),
                                    max_iter=iterations).result.theta.detach()
    # std 0.5: the filters are unit-norm with s^2 entries, std 1 would swamp them.
    return [("initial", theta), ("learned", learned),
            ("random0", _perturbed(theta, 1, 0.5, gen)[0])]


def _generic_thetas(std):
    def thetas(problem, gen):
        theta = problem.initial_theta()
        return [("initial", theta)] + [(f"random{i}", t)
                                       for i, t in enumerate(_perturbed(theta, 2, std, gen))]
    return thetas


# label -> (registered name, parameters, thetas).  Every theta of these problems is
# valid anywhere in R^m (log weights, logits, raw filters), so perturbations stay valid.
INSTANCES = {
    "quadratic": ("quadratic", dict(n=60, m=5), _generic_thetas(1.0)),
    "tv_denoising/isotropic": ("tv_denoising", dict(n_images=2, size=12, variant="isotropic"),
                               _tv_thetas),
    "tv_denoising/anisotropic": ("tv_denoising",
                                 dict(n_images=2, size=12, variant="anisotropic"), _tv_thetas),
    "logistic_regression/feature": ("logistic_regression",
                                    dict(layout="feature", n_train=150, n_val=150, n_test=100),
                                    _logreg_thetas),
    "logistic_regression/weight": ("logistic_regression",
                                   dict(layout="weight", n_train=150, n_val=150, n_test=100),
                                   _logreg_thetas),
    "fields_of_experts": ("fields_of_experts",
                          dict(n_images=2, size=16, num_filters=3, filter_size=3), _foe_thetas),
    "ridge_regularizer": ("ridge_regularizer",
                          dict(n_images=2, size=12, num_filters=2, filter_size=3, num_knots=5,
                               x_range=0.2), _generic_thetas(0.5)),
    "weakly_convex_ridge": ("weakly_convex_ridge",
                            dict(n_images=2, size=12, num_filters=2, filter_size=3, num_knots=5,
                                 x_range=0.2, rho=0.9), _generic_thetas(0.5)),
    "weakly_convex_ridge/newton": ("weakly_convex_ridge",
                                   dict(n_images=2, size=12, num_filters=2, filter_size=3,
                                        num_knots=5, x_range=0.2, rho=0.9,
                                        attributes=dict(newton_certificate=True)),
                                   _generic_thetas(0.5)),
    "spline_regression": ("spline_regression",
                          dict(n_train=30, n_val=30, num_knots=11, smoothing=0.05),
                          _generic_thetas(1.0)),
    "reconstruction": ("reconstruction", dict(operator="blur", n_images=2, size=12),
                       _generic_thetas(0.1)),
    # K = ||A^{-1} B|| by two CG solves instead of ||B|| / gamma (bilevel.sensitivity)
    "reconstruction/solved": ("reconstruction", dict(operator="blur", n_images=2, size=12,
                                                     sensitivity_by_solves=True),
                              _generic_thetas(0.1)),
    # ... and the lower level certified through a Newton step (bilevel.newton_certificate)
    "reconstruction/solved+newton": ("reconstruction",
                                     dict(operator="blur", n_images=2, size=12,
                                          sensitivity_by_solves=True,
                                          attributes=dict(newton_certificate=True)),
                                     _generic_thetas(0.1)),
    "logistic_regression/feature+newton": ("logistic_regression",
                                           dict(layout="feature", n_train=150, n_val=150,
                                                n_test=100,
                                                attributes=dict(newton_certificate=True)),
                                           _logreg_thetas),
    "lipschitz_regression": ("lipschitz_regression",
                             dict(n_train=60, n_val=60, n_test=200, num_knots=11),
                             _generic_thetas(1.0)),
}


def instances(quick):
    """(label, name, params, thetas) for every registered problem."""
    chosen = []
    for name in bilevel.list_problems():
        known = [(label, spec) for label, spec in INSTANCES.items() if spec[0] == name]
        if not known:
            # A problem registered elsewhere: its test configuration, small steps in theta
            # (we do not know what its theta means).
            params = dict(bilevel.registry.get_entry(name).test_params)
            known = [(name, (name, params, _generic_thetas(0.1)))]
        chosen += [(label, *spec) for label, spec in known]
    if quick:
        chosen = [c for c in chosen if c[0] in QUICK_LABELS]
    return chosen


# ------------------------------------------------------------------------- one case
def _norm(t):
    return float(torch.linalg.vector_norm(t))


def _direction(like, norm, gen):
    v = torch.randn(like.shape, generator=gen, dtype=like.dtype)
    return v * (norm / _norm(v))


def run_case(problem, theta, ref, eps, start, gen):
    """One hypergradient at accuracy eps = delta against the reference; a result row."""
    x0 = q0 = None
    if start == "warm":
        x0 = ref.x + _direction(ref.x, 10 * eps, gen)
        q0 = ref.q + _direction(ref.q, 10 * eps, gen)
    hg = bilevel.hypergradient(problem, theta, eps, eps, x0=x0, q0=q0,
                               lower_max_iter=200_000, cg_max_iter=50_000)
    grad_norm = _norm(ref.grad)
    lower_true = _norm(hg.lower.x - ref.x)
    hg_true = _norm(hg.grad - ref.grad)
    lower_bound, omega = hg.lower.error_bound, hg.error_bound
    # The reference x is itself only within ref.error_bound of x*.
    lower_violation = lower_bound < lower_true * (1 - REL_SLACK) - ABS_FLOOR - ref.error_bound
    hg_violation = omega < hg_true * (1 - REL_SLACK) - ABS_FLOOR * max(1.0, grad_norm)
    skipped = hg_true < ROUNDING * max(1.0, grad_norm)
    # A lower-level error below the reference's own uncertainty cannot be measured (the
    # Newton solvers of the small 1-D problems can land on the reference bit for bit).
    lower_resolved = lower_true > ABS_FLOOR + ref.error_bound
    terms = {k: float(v) for k, v in (getattr(hg, "terms", None) or {}).items()}
    return dict(eps=eps, start=start, lower_true=lower_true, lower_bound=lower_bound,
                lower_ratio=lower_bound / lower_true if lower_true > 0 else math.inf,
                lower_resolved=bool(lower_resolved),
                hg_true=hg_true, omega=omega,
                omega_ratio=omega / hg_true if hg_true > 0 else math.inf,
                certified=bool(hg.certified), cost=int(hg.cost.total),
                lower_iterations=int(hg.lower.iterations),
                cg_iterations=int(hg.linear.iterations),
                lower_converged=bool(hg.lower.converged), cg_converged=bool(hg.linear.converged),
                grad_F_norm=grad_norm, violation=bool(lower_violation or hg_violation),
                lower_violation=bool(lower_violation), hg_violation=bool(hg_violation),
                skipped=bool(skipped), terms=terms)


def run_problem(label, name, params, thetas_of, accuracies, quick, seed, foe_iterations):
    """Every theta, accuracy and start of one instance; (rows, reference notes)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(params)
    attributes = params.pop("attributes", {})  # switches of the contract, not of the spec
    problem = bilevel.make_problem(name, **{**params, "dtype": torch.float64})
    for key, value in attributes.items():
        setattr(problem, key, value)
    size = problem.initial_x(problem.initial_theta()).numel()
    if size > MAX_X:
        return [], dict(skipped=f"x has {size} entries (> {MAX_X})")
    thetas = (thetas_of(problem, gen, foe_iterations) if thetas_of is _foe_thetas
              else thetas_of(problem, gen))
    if quick:
        thetas = thetas[:1]
    rows, refs = [], []
    for index, (tag, theta) in enumerate(thetas):
        try:
            ref = reference_solution(problem, theta)
        except (ValueError, RuntimeError) as exc:  # a singular Hessian, a refused size
            refs.append(dict(theta_index=index, theta=tag, failed=str(exc)))
            print(f"  !! reference failed at theta {index} ({tag}): {exc}", flush=True)
            continue
        refs.append(dict(theta_index=index, theta=tag, newton_steps=ref.newton_steps,
                         grad_norm=ref.grad_norm, error_bound=ref.error_bound,
                         converged=ref.converged, mu=check_mu(problem, theta)))
        if not ref.converged:
            print(f"  !! reference Newton stopped short of its tolerance at theta {index} "
                  f"({tag}): ||grad h|| = {ref.grad_norm:.2e}, ||x_ref - x*|| <= "
                  f"{ref.error_bound:.2e}", flush=True)
        for eps in accuracies:
            for start in ("cold", "warm"):
                row = run_case(problem, theta, ref, eps, start, gen)
                rows.append(dict(problem=label, theta_index=index, theta=tag, **row))
    return rows, dict(x_entries=size, theta_entries=int(problem.initial_theta().numel()),
                      thetas=len(thetas), references=refs)


# -------------------------------------------------------------------------- output
def _spread(values):
    if not values:
        return None
    return dict(min=min(values), median=statistics.median(values), max=max(values))


def summarise(rows, notes):
    summary = {}
    for label, note in notes.items():
        mine = [r for r in rows if r["problem"] == label]
        kept = [r for r in mine if not r["skipped"]]
        refs = note.get("references", [])
        summary[label] = dict(
            cases=len(kept), skipped_rounding=len(mine) - len(kept),
            violations=sum(r["violation"] for r in mine),
            uncertified=sum(not r["certified"] for r in mine),
            lower_ratio=_spread([r["lower_ratio"] for r in mine if r["lower_resolved"]]),
            lower_unresolved=sum(not r["lower_resolved"] for r in mine),
            omega_ratio=_spread([r["omega_ratio"] for r in kept]),
            median_cost=statistics.median([r["cost"] for r in mine]) if mine else None,
            reference_failures=sum("failed" in r for r in refs),
            reference_short_of_tol=sum("failed" not in r and not r["converged"] for r in refs),
            reference_max_newton=max((r.get("newton_steps", 0) for r in refs), default=0),
            reference_max_error_bound=max((r.get("error_bound", 0.0) for r in refs),
                                          default=0.0),
            **{k: v for k, v in note.items() if k != "references"})
    return summary


def _fmt(spread):
    if spread is None:
        return "-"
    return " / ".join(f"{spread[k]:.3g}" for k in ("min", "median", "max"))


def machine():
    """This machine and commit, and whether the library has uncommitted changes."""
    env = environment()
    try:
        # Tracked files only: a new, uncommitted module changes no existing bound.
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "bilevel", "problems"],
                               cwd=ROOT, timeout=5).returncode != 0
    except (OSError, subprocess.SubprocessError):
        dirty = False
    return dict(platform=env["platform"], cpu=env["cpu"], cpu_count=env["cpus"],
                python=env["python"], torch=env["torch"], torch_threads=env["torch_threads"],
                git_commit=(env["git_commit"] or "")[:7] or None,
                uncommitted_changes_in_library=dirty)


def _plain(value):
    """JSON has no inf or NaN: write them as strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _largest_terms(rows):
    """How often each term of omega (``Hypergradient.terms``, where present) was the largest."""
    counts = {}
    for r in rows:
        if r["terms"]:
            name = max(r["terms"], key=r["terms"].get)
            counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def write_table(folder):
    """certificate_tightness.md from the JSON."""
    result = folder.read_meta()
    m, problems, rows = result["machine"], result["problems"], result["rows"]
    unresolved = sum(s.get("lower_unresolved", 0) for s in problems.values())
    lines = [
        "# Certificate tightness against a dense float64 reference\n",
        f"Command: `{result['command']}`; {result['runtime_s']:.0f} s on {m['cpu']} "
        f"({m['cpu_count']} CPUs, {m['platform']}), torch {m['torch']}, one torch thread"
        + (", uncommitted library changes" if m["uncommitted_changes_in_library"] else "")
        + f" (commit {m['git_commit']}).\n",
        f"eps = delta in {result['accuracies']}, cold and warm starts; a ratio is bound / true "
        "error (1 = exact, > 1 = conservative, < 1 = a violation).  Cases whose true "
        f"hypergradient error is below {ROUNDING:g} max(1, ||grad F||) (rounding) are left "
        f"out of the cases and ratios: {result['skipped_rounding']} of {result['total_rows']}. "
        "Lower-level errors below the reference's own uncertainty are left out of the lower "
        f"ratios: {unresolved}.\n",
        "| problem | cases | violations | lower bound/true min / median / max "
        "| omega/true min / median / max | median cost |",
        "|---|---|---|---|---|---|",
    ]
    for label, s in problems.items():
        if "skipped" in s:
            lines.append(f"| {label} | skipped: {s['skipped']} | | | | |")
            continue
        lines.append(f"| {label} | {s['cases']} | {s['violations']} | {_fmt(s['lower_ratio'])} "
                     f"| {_fmt(s['omega_ratio'])} | {s['median_cost']:g} |")
    eps_cols = result["accuracies"]
    lines += ["", "Median omega/true by accuracy (both starts), and which term of omega was the "
              "largest (cases):", "",
              "| problem | " + " | ".join(f"eps {e:g}" for e in eps_cols)
              + " | largest term |",
              "|---|" + "---|" * (len(eps_cols) + 1)]
    for label in problems:
        mine = [r for r in rows if r["problem"] == label]
        cells = []
        for e in eps_cols:
            vals = [r["omega_ratio"] for r in mine if r["eps"] == e and not r["skipped"]]
            cells.append(f"{statistics.median(vals):.3g}" if vals else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_largest_terms(mine)} |")
    bad = [r for r in rows if r["violation"]]
    lines += ["", f"Violations: {len(bad)}."]
    for r in bad:
        lines.append(f"- {r['problem']} theta {r['theta_index']} ({r['theta']}), eps {r['eps']:g}, "
                     f"{r['start']}: lower {r['lower_bound']:.3e} vs {r['lower_true']:.3e}, "
                     f"omega {r['omega']:.3e} vs {r['hg_true']:.3e}")
    failed = [f"{label} ({s['reference_failures']})" for label, s in problems.items()
              if s.get("reference_failures")]
    short = [f"{label} ({s['reference_short_of_tol']}; ||x_ref - x*|| <= "
             f"{s['reference_max_error_bound']:.1e})" for label, s in problems.items()
             if s.get("reference_short_of_tol")]
    lines.append("")
    lines.append("Reference Newton failures: " + (", ".join(failed) or "none") + ".  Stopped "
                 "at rounding short of ||grad h|| <= 1e-13 max(1, ||x||): "
                 + (", ".join(short) or "none") + ".")
    folder.write_text("certificate_tightness.md", "\n".join(lines) + "\n")


def add_arguments(p):
    p.add_argument("--foe-iterations", type=int, default=20,
                   help="MAID iterations from the initial theta to the 'learned' FoE theta")


def compute(args, folder):
    accuracies = QUICK_ACCURACIES if args.quick else ACCURACIES
    started = time.perf_counter()
    rows, notes = [], {}
    for label, name, params, thetas_of in instances(args.quick):
        t0 = time.perf_counter()
        print(f"{label}: ...", flush=True)
        mine, note = run_problem(label, name, params, thetas_of, accuracies, args.quick,
                                 args.seed, args.foe_iterations)
        note["seconds"] = time.perf_counter() - t0
        rows += mine
        notes[label] = note
        kept = [r for r in mine if not r["skipped"]]
        ratios = sorted(r["omega_ratio"] for r in kept)
        worst = f", omega/true {ratios[0]:.3g}..{ratios[-1]:.3g}" if ratios else ""
        violations = sum(r["violation"] for r in mine)
        print(f"{label}: {len(mine)} cases in {note['seconds']:.1f} s{worst}, "
              f"{violations} violations", flush=True)
        for r in mine:
            if r["violation"]:
                print(f"  !! VIOLATION theta {r['theta_index']} eps {r['eps']:g} {r['start']}: "
                      f"lower {r['lower_bound']:.3e} < {r['lower_true']:.3e} or "
                      f"omega {r['omega']:.3e} < {r['hg_true']:.3e}", flush=True)
    result = dict(machine=machine(), foe_iterations=args.foe_iterations,
                  accuracies=list(accuracies), runtime_s=time.perf_counter() - started,
                  total_rows=len(rows), skipped_rounding=sum(r["skipped"] for r in rows),
                  violations=sum(r["violation"] for r in rows),
                  problems=summarise(rows, notes), rows=rows)
    print(f"{len(rows)} cases, {result['violations']} violations, {result['runtime_s']:.0f} s")
    return _plain(result)


def main(argv=None):
    """Run the benchmark (or, with --replot, rewrite its table); the run folder."""
    return experiment.main(__doc__, "certificate_tightness", compute, summarise=write_table,
                           argv=argv, add_arguments=add_arguments, kind="benchmarks",
                           meta_name="certificate_tightness.json")


if __name__ == "__main__":
    main()
