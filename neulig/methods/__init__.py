"""How each kind of method runs on one dataset combination.

A method's yaml names its runner, ``runner(combination, method, context) -> ComboResult``:
:mod:`~neulig.methods.static` (a pure merge function, optionally with per-expert statistics),
:mod:`~neulig.methods.ensemble` (the plain prediction-level ensemble) and the trained combiners
:mod:`~neulig.methods.portland`, :mod:`~neulig.methods.adamerging`, :mod:`~neulig.methods.wemoe`.
"""
