"""The imaging problems on CUDA agree with the CPU: float32 to its accuracy, float64 to 1e-10
(skipped without CUDA)."""
import json

import pytest
import torch

import bilevel
from bilevel.results import RunFolder

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("spec", ["tv_denoising[n_images=2,size=32]",
                                  "fields_of_experts[n_images=2,size=32]"])
def test_cuda_float32_matches_cpu_float64(spec):
    cpu = bilevel.make_problem(spec)
    gpu = bilevel.make_problem(spec, dtype=torch.float32, device="cuda")
    theta = cpu.initial_theta()
    x = cpu.noisy + 0.01 * torch.randn_like(cpu.noisy)
    v = torch.randn_like(x)
    t32, x32, v32 = (a.to("cuda", torch.float32) for a in (theta, x, v))
    for name, ref, got in [
        ("lower_grad", cpu.lower_grad(x, theta), gpu.lower_grad(x32, t32)),
        ("lower_hvp", cpu.lower_hvp(x, theta, v), gpu.lower_hvp(x32, t32, v32)),
        ("mixed_vjp", cpu.mixed_vjp(x, theta, v), gpu.mixed_vjp(x32, t32, v32)),
    ]:
        err = float((got.double().cpu() - ref).norm() / ref.norm())
        assert err < 1e-5, f"{spec} {name}: relative error {err:.1e}"
    sol_cpu = cpu.solve_lower(theta, 1e-4)
    sol_gpu = gpu.solve_lower(t32, 1e-3)
    assert float((sol_gpu.x.double().cpu() - sol_cpu.x).norm()) <= 1e-3 + 1e-4
    result = bilevel.solve(gpu, "maid", max_iter=3, tol=0)
    assert torch.isfinite(result.theta).all() and result.theta.device.type == "cuda"


RIDGES = ["ridge_regularizer[n_images=2,size=24,num_filters=4,filter_size=5,num_knots=21,"
          "border=4]",
          "weakly_convex_ridge[n_images=2,size=24,num_filters=4,filter_size=5,num_knots=21,"
          "rho=0.9,border=4]"]


@cuda
@pytest.mark.parametrize("spec", RIDGES + ["fields_of_experts[n_images=2,size=24,border=4]"])
def test_cuda_float64_matches_cpu(spec):
    """The trained models' derivatives and certified constants, float64 on both devices."""
    cpu = bilevel.make_problem(spec)
    gpu = bilevel.make_problem(spec, device="cuda")
    theta = cpu.initial_theta() + 0.01 * torch.randn(cpu.initial_theta().shape,
                                                     dtype=torch.float64)
    x = cpu.noisy + 0.01 * torch.randn_like(cpu.noisy)
    v = torch.randn_like(x)
    t, xx, vv = (a.to("cuda") for a in (theta, x, v))
    for name, ref, got in [
        ("lower_grad", cpu.lower_grad(x, theta), gpu.lower_grad(xx, t)),
        ("lower_hvp", cpu.lower_hvp(x, theta, v), gpu.lower_hvp(xx, t, vv)),
        ("mixed_vjp", cpu.mixed_vjp(x, theta, v), gpu.mixed_vjp(xx, t, vv)),
    ]:
        err = float((got.cpu() - ref).norm() / ref.norm())
        assert err < 1e-10, f"{spec} {name}: relative error {err:.1e}"
    assert gpu.strong_convexity(t) == pytest.approx(cpu.strong_convexity(theta), rel=1e-10)
    assert gpu.smoothness(t) == pytest.approx(cpu.smoothness(theta), rel=1e-8)
    sol_cpu, sol_gpu = cpu.solve_lower(theta, 1e-8), gpu.solve_lower(t, 1e-8)
    assert float((sol_gpu.x.cpu() - sol_cpu.x).norm()) <= 2e-8
    result = bilevel.solve(gpu, "maid_sgd", batch_size=1, max_iter=2, final_check="loss",
                           progress=False)
    assert torch.isfinite(result.theta).all() and result.theta.device.type == "cuda"


@cuda
def test_load_on_cuda_denoises_as_on_the_cpu(tmp_path):
    spec = RIDGES[1]
    problem = bilevel.make_problem(spec)
    theta = problem.initial_theta() + 0.01
    folder = RunFolder(tmp_path, portable=False)
    folder.write_text("theta.json", json.dumps(theta.tolist()))
    folder.write_meta({"problem": spec})
    y = problem.noisy[0]
    on_gpu = bilevel.load(tmp_path, device="cuda").denoise(y, tol=1e-8)
    assert on_gpu.device.type == "cpu"  # handed back where y came from
    torch.testing.assert_close(on_gpu, bilevel.load(tmp_path).denoise(y, tol=1e-8),
                               rtol=0, atol=4e-8)
