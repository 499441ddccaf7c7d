"""NumLLM (Su et al., 2024): domain and numeric LoRA modules on a causal LM, fused, evaluated on FinEval.

``train`` (``finbert2.numllm.train``) fits one LoRA module: continual pretraining on financial text
(domain) or supervised tuning on numeric-sensitive choice items (numeric) that ``build-numeric``
(``finbert2.numllm.numeric_items``) makes from any financial text. ``merge`` fuses the modules
with peft (SVD by default) into the base; ``evaluate`` scores multiple-choice questions by
log-likelihood, split into numeric and non-numeric ones (``finbert2.numllm.questions``).
"""
