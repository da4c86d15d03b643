"""tests/command_runner.py, the in-process command lines: it reports what a real process would."""

import os
import sys
import types

from tests import command_runner


def _command(main):
  return types.SimpleNamespace(__name__='a_command', main=main, parse_flags=lambda argv: argv)


def test_an_exception_is_a_traceback_and_exit_status_1():
  def main(argv):
    raise ValueError(f'broken by {argv[1:]}')
  result = command_runner.run_one(_command(main), ['--x=1'])
  assert result['returncode'] == 1
  assert 'Traceback' in result['stderr'] and "ValueError: broken by ['--x=1']" in result['stderr']


def test_exit_statuses_and_output_are_recorded_and_os_exit_ends_only_the_line():
  def leaves_at_once(argv):
    print('error: the disk is full', file=sys.stderr)
    os._exit(1)
  result = command_runner.run_one(_command(leaves_at_once), [])
  assert (result['returncode'], result['stderr']) == (1, 'error: the disk is full\n')
  result = command_runner.run_one(_command(lambda argv: print('done')), [])
  assert (result['returncode'], result['stdout'], result['stderr']) == (0, 'done\n', '')
  result = command_runner.run_one(_command(lambda argv: sys.exit(143)), [])
  assert result['returncode'] == 143 and sys.argv[0] != 'a_command'  # sys.argv restored
