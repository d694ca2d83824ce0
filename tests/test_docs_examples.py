"""The code in the guides under docs/ runs as written."""
import re
import warnings
from pathlib import Path

import torch

import bilevel
from bilevel import registry

DOCS = Path(__file__).resolve().parents[1] / "docs"


def code_blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_adding_a_problem_guide_runs():
    namespace = {}
    blocks = code_blocks("adding_a_problem.md")
    assert len(blocks) == 3
    try:
        exec(blocks[0], namespace)  # the class
        g = torch.Generator().manual_seed(0)
        A, A_val = (torch.randn(30, 4, generator=g, dtype=torch.float64) for _ in range(2))
        namespace["problem"] = namespace["Ridge"](A, A @ torch.ones(4, dtype=torch.float64),
                                                  A_val, A_val.sum(1))
        exec(blocks[1], namespace)  # check_problem
        exec(blocks[2], namespace)  # registration and make_problem
        assert isinstance(namespace["problem"], namespace["Ridge"])
        assert namespace["problem"].A.shape == (200, 10)
    finally:
        registry._registered.pop("ridge", None)


def test_adding_an_outer_method_guide_runs():
    namespace = {"problem": bilevel.make_problem("quadratic", n=30, m=3, seed=0)}
    block = code_blocks("adding_an_outer_method.md")[-1]  # the first shows OuterState
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bilevel.ConvergenceWarning)
        exec(block, namespace)
    history = namespace["result"].history
    assert history and history[-1]["cost"] > 0
    assert history[-1]["upper_value"] < history[0]["upper_value"]


def test_readme_forward_operator_snippet_runs():
    readme = (DOCS.parent / "README.md").read_text()
    section = readme[readme.index("### Your own forward operator"):]
    block = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    namespace = {}
    lines = block.strip().splitlines()
    exec("\n".join(lines[:2]), namespace)
    for line in lines[2:]:  # each check, as written, must hold
        assert eval(line.split("#")[0].strip(), namespace), line
