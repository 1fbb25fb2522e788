"""Single-file reference agents (CleanRL style), one file per algorithm.

From a checkout, run them as scripts (``python agents/rnp_dqn.py --help``). The package installs
this folder as :mod:`dyncnn_gym.agents`, so ``dyncnn-gym bench --agent rnp`` (``skipnet``,
``blockdrop``) imports ``dyncnn_gym.agents.rnp_dqn:bench_agent`` from any install, editable or not.
Each file imports only :mod:`dyncnn_gym`, never another agent file.
"""
