"""How each kind of method runs on one dataset combination.

A method's yaml names its runner, ``runner(combination, method, context) -> ComboResult``:
:mod:`~neulig.methods.static` (a pure merge function, optionally with per-expert statistics),
:mod:`~neulig.methods.ensemble` (the experts' uniform ensemble at ``ensemble.level``) and the trained
combiners :mod:`~neulig.methods.adamerging`, :mod:`~neulig.methods.wemoe` and Portland, whose runner lives
with the rest of it in :mod:`neulig.portland` (``neulig.portland.runner``).
"""
