"""The package's shape: no import cycle, modules and functions a reader can take in."""

import ast
import glob
import os

from cifar_jax import LAYERS
from tests.conftest import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, 'cifar_jax')
# A module imports only from its own layer and those before it (cifar_jax.LAYERS, lowest first);
# the entry points (cifar_jax/*.py: main, experiment, benchmark, compare, cli) come last.
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, str]:
  modules = {}
  for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
    name = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, '.')
    modules[name.removesuffix('.__init__')] = path
  return modules


def import_graph() -> dict[str, set[str]]:
  """module -> the cifar_jax modules it imports (TYPE_CHECKING and function-level imports too)."""
  modules = _modules()
  graph = {name: set() for name in modules}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      targets = []
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('cifar_jax'):
        targets = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in modules
                   else node.module for alias in node.names]
      elif isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names if alias.name.startswith('cifar_jax')]
      # (a package's module importing its own package's names is not an arrow back)
      graph[name] |= {t for t in targets if t in modules and t != name
                      and not name.startswith(t + '.')}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for successor in graph[node]:
      if successor not in index:
        visit(successor)
        low[node] = min(low[node], low[successor])
      elif successor in on_stack:
        low[node] = min(low[node], index[successor])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return found


def test_the_cycle_finder_finds_a_cycle():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_module_imports_itself_back():
  assert cycles(import_graph()) == []


def _layer(module: str) -> int:
  parts = module.split('.')
  return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def test_every_arrow_points_down_the_layers():
  graph = import_graph()
  upward = [f'{module} -> {target}' for module, targets in sorted(graph.items())
            for target in sorted(targets) if _layer(target) > _layer(module)]
  assert not upward, f'imports from a higher layer (LAYERS: {LAYERS}): {upward}'
  assert {_layer(module) for module in graph} == set(range(len(LAYERS) + 1))  # every layer used


def test_no_module_is_longer_than_a_reader_takes_in():
  long = {name: n for name, path in _modules().items()
          if (n := len(open(path).read().splitlines())) > MAX_MODULE_LINES}
  assert not long, f'split these modules (over {MAX_MODULE_LINES} lines): {long}'


def test_no_function_is_longer_than_a_screen():
  long = []
  for name, path in _modules().items():
    with open(path) as f:
      tree = ast.parse(f.read())
    long += [f'{name}.{node.name}: {node.end_lineno - node.lineno + 1}'
             for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
             and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, f'split these functions (over {MAX_FUNCTION_LINES} lines): {long}'


def test_the_benchmark_command_does_not_reach_into_the_repository():
  """`python -m cifar_jax.benchmark` works from an installed package: no path is computed from
  where its file lies (the PyTorch scripts' folder is a flag, --pytorch_references)."""
  for name, path in _modules().items():
    with open(path) as f:
      assert '__file__' not in f.read(), f'{name} finds files relative to its own location'
