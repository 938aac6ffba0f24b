"""Mitogen's linear strategy where gpuprov's runs and molecule's scenarios find it by path
(``strategy_plugins``), whatever the virtual environment it was installed in.

Mitogen runs one Python per host for a whole play instead of one per task: under software
emulation most of a playbook's time (see gpuprov/transport/ansible.py).
"""

from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule

__all__ = ["StrategyModule"]
