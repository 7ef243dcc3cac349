"""Built-in search strategies, one module per strategy; installed as
``searchlab.strategies`` (pyproject.toml maps this folder there).

Nothing is imported here: :data:`searchlab.strategy.BUILTIN_STRATEGIES` names the module
of each built-in strategy, and the registry imports a module when its strategy is first
looked up (so listing names never imports torch, DEAP or SB3).  To add a strategy, write
a module here that registers it with ``@STRATEGIES.register("<name>")`` and add the name
and module to ``BUILTIN_STRATEGIES`` -- or register it from your own package.
"""
