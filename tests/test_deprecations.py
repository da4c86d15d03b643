"""tests/deprecations.py: which deprecations are the project's own (CI's strict newest stack)."""

import importlib.util
import logging
import textwrap
import warnings

from tests import deprecations

LIBRARY = '''
import logging
import warnings


def old_api():  # warns as libraries do: blames its caller
  warnings.warn('old_api is deprecated; use new_api', DeprecationWarning, stacklevel=2)


def wrong_stacklevel():
  warnings.warn('wrong_stacklevel will change', FutureWarning)


def uses_old_api_inside():  # the library's own business
  old_api()


def logs_deprecation():
  logging.getLogger('some_library').warning('Configured with a deprecated legacy API.')
'''


def _library(tmp_path, monkeypatch):
  path = tmp_path / 'some_library.py'  # outside the project
  path.write_text(textwrap.dedent(LIBRARY))
  spec = importlib.util.spec_from_file_location('some_library', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setattr(warnings, 'warn', deprecations._warn)  # as installed
  return module


def test_a_deprecated_call_of_the_project_is_found_and_a_librarys_own_is_not(
    tmp_path, monkeypatch):
  library = _library(tmp_path, monkeypatch)
  deprecations.check()
  with warnings.catch_warnings(record=True):
    warnings.simplefilter('always')
    library.old_api()
    library.wrong_stacklevel()
    library.uses_old_api_inside()
  found = deprecations.check()
  assert len(found) == 2
  assert found[0].startswith('DeprecationWarning at tests/test_deprecations.py:')
  assert found[0].endswith('old_api is deprecated; use new_api')
  assert found[1].startswith('FutureWarning at tests/test_deprecations.py:')


def test_a_warning_keeps_the_place_it_blames(tmp_path, monkeypatch):
  library = _library(tmp_path, monkeypatch)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    library.old_api()
  deprecations.check()
  assert caught[0].filename == __file__  # the stack level the library gave, not the wrapper's


def test_a_logged_deprecation_of_a_call_of_the_project_is_found(tmp_path, monkeypatch):
  library = _library(tmp_path, monkeypatch)
  handler = deprecations._DeprecationLogs()
  logger = logging.getLogger('some_library')
  logger.addHandler(handler)
  try:
    deprecations.check()
    library.logs_deprecation()
    logger.warning('nothing deprecated here')  # the project's own line, not a library's
  finally:
    logger.removeHandler(handler)
  (found,) = deprecations.check()
  assert found.startswith('logged at tests/test_deprecations.py:')
  assert found.endswith('Configured with a deprecated legacy API.')
