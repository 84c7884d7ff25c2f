"""`nonllama sft`: supervised fine-tuning of a trained run on conversations.

data (chat records in: files, `hf:` datasets, the built-in sample; checked, bad ones quarantined;
formatted with the chat template; split at turn boundaries where a conversation outgrows a
window; packed into windows with a loss mask), windows (what the training loop reads), sample
(the built-in chat sample). The training itself is `train`'s loop (nonllama.train.loop).
"""
