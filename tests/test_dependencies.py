"""The package's import graph: no cycles, and dvc.yaml's code dependencies exactly what each stage imports.

A stage's code is the modules its `pipeline <command>` imports, followed through every import (those
inside functions too), with one edge left out: pipeline.config imports the method registry only to
validate the method sections of params.yaml, which cannot change an output of a stage that does not
run a method (a method's defaults reach the report through the run stages' outputs). A directory in
dvc.yaml's deps stands for every module under it.
"""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"

#: (importing module, imported module) edges that carry no output-changing code (see the docstring)
VALIDATION_ONLY = {("pipeline.config", "pipeline.methods")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imported(nodes, packages: bool = True) -> set[str]:
    """pipeline modules named by the import statements among `nodes`, with the packages above them (which
    Python runs first) unless `packages` is false."""
    names = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            names |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "pipeline"}
    if not packages:
        return names
    with_packages = set()
    for name in names:
        parts = name.split(".")
        with_packages |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in MODULES}
    return with_packages


def imports_of(module: str, packages: bool = True) -> set[str]:
    return _imported(ast.walk(ast.parse(MODULES[module].read_text())), packages) - {module}


def closure(modules: set[str], skip=VALIDATION_ONLY) -> set[str]:
    """The modules reached from `modules`; the CLI's own imports are each command's (command_modules)."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            if module != "pipeline.cli":
                todo += [imported for imported in imports_of(module) if (module, imported) not in skip]
    return seen


def _command_name(function: ast.FunctionDef) -> str | None:
    """The name `@app.command()` or `@app.command("name")` gives a function, None for other functions."""
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", None) == "command":
            return decorator.args[0].value if decorator.args else function.name
    return None


def command_modules(command: str) -> set[str]:
    """What `pipeline <command>` imports: cli.py's module level, its error handling (_run) and the command."""
    tree = ast.parse(MODULES["pipeline.cli"].read_text())
    functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
    commands = {_command_name(node): node for node in functions}
    helpers = [node for node in functions if node.name == "_run"]
    top_level = [node for node in tree.body if not isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    nodes = top_level + [n for function in helpers + [commands[command]] for n in ast.walk(function)]
    return {"pipeline.cli", "pipeline"} | _imported(nodes)


def stage_code(command: str) -> set[str]:
    """Files (relative to the repository) of the code a stage's command runs."""
    return {MODULES[module].relative_to(REPO).as_posix() for module in closure(command_modules(command))}


def method_modules() -> dict[str, str]:
    """{method name: its module's file}: the module named as the method (one module per method)."""
    from pipeline.methods import METHODS

    return {name: f"pipeline/methods/{name}.py" for name in METHODS}


def declared_code(stage: dict) -> set[str]:
    """The code files a stage lists; pipeline/methods/${item.method}.py stands for every method's module (one
    matrix item depends on its own, test_a_method_module_imports_no_other_method checks that this suffices)."""
    files = set()
    for dep in stage["deps"]:
        if dep == "pipeline/methods/${item.method}.py":
            files |= set(method_modules().values())
            continue
        path = REPO / dep
        if dep.startswith("pipeline"):
            files |= ({p.relative_to(REPO).as_posix() for p in path.rglob("*.py")} if path.is_dir() else {dep})
    return files


def _stages():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize("stage", ["prepare", "run", "reflow", "report", "publish"])
def test_each_stage_depends_on_exactly_the_code_it_runs(stage):
    declared = _stages()[stage]
    command = declared["cmd"].split()[1]
    needed, listed = stage_code(command), declared_code(declared)
    assert not needed - listed, f"dvc.yaml's {stage} misses code it runs: {sorted(needed - listed)}"
    assert not listed - needed, f"dvc.yaml's {stage} lists code it does not run: {sorted(listed - needed)}"


def test_the_report_and_the_data_floor_do_not_depend_on_any_method():
    for command in ("report", "publish", "prepare"):
        assert not {f for f in stage_code(command) if f.startswith("pipeline/methods/")}, command
        assert "pipeline/training.py" not in stage_code(command), command


def test_the_package_has_no_import_cycle():
    """Over the modules each import names (a submodule's import of its sibling is no cycle through their package)."""
    graph = {module: imports_of(module, packages=False) for module in MODULES}
    state: dict[str, str] = {}

    def visit(module, path):
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycle = path[path.index(imported):] + [imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    """The check above can fail: a graph with config <-> methods is refused."""
    real = imports_of
    monkeypatch.setitem(globals(), "imports_of",
                        lambda m, packages=True: real(m, packages) | ({"pipeline.methods"} if m == "pipeline.config" else set())
                        | ({"pipeline.config"} if m == "pipeline.methods.base" else set()))
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_the_package_has_no_import_cycle()


def test_the_schema_and_errors_are_leaves():
    assert imports_of("pipeline.schema") == set()
    assert imports_of("pipeline.errors") == set()


REPORT_CODE = sorted(f"report/{path.name}" for path in (REPO / "pipeline" / "report").glob("*.py"))
STAGE_AND_REPORT_CODE = ["cli.py", "stages.py", "prepare.py", "evaluation.py", "store.py", "layout.py", *REPORT_CODE,
                         "convergence.py", "tracking.py"]


@pytest.mark.parametrize("module", STAGE_AND_REPORT_CODE)
def test_no_function_in_the_stage_and_report_code_is_over_60_lines(module):
    tree = ast.parse((PACKAGE / module).read_text())
    long = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60}
    assert not long, f"pipeline/{module}: {long}"


@pytest.mark.parametrize("path", ["dvc.yaml", "pipeline/cli.py", "pipeline/tracking.py", "pipeline/stages.py",
                                  "pipeline/store.py", "pipeline/layout.py",
                                  *(f"pipeline/{name}" for name in REPORT_CODE)])
def test_no_method_name_outside_the_methods(path):
    """The stages, tracking and report know methods only through the registry and the protocol (derived
    methods through the reflow hook), so adding a method touches no line of them."""
    import re

    from pipeline.methods import METHODS, reflowed_name

    text = (REPO / path).read_text()
    names = [*METHODS, *(reflowed_name(name) for name, cls in METHODS.items() if cls.ReflowConfig is not None)]
    found = sorted({name for name in names if re.search(rf"\b{name}\b", text)})
    assert not found, f"{path} names {found}"


def test_each_method_is_one_module_named_as_it_that_imports_no_other_method():
    """So that editing one method's module makes only that method's run (and reflow) stages stale."""
    from pipeline.methods import METHODS

    modules = {f"pipeline.methods.{name}" for name in METHODS}
    for name, cls in METHODS.items():
        assert cls.__module__ == f"pipeline.methods.{name}", (name, cls.__module__)
        own = f"pipeline.methods.{name}"
        reached = closure({own}, skip=VALIDATION_ONLY | {(module, "pipeline.methods") for module in MODULES})
        assert not (reached - {own}) & modules, (name, sorted((reached - {own}) & modules))
    for stage in ("run", "reflow"):
        assert "pipeline/methods/${item.method}.py" in _stages()[stage]["deps"]
        assert "pipeline/methods/" not in _stages()[stage]["deps"]
