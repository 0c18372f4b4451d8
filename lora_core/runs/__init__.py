"""The run registry: the contract between the engine and anything that watches it.

A run folder (``folders``) holds the profile a run trained, its event stream and its log;
``status`` keeps ``run.json`` (running, finished, stopped, failed, crashed) and the
machine-wide list of runs; ``requests`` carries a UI's asks (save now, sample now) into a
running loop. File formats and caches live in ``lora_core.saving``; this package only says
where runs are and what state they are in.
"""
