"""The package's layout: every function fits on a screen, no module imports itself back through others
(lazy imports inside functions included), commands never import each other, and every training stage
provides what the loop needs."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "roi_consistency"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def resolve(path: Path, module: str | None, level: int) -> str:
    """The absolute name of `from {level dots}{module} import ...` in the file at `path`."""
    if level == 0:
        return module or ""
    package = module_name(path).split(".")
    package = package if path.name == "__init__.py" else package[:-1]
    base = package[: len(package) - level + 1]
    return ".".join(base + ([module] if module else []))


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The package's modules that a file imports: at the top, or anywhere (inside functions too).
    `from a.b import c` names module a.b.c where that is a module, else a.b."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in MODULES}
        elif isinstance(node, ast.ImportFrom):
            base = resolve(path, node.module, node.level)
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in MODULES else base)
    return out & MODULES.keys()


def test_no_function_in_the_package_is_longer_than_a_screen():
    """60 lines at most, counted from the `def` line to the last line of the body, docstring included."""
    long = [f"{module_name(p)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in MODULES.values() for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None
    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_cycle_anywhere_lazy_imports_included():
    graph = {name: imports(path) - {name} for name, path in MODULES.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one_and_relative_imports_resolve():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) is not None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert resolve(PKG / "data" / "phantom.py", "labels", 1) == "roi_consistency.data.labels"
    assert resolve(PKG / "data" / "__init__.py", None, 2) == "roi_consistency"


def command_modules() -> set[str]:
    """The modules that run a subcommand: those cli.py imports inside its command functions."""
    cli = PKG / "cli.py"
    return imports(cli) - imports(cli, top_level_only=True) | {"roi_consistency.outputs.screenshot"}


def test_commands_are_imported_by_the_command_line_only():
    commands = command_modules()
    assert commands == {f"roi_consistency.{m}" for m in (
        "data.nih", "data.sources", "data.phantom", "data.cache", "training.train", "infer", "evaluation.evaluate",
        "evaluation.calibrate", "evaluation.sanity", "outputs.export", "outputs.screenshot")}
    borrowed = [f"{name} imports {sorted(imports(path) & commands)}" for name, path in MODULES.items()
                if name != "roi_consistency.cli" and imports(path) & commands]
    assert not borrowed, borrowed


def test_every_training_stage_provides_what_the_loop_calls():
    from roi_consistency.training.stage import Stage
    from roi_consistency.training.train import STAGES
    assert set(STAGES) == {"classifier", "mask", "joint"}
    for name, stage in STAGES.items():
        assert isinstance(stage, Stage), name
        key, higher = stage.BEST
        assert key.startswith("val_") and isinstance(higher, bool)
