"""Students: encoder classifiers (finetune / lora / kd), the LM verbaliser classifier (teacher, causal-LM students),
the retrieval student, the shared training loop, and the method table behind ``python -m retrikt.train``."""
