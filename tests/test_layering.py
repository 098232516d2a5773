"""Imports run one way: errors/paths → config → data, models → methods → engine → eval → jobs →
bench → cli.

Walks every module's imports with `ast` (top-level and function-local alike, and the "module[:name]"
strings of the registries that importlib loads) and fails on an import of a higher layer or on an
import cycle between modules. docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sparsetune"

# top-level name under sparsetune/ -> layer (higher may import lower or equal, never the reverse)
LAYERS = {
    "errors": 0, "paths": 0,
    "config": 1,
    "data": 2, "models": 2,
    "methods": 3,
    # inside a layer the direction holds too: eval uses the engine's measurements, never the reverse;
    # benchmarks compose jobs' configs, jobs never run a benchmark
    "engine": 4, "eval": 4.5,
    "jobs": 5, "bench": 5.5, "diagnose": 5.5,
    "cli": 6, "__main__": 6,
}
# what a method package may import from sparsetune besides its own package
METHOD_ALLOWED = ("sparsetune.errors", "sparsetune.methods.base", "sparsetune.models.arch", "sparsetune.config.schema")


REGISTRY_REF = re.compile(r"^sparsetune(\.\w+)+(:\w+)?$")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, registry_refs: bool = False) -> set[str]:
    """Modules `path` imports; with `registry_refs`, also those its "module[:name]" strings name
    (loaded by importlib on use; a program run as `python -m module` is launched, not imported)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sparsetune"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("sparsetune"):
                found.add(target)
                # `from sparsetune.x import y` may import the submodule sparsetune.x.y
                found.update(f"{target}.{a.name}" for a in node.names)
        elif registry_refs and isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and REGISTRY_REF.match(node.value) and node.value.split(":")[0] not in PROGRAMS:
            found.add(node.value.split(":")[0])
    return found


def _programs() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py") if '__name__ == "__main__"' in p.read_text()}


PROGRAMS = _programs()


def graph(registry_refs: bool = False) -> dict[str, set[str]]:
    """Import edges between sparsetune modules. Registry references count for the direction of the
    layers, not for cycles: a registry loads its entries lazily, by name (the plug-in pattern)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {t for t in imports_of(path, registry_refs) if t in modules and t != name}
    return edges


def layer(module: str) -> float:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else 6


def test_every_module_has_a_layer():
    missing = {m.split(".")[1] for m in graph() if "." in m and m.split(".")[1] not in LAYERS}
    assert not missing, f"modules outside the layer map: {missing}"


def test_no_upward_imports():
    bad = [f"{src} -> {dst}" for src, dsts in graph(registry_refs=True).items() for dst in dsts
           if layer(dst) > layer(src) and not (src == "sparsetune" or dst == "sparsetune")]
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_method_packages_import_only_the_method_interface():
    bad = []
    for src, dsts in graph().items():
        if not src.startswith("sparsetune.methods.") or src == "sparsetune.methods.base":
            continue
        own = src.split(".")[:3]  # sparsetune.methods.<pkg>
        for dst in dsts:
            if dst.split(".")[:3] == own or dst.startswith(METHOD_ALLOWED) or dst == "sparsetune.methods":
                continue
            # baselines reuse the LoRA method (a sibling method, not the engine)
            if dst == "sparsetune.methods.lora":
                continue
            bad.append(f"{src} -> {dst}")
    assert not bad, "method packages reach outside the method interface:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_violations(tmp_path):
    """The walker must catch both spellings of an upward import (a test that cannot fail is a defect)."""
    probe = PACKAGE / "methods" / "_layering_probe.py"
    probe.write_text("def f():\n    from sparsetune.engine import loop\n\nfrom ..jobs import train\n")
    try:
        assert imports_of(probe) >= {"sparsetune.engine", "sparsetune.jobs", "sparsetune.jobs.train"}
    finally:
        probe.unlink()


# Function-level imports are for the CLI's start-up path (what runs before the config is validated, so
# a bad value is refused without importing torch) and for libraries a run may not need (optional extras,
# or heavy libraries one feature uses). Everything else is imported at the top, where a reader looks.
STARTUP_MODULES = ("sparsetune.cli", "sparsetune.__main__", "sparsetune", "sparsetune.data", "sparsetune.jobs",
                   "sparsetune.jobs.config", "sparsetune.methods", "sparsetune.config")
DEFERRED_LIBRARIES = frozenset({
    "lm_eval", "datasets", "jinja2",  # scoring and benchmark data only (lm_eval alone imports for seconds)
    "matplotlib", "wandb", "reasoning_gym", "gguf", "tokenizers",  # plots, W&B, generated data, GGUF, tiny models
    "PIL", "sklearn", "torchvision", "mlxtend",  # the vision extra's readers
    "submitit", "hydra_plugins", "triton",  # optional launchers and kernels
    "urllib",  # the optional BIG-bench download
})
DEFERRED_PREFIXES = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.fsdp",
                     "torch.distributed.checkpoint",  # multi-process launch, FSDP and its state dicts: ~1 s to import
                     "sparsetune.eval.prefix_lm")  # subclasses lm_eval's HFLM, so importing it imports lm_eval


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement inside a function of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    found.append((sub.lineno, "." * sub.level + (sub.module or "")))
                elif isinstance(sub, ast.Import):
                    found.extend((sub.lineno, a.name) for a in sub.names)
    return sorted(set(found))


def misplaced_imports(path: Path) -> list[str]:
    name = module_name(path)
    if name in STARTUP_MODULES or name.startswith("sparsetune.config."):
        return []
    return [f"{path.relative_to(PACKAGE.parent)}:{line} {mod}" for line, mod in function_level_imports(path)
            if mod.split(".")[0] not in DEFERRED_LIBRARIES and not mod.startswith(DEFERRED_PREFIXES)]


def test_function_level_imports_only_on_the_start_up_path_or_for_deferred_libraries():
    bad = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in misplaced_imports(path)]
    assert not bad, "imports inside functions (move them to the top):\n" + "\n".join(bad)


def test_the_import_placement_check_sees_a_function_level_import():
    probe = PACKAGE / "engine" / "_placement_probe.py"
    probe.write_text("import torch\n\n\ndef f():\n    from sparsetune.engine import loop\n    import matplotlib\n")
    try:
        assert misplaced_imports(probe) == ["sparsetune/engine/_placement_probe.py:5 sparsetune.engine"]
    finally:
        probe.unlink()
