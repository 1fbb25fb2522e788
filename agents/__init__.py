"""Single-file reference agents (CleanRL style): run them as scripts (``python agents/rnp_dqn.py --help``).

This file only makes ``agents`` a regular package, so that from the repository root the bench
plug-ins import as ``agents.rnp_dqn:bench_agent``, ``agents.skipnet_hrl:bench_agent`` and
``agents.blockdrop_pg:bench_agent`` (the repository root must be on ``sys.path``: run
``python -m dyncnn_gym.cli bench ...`` from it, or set ``PYTHONPATH=.``).
"""
