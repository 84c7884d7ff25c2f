"""`nonllama train`: the data loader and sampler (data), the loop (loop), checkpoints
(checkpoint), the options (config) and the multi-process launcher (launch).

`python -m nonllama.train ARGS` is `nonllama train ARGS`; torchrun runs it in each worker.
"""
